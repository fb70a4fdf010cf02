"""TLI scoring by one forward pass versus generate()-based decoding (run by hand, not a test).

    python bench/tli_scoring.py                  # ~1-2 minutes on 2 idle CPU cores
    python bench/tli_scoring.py --steps 0        # untrained (random-weight) model

Setting `direction=tli` (text + WLI -> TLI, the default anchor) on `model=tiny_llama dataset=synthetic_en`.
The tiny model is first trained for `--steps` steps with a plain loop (AdamW + linear warm-up + clipping,
as in a fit) so that it answers with a code then EOS. Then, on the same first `--n` test samples in the
same batches of `--bs` (the data module's collator, left padding):

  (a) scoring    the module's path for TLI evaluation: one forward pass over the full view
                 (`GenerativeMRE.forward`, prompt + answer, loss included), then `_score_codes` (arg-max
                 over the one-token label codes at q);
  (b) generate   greedy KV-cached `generate()` of the answer from the prompt view with max_new_tokens=2,
                 called with exactly the arguments of `GenerativeMRE.generate` (checked once against it);
                 the first generated token is mapped to its label when it is a code;
  (c) lean       for information, not the module's path: the leaner TLI `_eval_step` suggested in
                 bench/README.md -- the same full-view forward with `logits_to_keep=k` (only the positions
                 that predict answer tokens; k = 3 here), loss and arg-max from those (checked against (a)).

All run under torch.no_grad() in eval mode; one warm-up pass over all batches, then `--repeats` timed
passes, alternating (a), (b), (c) so that load on the machine hits all alike; medians of wall time (samples/s)
and of CPU time (all threads; steadier on a busy machine) are reported.
"""

from __future__ import annotations

# isort: off
import _common  # noqa: F401  (first: it sets the OpenMP environment before torch loads)

# isort: on
import argparse
import statistics
import time

import torch
from _common import header, interleaved, pretrain, setup, test_batches


def score(module, batches: list[dict]) -> list[int]:
    preds: list[int] = []
    with torch.no_grad():
        for b in batches:
            p, _ = module._score_codes(module(b).logits, b)
            preds.extend(p.tolist())
    return preds


def score_lean(module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The suggested leaner TLI `_eval_step` (bench/README.md): the same full-view forward, but only the
    logits of the last k positions (k = longest answer + 1: with left padding every answer ends at the
    right edge, so these hold q and every answer-predicting position), loss from them. Returns the
    predictions and the loss (the module's: mean CE over the answer tokens)."""
    labels = batch["labels"]
    k = int((labels != -100).sum(1).max()) + 1
    logits = module.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=k,
    ).logits  # [B, k, V]: positions L-k .. L-1
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1 - k :].flatten())
    q = (labels != -100).int().argmax(dim=1) - 1 - (labels.shape[1] - k)
    q_logits = logits[torch.arange(logits.shape[0]), q]
    return q_logits[:, torch.tensor(module.builder.code_ids)].argmax(-1), loss


def lean(module, batches: list[dict]) -> list[int]:
    preds: list[int] = []
    with torch.no_grad():
        for b in batches:
            preds.extend(score_lean(module, b)[0].tolist())
    return preds


def golds_of(module, batches: list[dict]) -> list[int]:
    golds: list[int] = []
    code_ids = torch.tensor(module.builder.code_ids)
    for b in batches:
        hit = b["target"].unsqueeze(1) == code_ids.unsqueeze(0)
        golds.extend(torch.where(hit.any(1), hit.int().argmax(1), len(module.builder.labels)).tolist())
    return golds


@torch.no_grad()
def generate_codes(module, batch: dict, max_new_tokens: int = 2) -> tuple[list[int], list[str]]:
    """`GenerativeMRE.generate` with max_new_tokens=2, keeping the token ids: the code index of the first
    generated token (-1 when it is not a code) and the decoded answers."""
    out = module.model.generate(
        input_ids=batch["prompt_ids"],
        attention_mask=batch["prompt_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=module.tokenizer.eos_token_id,
        pad_token_id=module.tokenizer.pad_token_id,
    )
    new = out[:, batch["prompt_ids"].shape[1] :]
    texts = [t.strip() for t in module.tokenizer.batch_decode(new, skip_special_tokens=True)]
    index = {tok: i for i, tok in enumerate(module.builder.code_ids)}
    return [index.get(t, -1) for t in new[:, 0].tolist()], texts


def generate(module, batches: list[dict]) -> list[int]:
    preds: list[int] = []
    for b in batches:
        preds.extend(generate_codes(module, b)[0])
    return preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="test samples")
    ap.add_argument("--bs", type=int, default=32, help="batch size (both methods)")
    ap.add_argument("--steps", type=int, default=200, help="training steps before measuring (0: untrained)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    t_start = time.perf_counter()

    cfg, dm, module = setup("tli")
    print(header("tli_scoring"))
    print(pretrain(module, cfg, dm, args.steps))
    module.eval()
    batches = test_batches(dm, args.n, args.bs)
    n = sum(len(b["index"]) for b in batches)
    prompt_len = sum(int(b["prompt_mask"].sum()) for b in batches) / n
    print(
        f"{n} test samples, batch size {args.bs}, {len(batches)} batches, mean prompt {prompt_len:.1f} tokens"
    )

    # the mirror of GenerativeMRE.generate is the module's own path
    module.max_new_tokens = 2
    assert generate_codes(module, batches[0])[1] == module.generate(batches[0]), "generate mirror drifted"

    methods = {
        "scoring": lambda: score(module, batches),
        "generate": lambda: generate(module, batches),
        "lean": lambda: lean(module, batches),
    }
    results, wall, cpu = interleaved(methods, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    sps = {k: n / med[k] for k in methods}
    print("  scoring = the module's path; generate = max_new_tokens=2; lean = full view + logits_to_keep=k")
    for k in methods:
        print(
            f"  {k:8s} {sps[k]:7.1f} samples/s   median {med[k] * 1000:7.1f} ms wall, "
            f"{cpu[k] * 1000:7.1f} ms CPU per pass (wall min {min(wall[k]) * 1000:.1f}, "
            f"max {max(wall[k]) * 1000:.1f}; {args.repeats} passes)"
        )
    print(
        f"speed-up scoring/generate: {sps['scoring'] / sps['generate']:.2f}x wall, "
        f"{cpu['generate'] / cpu['scoring']:.2f}x CPU   (target >= 10x)"
    )
    print(
        f"speed-up lean/generate:    {sps['lean'] / sps['generate']:.2f}x wall, "
        f"{cpu['generate'] / cpu['lean']:.2f}x CPU"
    )

    golds = golds_of(module, batches)
    s, g = results["scoring"], results["generate"]
    coded = [i for i, p in enumerate(g) if p >= 0]
    agree = sum(s[i] == g[i] for i in coded)
    print(f"generation produced a code first for {len(coded)}/{n} samples ({len(coded) / n:.1%})")
    print(f"agreement where it did: {agree}/{len(coded)}" + (f" ({agree / len(coded):.1%})" if coded else ""))
    acc_s = sum(p == y for p, y in zip(s, golds, strict=True)) / n
    acc_g = sum(p == y for p, y in zip(g, golds, strict=True)) / n
    same = sum(a == b for a, b in zip(s, results["lean"], strict=True))
    with torch.no_grad():
        dloss = max(abs(float(module(b).loss) - float(score_lean(module, b)[1])) for b in batches)
    print(f"lean agrees with the module's scoring: {same}/{n} predictions, max |loss diff| {dloss:.1e}")
    print(f"accuracy vs gold: scoring {acc_s:.3f}, generate {acc_g:.3f} (non-code counts as wrong)")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
