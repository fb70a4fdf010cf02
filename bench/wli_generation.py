"""Batched versus per-sample WLI generation with `GenerativeMRE.generate` (run by hand, not a test).

    python bench/wli_generation.py               # ~1-2 minutes on 2 idle CPU cores
    python bench/wli_generation.py --steps 0     # untrained model: every answer runs to max_new_tokens
    python bench/wli_generation.py --smoke       # toy sizes, seconds: a rot check, numbers mean nothing

Setting `direction=wli` (text + TLI -> WLI, the default anchor) on `model=tiny_llama dataset=synthetic_en`,
greedy decoding with KV cache, `max_new_tokens` = the config's `eval.max_new_tokens` (64). The tiny model
is first trained for `--steps` steps with a plain loop so that answers stop at EOS at realistic lengths.
Then the same first `--n` test samples are decoded

  (a) batched      in batches of `--bs` (the data module's collator: left padding, attention mask);
  (b) per sample   one at a time (batch of 1, no padding),

both through the module's own `generate(batch)`. One warm-up pass each, then `--repeats` timed passes,
alternating (a) and (b); medians of wall time (samples/s) and CPU time (all threads) are reported, and
the decoded answers of the two are compared string by string (identical unless a float-rounding difference
between the padded and the unpadded layout flips a near-tie in the greedy arg-max; the first divergences
are then shown with their top-2 logit gaps; `--smoke` runs that diagnosis on the first sample anyway).
"""

from __future__ import annotations

# isort: off
import _common  # noqa: F401  (first: it sets the OpenMP environment before torch loads)

# isort: on
import argparse
import statistics
import time

import torch
from _common import add_smoke_flag, first_batches, header, interleaved, pretrain, setup


def decode_all(module, batches: list[dict]) -> list[str]:
    out: list[str] = []
    for b in batches:
        out.extend(module.generate(b))
    return out


@torch.no_grad()
def first_divergence(module, batched: dict, row: int, single: dict, steps: int) -> str:
    """Where the greedy paths of one sample part: the step and the top-2 logit gap in each layout."""
    m = module.model
    gen = dict(
        max_new_tokens=steps,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=module.tokenizer.eos_token_id,
        pad_token_id=module.tokenizer.pad_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    a = m.generate(input_ids=batched["prompt_ids"], attention_mask=batched["prompt_mask"], **gen)
    b = m.generate(input_ids=single["prompt_ids"], attention_mask=single["prompt_mask"], **gen)
    for t, (sa, sb) in enumerate(zip(a.scores, b.scores, strict=False)):
        ta, tb = sa[row].topk(2), sb[0].topk(2)
        if ta.indices[0] != tb.indices[0]:
            gap_a = float(ta.values[0] - ta.values[1])
            gap_b = float(tb.values[0] - tb.values[1])
            diff = float((sa[row] - sb[0]).abs().max())
            return (
                f"step {t}: batched picks {int(ta.indices[0])} (top-2 gap {gap_a:.2e}), per-sample picks "
                f"{int(tb.indices[0])} (gap {gap_b:.2e}); max |logit diff| {diff:.2e}"
            )
    return "no divergence in the scores (difference after the decoded text?)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="test samples")
    ap.add_argument("--bs", type=int, default=32, help="batch size of the batched run")
    ap.add_argument("--steps", type=int, default=200, help="training steps before measuring (0: untrained)")
    ap.add_argument("--repeats", type=int, default=3)
    add_smoke_flag(ap)
    args = ap.parse_args()
    extra: list[str] = []
    if args.smoke:
        args.n, args.bs, args.steps, args.repeats = 8, 4, 4, 1
        extra = ["eval.max_new_tokens=16"]
    t_start = time.perf_counter()

    cfg, parts, module = setup("wli", extra, smoke=args.smoke)
    context = module.context
    print(header("wli_generation", args.smoke))
    print(pretrain(module, cfg, parts.datamodule, args.steps))
    module.eval()
    batched = first_batches(context, args.n, args.bs)
    single = first_batches(context, args.n, 1)
    n = len(single)
    print(
        f"{n} test samples, max_new_tokens {module.max_new_tokens}, batched: {len(batched)} batches of "
        f"{args.bs}, per sample: {n} batches of 1"
    )

    methods = {
        f"batched bs={args.bs}": lambda: decode_all(module, batched),
        "per-sample bs=1": lambda: decode_all(module, single),
    }
    results, wall, cpu = interleaved(methods, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    sps = {k: n / med[k] for k in methods}
    for k in methods:
        print(
            f"  {k:17s} {sps[k]:7.1f} samples/s   median {med[k]:6.2f} s wall, {cpu[k]:6.2f} s CPU per pass "
            f"(wall min {min(wall[k]):.2f}, max {max(wall[k]):.2f}; {args.repeats} passes)"
        )
    kb, ks = methods
    print(
        f"speed-up batched/per-sample: {sps[kb] / sps[ks]:.2f}x wall, {cpu[ks] / cpu[kb]:.2f}x CPU   "
        "(target >= 3x on CPU)"
    )

    a, b = results[kb], results[ks]
    tok = module.tokenizer
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in b]
    hit_max = sum(n_tok >= module.max_new_tokens for n_tok in lens)  # re-tokenized, so approximate
    print(
        f"answer length (tokens, per-sample run): median {statistics.median(lens):.0f}, max {max(lens)}; "
        f"about {hit_max} of {n} answers reach max_new_tokens"
    )
    same = [i for i in range(n) if a[i] == b[i]]
    print(f"identical decoded answers batched vs per-sample: {len(same)}/{n} ({len(same) / n:.1%})")
    fmt = module.builder.wli_format
    gold = [context.item("test", int(s["index"][0])).answer for s in single]
    for name, preds in (("batched", a), ("per-sample", b)):
        exact = sum(sorted(fmt.parse(p)) == sorted(fmt.parse(g)) for p, g in zip(preds, gold, strict=True))
        print(f"  exact match vs gold ({name}): {exact / n:.3f}")
    differ = [i for i in range(n) if a[i] != b[i]]
    for i in differ[:3]:
        bi, row = divmod(i, args.bs)
        print(f"  differs #{i}: batched {a[i]!r}\n              per-sample {b[i]!r}")
        print(f"    {first_divergence(module, batched[bi], row, single[i], module.max_new_tokens)}")
    if args.smoke and not differ:  # exercise the diagnosis anyway
        print(f"  smoke, divergence check of #0: {first_divergence(module, batched[0], 0, single[0], 4)}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
