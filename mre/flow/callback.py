"""`SaliencyFlowCallback`: the information flow of a fixed held-out set, before training (epoch -1,
the base model) and at every training epoch end, logged live and written as CSV and figures.

Under DDP each rank takes a shard of the held-out set and the per-layer sums, sums of squares and
counts are summed across ranks, so the means equal a one-process run. The engine leaves
inference mode itself and restores the model's mode, attention implementation and requires_grad.
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch

from mre.data.datamodule import Collator
from mre.flow.engine import FlowEngine, FlowResult
from mre.flow.plots import METRICS, plot_evolution, plot_flow

log = logging.getLogger(__name__)

Z95 = 1.959964


def flow_batch(
    batch: dict[str, torch.Tensor], label_token_ids: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """The engine's view of a collated batch: the left-padded prompt and its ranges."""
    out = {
        "input_ids": batch["prompt_ids"],
        "attention_mask": batch["prompt_mask"],
        "text_range": batch["text_range"],
        "anchor_range": batch["anchor_range"],
        "q": batch["q"],
        "target": batch["target"],
    }
    if label_token_ids:
        out["label_token_ids"] = torch.tensor(label_token_ids)
    return out


class FlowAccumulator:
    """Per-layer sum, sum of squares and count of each metric: mergeable across ranks and batches."""

    def __init__(self, n_layers: int) -> None:
        self.stats = torch.zeros(
            len(METRICS), 3, n_layers, dtype=torch.float64
        )  # [metric, (sum, sq, n), layer]

    def add(self, res: FlowResult) -> None:
        for m, (vals, counts) in enumerate(
            ((res.s_wp, res.n_wp), (res.s_pq, res.n_pq), (res.s_ww, res.n_ww))
        ):
            ok = counts > 0
            v = vals[ok].double()
            self.stats[m, 0] += v.sum(0)
            self.stats[m, 1] += (v**2).sum(0)
            self.stats[m, 2] += ok.sum()

    def summary(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """metric -> (mean, lo, hi, n) per layer, with a normal 95% interval of the mean."""
        out = {}
        for m, name in enumerate(METRICS):
            s, sq, n = self.stats[m].numpy()
            if n.max() == 0:
                continue
            mean = s / np.maximum(n, 1)
            var = np.maximum(sq - n * mean**2, 0) / np.maximum(n - 1, 1)
            half = Z95 * np.sqrt(var / np.maximum(n, 1))
            out[name] = (mean, mean - half, mean + half, n)
        return out


class SaliencyFlowCallback(L.Callback):
    """See the module docstring. Options are the engine's (DESIGN.md defaults)."""

    def __init__(
        self,
        n_samples: int = 64,
        batch_size: int = 16,
        seed: int = 42,
        sources: str = "text",
        loss: str = "full_vocab",
        normalize: str = "none",
        exclude_bos: bool = False,
        output_dir: str = "flow",
    ) -> None:
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.engine_kwargs = {
            "sources": sources,
            "loss": loss,
            "normalize": normalize,
            "exclude_bos": exclude_bos,
        }
        self.output_dir = Path(output_dir)
        self.history: dict[int, dict] = {}
        self.enabled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage != "fit":
            return
        if not dm.with_anchor:
            log.warning("flow: the setting has no anchor, so S_wp and S_pq are undefined; flow is skipped")
            self.enabled = False
            return
        items = dm.encoded["test"]
        idx = sorted(random.Random(self.seed).sample(range(len(items)), min(self.n_samples, len(items))))
        self.items = [items[i] for i in idx]
        self.collate = Collator(dm.tokenizer.pad_token_id)
        self.label_ids = dm.builder.code_ids if self.engine_kwargs["loss"] == "label_restricted" else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and trainer.current_epoch == 0 and -1 not in self.history:
            self._evaluate(trainer, pl_module, epoch=-1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._evaluate(trainer, pl_module, epoch=trainer.current_epoch)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict.get("history", {})

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        engine = FlowEngine(pl_module.model, **self.engine_kwargs)
        shard = self.items[trainer.global_rank :: trainer.world_size]
        acc: FlowAccumulator | None = None
        for i in range(0, len(shard), self.batch_size):
            batch = self.collate(shard[i : i + self.batch_size])
            batch = {k: v.to(pl_module.device) for k, v in flow_batch(batch, self.label_ids).items()}
            res = engine.compute(batch)
            acc = acc or FlowAccumulator(res.n_layers)
            acc.add(res)
        stats = acc.stats if acc is not None else torch.zeros(len(METRICS), 3, 0, dtype=torch.float64)
        acc = FlowAccumulator(stats.shape[-1])
        acc.stats = trainer.strategy.reduce(stats.to(pl_module.device), reduce_op="sum").cpu()
        summary = acc.summary()
        self.history[epoch] = {m: v[0].tolist() for m, v in summary.items()}
        if trainer.is_global_zero:
            self._write(epoch, summary)
            self._log(trainer, epoch, summary)

    def _write(self, epoch: int, summary: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        n_layers = len(next(iter(summary.values()))[0])
        with open(self.output_dir / f"epoch_{epoch}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", *METRICS, "n", *(f"{m}_{b}" for m in METRICS for b in ("lo", "hi"))])
            for layer in range(n_layers):
                vals = [summary[m][0][layer] if m in summary else "" for m in METRICS]
                bands = [summary[m][k][layer] if m in summary else "" for m in METRICS for k in (1, 2)]
                w.writerow([layer, *vals, int(summary["S_ww"][3][layer]), *bands])
        layers = np.arange(n_layers)
        curves = {m: v[:3] for m, v in summary.items()}
        title = "base model (before training)" if epoch == -1 else f"epoch {epoch}"
        plot_flow(layers, curves, self.output_dir / f"epoch_{epoch}.png", f"information flow, {title}")
        epochs = sorted(self.history)
        grid = {m: np.array([self.history[e][m] for e in epochs]) for m in METRICS if m in summary}
        plot_evolution(epochs, layers, grid, self.output_dir / "evolution.png")

    def _log(self, trainer: L.Trainer, epoch: int, summary: dict) -> None:
        flat = {
            f"flow/{m}/layer_{layer:02d}": float(v[0][layer])
            for m, v in summary.items()
            for layer in range(len(v[0]))
        }
        flat["flow/epoch"] = epoch
        for lg in trainer.loggers:
            lg.log_metrics(flat, step=trainer.global_step)
            if type(lg).__name__ == "WandbLogger":
                self._log_wandb(lg, epoch, summary)

    @staticmethod
    def _log_wandb(lg, epoch: int, summary: dict) -> None:
        import wandb

        names = list(summary)
        layers = list(range(len(summary[names[0]][0])))
        rows = [[epoch, layer, *(float(summary[m][0][layer]) for m in names)] for layer in layers]
        lg.experiment.log(
            {
                f"flow/curves/epoch_{epoch}": wandb.plot.line_series(
                    xs=layers,
                    ys=[summary[m][0].tolist() for m in names],
                    keys=names,
                    title=f"information flow, epoch {epoch}",
                    xname="layer",
                ),
                "flow/table": wandb.Table(columns=["epoch", "layer", *names], data=rows),
            }
        )
