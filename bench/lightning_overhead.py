"""One Lightning training epoch versus the same steps in a plain PyTorch loop (run by hand, not a test).

    python bench/lightning_overhead.py           # ~1-2 minutes on 2 idle CPU cores
    python bench/lightning_overhead.py --smoke   # toy sizes, seconds: a rot check, numbers mean nothing

`model=tiny_llama dataset=synthetic_en direction=wli` (the default job's setting), one epoch of the training
split (1,000 samples in batches of 16: 63 steps).

  (a) lightning  `Trainer(**cfg.trainer, max_epochs=1, limit_val_batches=0, logger=False,
                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)`
                 `.fit(module, datamodule=dm)` on a fresh `GenerativeMRE` (the trainer calls
                 `configure_model`, `configure_optimizers`, clips at gradient_clip_val=1.0); no callbacks
                 of conf/callbacks and no flow callback (`flow.enabled=false`);
  (b) plain      a fresh `GenerativeMRE` with `configure_model()`, then the same batches in the same order
                 (`dm.train_dataloader()`, seeded shuffle), the same AdamW and linear warm-up schedule
                 (`mre.optim`) stepped per batch, `clip_grad_norm_(params, 1.0)`,
                 `zero_grad(set_to_none=True)`.

Both are timed from "fresh module" to "epoch done" (model build included on both sides); the time inside
the epoch (Lightning's on_train_epoch_start -> on_train_epoch_end, the plain loop itself) and the CPU time
(process time, all threads; steadier than wall time on a busy machine) are reported too. One short
warm-up of each (3 steps), then `--repeats` timed epochs alternating (b) and (a); medians are reported.
Per-step losses and the final weights of the two are compared (bitwise equal is expected: same seeded
init, same batch order, same optimizer steps; CPU kernels are deterministic).
"""

from __future__ import annotations

# isort: off
import _common  # noqa: F401  (first: it sets the OpenMP environment before torch loads)

# isort: on
import argparse
import statistics
import time

import hydra
import lightning as L
import torch
from _common import add_smoke_flag, build_module, header, new_module, setup, train_plain


class Recorder(L.Callback):
    """Per-step training losses and the epoch's own wall time."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.t0 = self.t1 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.t1 = time.perf_counter()


def run_lightning(cfg, dm, limit: int | None = None) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    module = new_module(cfg, dm.context)
    rec = Recorder()
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        max_epochs=1,
        limit_val_batches=0,
        limit_train_batches=limit,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
    )
    trainer.fit(module, datamodule=dm)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "epoch": rec.t1 - rec.t0, "cpu": cpu, "losses": rec.losses, "module": module}


def run_plain(cfg, dm, limit: int | None = None) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    module = build_module(cfg, dm.context)
    loader = dm.train_dataloader()
    steps = len(loader)
    t1 = time.perf_counter()
    losses = train_plain(module, cfg, loader if limit is None else list(loader)[:limit], steps)
    t2, cpu = time.perf_counter(), time.process_time() - c0
    return {"wall": t2 - t0, "epoch": t2 - t1, "cpu": cpu, "losses": losses, "module": module}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.repeats = 1
    t_start = time.perf_counter()

    cfg, parts, _ = setup("wli", smoke=args.smoke)
    dm = parts.datamodule
    print(header("lightning_overhead", args.smoke))
    steps = len(dm.train_dataloader())
    print(
        f"one epoch: {len(dm.context.items('train'))} training samples, batch {cfg.data.batch_size}, "
        f"{steps} steps, gradient_clip_val {cfg.trainer.gradient_clip_val}, precision {cfg.trainer.precision}"
    )
    run_plain(cfg, dm, limit=3)  # warm-up
    run_lightning(cfg, dm, limit=3)

    res: dict[str, list] = {"plain": [], "lightning": []}
    for _ in range(args.repeats):
        res["plain"].append(run_plain(cfg, dm))
        res["lightning"].append(run_lightning(cfg, dm))
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("wall", "epoch", "cpu")} for k, v in res.items()
    }
    for k in ("plain", "lightning"):
        walls = [r["wall"] for r in res[k]]
        print(
            f"  {k:9s} {med[k]['wall']:6.2f} s wall (min {min(walls):.2f}, max {max(walls):.2f}; "
            f"{args.repeats} epochs), {med[k]['epoch']:6.2f} s of it inside the epoch "
            f"({med[k]['epoch'] / steps * 1000:.1f} ms/step), {med[k]['cpu']:6.2f} s CPU"
        )
    p, lt = med["plain"], med["lightning"]
    over = {m: lt[m] / p[m] - 1 for m in ("wall", "epoch", "cpu")}
    print(
        f"Lightning overhead: {over['wall']:+.1%} wall, {over['epoch']:+.1%} wall inside the epoch, "
        f"{over['cpu']:+.1%} CPU   (target <= 10%)"
    )
    fixed = (lt["wall"] - lt["epoch"]) - (p["wall"] - p["epoch"])
    print(f"  fixed cost outside the epoch (fit set-up/tear-down beyond the plain loop's): {fixed:+.2f} s")

    lp, mp = res["plain"][-1]["losses"], res["plain"][-1]["module"]
    ll, ml = res["lightning"][-1]["losses"], res["lightning"][-1]["module"]
    n = min(len(lp), len(ll))
    print(f"steps run: plain {len(lp)}, lightning {len(ll)}")
    print(f"final loss: plain {lp[-1]:.6f}, lightning {ll[-1]:.6f}, |diff| {abs(lp[-1] - ll[-1]):.2e}")
    print(f"max |loss diff| over all {n} steps: {max(abs(a - b) for a, b in zip(lp, ll, strict=False)):.2e}")
    with torch.no_grad():
        pdiff = max(
            float((a - b).abs().max())
            for a, b in zip(mp.model.parameters(), ml.model.parameters(), strict=True)
        )
    print(f"max |weight diff| after the epoch: {pdiff:.2e}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
