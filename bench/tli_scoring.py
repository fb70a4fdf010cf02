"""TLI scoring by one forward pass versus generate()-based decoding (run by hand, not a test).

    python bench/tli_scoring.py                  # ~1-2 minutes on 2 idle CPU cores
    python bench/tli_scoring.py --steps 0        # untrained (random-weight) model
    python bench/tli_scoring.py --smoke          # toy sizes, seconds: a rot check, numbers mean nothing

Setting `direction=tli` (text + WLI -> TLI, the default anchor) on `model=tiny_llama dataset=synthetic_en`.
The tiny model is first trained for `--steps` steps with a plain loop (AdamW + linear warm-up + clipping,
as in a fit) so that it answers with a code then EOS. Then, on the same first `--n` test samples in the
same batches of `--bs` (the data module's collator, left padding):

  (a) scoring    the module's path for TLI evaluation: one forward pass over the full view
                 (`GenerativeMRE.forward`, prompt + answer, loss included; it keeps only the logits of the
                 answer window, `logits_to_keep=k`, k = 3 here), then `_score_codes` (arg-max over the
                 one-token label codes at q);
  (b) generate   greedy KV-cached `generate()` of the answer from the prompt view with max_new_tokens=2,
                 called with exactly the arguments of `GenerativeMRE.generate` (checked once against it);
                 the first generated token is mapped to its label when it is a code;
  (c) full       for information, not the module's path: the module's path before it kept only the answer
                 window -- the same full-view forward with full-vocabulary logits at every position, loss
                 and `_score_codes` from those (checked against (a): same predictions, same loss).

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
import torch.nn.functional as F
from _common import add_smoke_flag, first_batches, header, interleaved, pretrain, setup


def score(module, batches: list[dict]) -> list[int]:
    preds: list[int] = []
    with torch.no_grad():
        for b in batches:
            p, _ = module._score_codes(module(b)[0], b)
            preds.extend(p.tolist())
    return preds


def score_full(module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's TLI evaluation as it was before `forward` kept only the answer window: full-vocabulary
    logits at every position, the loss (mean CE over the answer tokens) from them and `_score_codes` on
    all L positions. Returns the predictions and the loss."""
    labels = batch["labels"]
    logits = module.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits  # [B, L, V]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    return module._score_codes(logits, batch)[0], loss


def full(module, batches: list[dict]) -> list[int]:
    preds: list[int] = []
    with torch.no_grad():
        for b in batches:
            preds.extend(score_full(module, b)[0].tolist())
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
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.n, args.bs, args.steps, args.repeats = 16, 8, 4, 1
    t_start = time.perf_counter()

    cfg, parts, module = setup("tli", smoke=args.smoke)
    print(header("tli_scoring", args.smoke))
    print(pretrain(module, cfg, parts.datamodule, args.steps))
    module.eval()
    batches = first_batches(module.context, args.n, args.bs)
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
        "full": lambda: full(module, batches),
    }
    results, wall, cpu = interleaved(methods, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    sps = {k: n / med[k] for k in methods}
    print(
        "  scoring = the module's path (answer-window logits); generate = max_new_tokens=2; "
        "full = full-vocabulary logits at every position"
    )
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
        f"speed-up full/generate:    {sps['full'] / sps['generate']:.2f}x wall, "
        f"{cpu['generate'] / cpu['full']:.2f}x CPU"
    )
    print(
        f"speed-up scoring/full:     {sps['scoring'] / sps['full']:.2f}x wall, "
        f"{cpu['full'] / cpu['scoring']:.2f}x CPU   (what keeping only the answer window saves)"
    )

    golds = golds_of(module, batches)
    s, g = results["scoring"], results["generate"]
    coded = [i for i, p in enumerate(g) if p >= 0]
    agree = sum(s[i] == g[i] for i in coded)
    print(f"generation produced a code first for {len(coded)}/{n} samples ({len(coded) / n:.1%})")
    print(f"agreement where it did: {agree}/{len(coded)}" + (f" ({agree / len(coded):.1%})" if coded else ""))
    acc_s = sum(p == y for p, y in zip(s, golds, strict=True)) / n
    acc_g = sum(p == y for p, y in zip(g, golds, strict=True)) / n
    same = sum(a == b for a, b in zip(s, results["full"], strict=True))
    with torch.no_grad():
        dloss = max(abs(float(module(b)[1]) - float(score_full(module, b)[1])) for b in batches)
    print(f"full agrees with the module's scoring: {same}/{n} predictions, max |loss diff| {dloss:.1e}")
    print(f"accuracy vs gold: scoring {acc_s:.3f}, generate {acc_g:.3f} (non-code counts as wrong)")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
