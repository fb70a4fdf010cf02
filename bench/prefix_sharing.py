"""A training step with the batch's shared prompt prefix computed once versus the plain forward (run by
hand, not a test).

    python bench/prefix_sharing.py                          # SmolLM2 + LoRA on SNIPS, ~2-3 min on 2 cores
    python bench/prefix_sharing.py --dataset slurp          # SLURP's longer instruction (18 codes)
    python bench/prefix_sharing.py --smoke                  # tiny LLaMA, toy sizes: a rot check

`model=smollm2_135m_lora direction=tli with_anchor=true` (the study's Table 3 setting; `--direction wli`
for Table 2), the first `--n` training samples in batches of `--bs` (the study's 8). Each method runs
forward + backward of `GenerativeMRE.forward` (loss on the answer tokens, LoRA dropout on) over the same
batches, `model.share_prompt_prefix` false (plain) or true (shared; `mre.tasks.prefix`); one warm-up,
then `--repeats` alternating rounds, medians. Printed: the tokens per batch that the prefix covers, the
samples/s of each and the ratio (target >= 1.5x on the real model), and the agreement in eval mode
(dropout off): the largest loss difference and the largest gradient difference relative to each
tensor's largest entry (float32 rounding expected, ~1e-6).
"""

from __future__ import annotations

# isort: off
import _common  # noqa: F401  (first: it sets the OpenMP environment before torch loads)

# isort: on
import argparse
import statistics
import sys
import time

from _common import REPO, add_smoke_flag, first_batches, header, interleaved, setup

from mre.tasks.prefix import common_prefix_length


def steps(module, data: list[dict], share: bool) -> list[float]:
    """Forward + backward of each batch; returns the losses."""
    module.model_cfg.share_prompt_prefix = share
    losses = []
    for batch in data:
        module.zero_grad(set_to_none=True)
        loss = module(batch)[1]
        loss.backward()
        losses.append(loss.item())
    return losses


def agreement(module, batch: dict) -> tuple[float, float]:
    """(|loss difference|, largest gradient difference relative to its tensor's largest entry) of the
    two methods on one batch, dropout off."""
    module.eval()
    out = {}
    for share in (False, True):
        loss = steps(module, [batch], share)[0]
        out[share] = loss, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.train()
    (l0, g0), (l1, g1) = out[False], out[True]
    rel = max(((g1[k] - g0[k]).abs().max() / g0[k].abs().max().clamp_min(1e-30)).item() for k in g0)
    return abs(l1 - l0), rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="snips", choices=["snips", "slurp"])
    ap.add_argument("--data", help="the data folder (default: ../shared/data/<dataset>)")
    ap.add_argument("--direction", default="tli", choices=["tli", "wli"])
    ap.add_argument("--n", type=int, default=48, help="training samples timed per round")
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    add_smoke_flag(ap)
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.smoke:
        model, dataset, extra = "tiny_llama", "synthetic_en", ["with_anchor=true"]
        args.n, args.repeats = 16, 1
    else:
        folder = args.data or str(REPO.parent / "shared" / "data" / args.dataset)
        model, dataset = "smollm2_135m_lora", args.dataset
        extra = ["with_anchor=true", f"dataset.path={folder}", "dataset.n_train=240", "dataset.n_test=20"]
    try:
        module = setup(args.direction, extra, args.smoke, model=model, dataset=dataset)[2]
    except Exception as err:  # a missing data folder or model package: say which, and how to get it
        sys.exit(f"prefix_sharing: cannot set up {model} on {dataset}: {err}")
    print(header("prefix_sharing", args.smoke, model=model, dataset=dataset))
    data = first_batches(module.context, args.n, args.bs, split="train")
    prefix = [common_prefix_length(b["input_ids"], b["attention_mask"], keep=1) for b in data]
    tokens = [int(b["attention_mask"].sum()) / b["input_ids"].shape[0] for b in data]
    print(
        f"{len(data)} batches of {args.bs} ({args.direction}, with anchor): {statistics.mean(tokens):.1f} "
        f"tokens per sample, of which a shared prefix of {statistics.mean(prefix):.1f} "
        f"({min(prefix)}-{max(prefix)})"
    )
    module.train()
    methods = {"plain": lambda: steps(module, data, False), "shared": lambda: steps(module, data, True)}
    _, wall, cpu = interleaved(methods, args.repeats)
    rate = {k: len(data) * args.bs / statistics.median(v) for k, v in wall.items()}
    for k in ("plain", "shared"):
        print(f"{k:8s} {rate[k]:8.2f} samples/s   CPU {cpu[k]:.2f} s per round")
    print(f"samples/s shared/plain: {rate['shared'] / rate['plain']:.2f}x (target >= 1.5x on the real model)")
    print(f"CPU time plain/shared: {cpu['plain'] / cpu['shared']:.2f}x")
    loss_diff, grad_diff = agreement(module, data[0])
    print(f"agreement (eval mode) |loss diff| {loss_diff:.2e}, max rel. grad diff {grad_diff:.2e}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
