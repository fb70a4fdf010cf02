"""`SaliencyFlowCallback`: the information flow of a fixed held-out sample, before training (epoch -1,
the base model) and at every training epoch end, logged live and written as CSV and figures.

Per epoch k it writes `flow/epoch_<k>_samples.csv` and `flow/epoch_<k>.csv` (the schemas of
`mre.flow.files`, the same as `analyze.py`'s: per-layer mean, std and 95% bootstrap interval),
`flow/epoch_<k>.png` and `flow/evolution.png`. Under DDP each rank takes a shard of the sample and
the per-sample values are gathered, so every number equals a one-process run. The engine leaves
inference mode itself and restores the model's mode, attention implementation and requires_grad.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np

from mre.data.batches import Collator
from mre.data.context import TaskContext
from mre.flow.engine import FlowEngine
from mre.flow.files import METRICS, result_values, sample_rows, summarize, write_layers, write_samples
from mre.flow.options import FlowTrainConfig
from mre.flow.plots import plot_evolution, plot_flow
from mre.flow.samples import flow_batch, label_token_ids, measurable, select_samples
from mre.results import gather_rows
from mre.stats import LayerStats

log = logging.getLogger(__name__)


class SaliencyFlowCallback(L.Callback):
    """See the module docstring; `options` are the `flow:` node of the training config."""

    def __init__(
        self, context: TaskContext, options: FlowTrainConfig, seed: int, output_dir: str | Path
    ) -> None:
        self.label_ids = label_token_ids(context, options.loss)
        items = measurable(context.items("test"), self.label_ids)
        self.items = [items[i] for i in select_samples(len(items), options.n_samples, seed)]
        self.ids = [context.records("test")[e.index].id for e in self.items]
        self.collate = Collator(context.tokenizer.pad_token_id)
        self.bos_token_id = context.tokenizer.bos_token_id  # `exclude_bos` drops it where it leads a prompt
        self.options, self.seed, self.output_dir = options, seed, Path(output_dir)
        self.history: dict[int, dict[str, list[float]]] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0 and -1 not in self.history:
            self._evaluate(trainer, pl_module, epoch=-1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module, epoch=trainer.current_epoch)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict.get("history", {})

    def _shard_rows(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict]:
        """This rank's samples as rows `{"id", "sample", "values": {metric: [layers]}, "file": [...]}`."""
        engine = FlowEngine(pl_module.model, self.options, bos_token_id=self.bos_token_id)
        positions = list(range(trainer.global_rank, len(self.items), trainer.world_size))
        rows = []
        for start in range(0, len(positions), self.options.batch_size):
            chunk = positions[start : start + self.options.batch_size]
            batch = flow_batch(self.collate([self.items[p] for p in chunk]), self.label_ids)
            res = engine.compute({k: v.to(pl_module.device) for k, v in batch.items()})
            values = result_values([res])
            for b, p in enumerate(chunk):
                rows.append(
                    {
                        "id": self.ids[p],
                        "sample": self.items[p].index,
                        "values": {m: values[m][b] for m in METRICS},
                        "file": sample_rows(res, [(b, self.items[p].index, self.ids[p])]),
                    }
                )
        return rows

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        rows = sorted(gather_rows(self._shard_rows(trainer, pl_module)), key=lambda r: r["sample"])
        values = {m: np.stack([r["values"][m] for r in rows]) for m in METRICS}
        stats = summarize(values, self.options.n_boot, self.seed, self.options.normalize)
        self.history[epoch] = {m: s.mean.tolist() for m, s in stats.items()}
        if trainer.is_global_zero:
            self._write(epoch, stats, [line for r in rows for line in r["file"]])
            self._log(trainer, epoch, stats)

    def _write(self, epoch: int, stats: dict[str, LayerStats], file_rows: list[dict]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_samples(self.output_dir / f"epoch_{epoch}_samples.csv", file_rows)
        write_layers(stats, self.output_dir / f"epoch_{epoch}.csv")
        title = "base model (before training)" if epoch == -1 else f"epoch {epoch}"
        plot_flow(stats, self.output_dir / f"epoch_{epoch}.png", f"information flow, {title}")
        epochs = sorted(self.history)
        grid = {m: np.array([self.history[e][m] for e in epochs]) for m in METRICS}
        plot_evolution(epochs, grid, self.output_dir / "evolution.png")

    def _log(self, trainer: L.Trainer, epoch: int, stats: dict[str, LayerStats]) -> None:
        flat = {
            f"flow/{m}/layer_{layer:02d}": float(s.mean[layer])
            for m, s in stats.items()
            for layer in range(len(s.mean))
        }
        flat["flow/epoch"] = epoch
        for lg in trainer.loggers:
            lg.log_metrics(flat, step=trainer.global_step)
            if type(lg).__name__ == "WandbLogger":
                self._log_wandb(lg, epoch, stats)

    @staticmethod
    def _log_wandb(lg, epoch: int, stats: dict[str, LayerStats]) -> None:
        import wandb

        names = list(stats)
        layers = list(range(len(stats[names[0]].mean)))
        rows = [[epoch, layer, *(float(stats[m].mean[layer]) for m in names)] for layer in layers]
        lg.experiment.log(
            {
                f"flow/curves/epoch_{epoch}": wandb.plot.line_series(
                    xs=layers,
                    ys=[stats[m].mean.tolist() for m in names],
                    keys=names,
                    title=f"information flow, epoch {epoch}",
                    xname="layer",
                ),
                "flow/table": wandb.Table(columns=["epoch", "layer", *names], data=rows),
            }
        )
