"""What every task shares: the parts a task hands the runner, and the LightningModule base class with
the model built in `configure_model`, the optimizer, per-stage metric logging and the test prediction
rows (one row per sample, gathered from all ranks, written to `predictions.jsonl`) and the collapse
measure of those rows (`test/majority_f1`, `test/top_share`, `test/collapsed`; `val/majority_f1` from
the dev golds), so a run that answers one class everywhere says so in its own metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mre.model_options import ModelConfig
from mre.models import build_model, save_for_tools
from mre.optim import adamw_with_warmup
from mre.results import gather_rows, write_jsonl
from mre.setting import Direction
from mre.stats import AnswerParser, collapse, majority_f1


@dataclass
class TaskParts:
    """What a task builds from a config: the runner fits and tests these, and nothing else."""

    datamodule: L.LightningDataModule
    module: MREModule
    title: str  # printed above the test metrics, e.g. "snips | tli | anchor=True"
    callbacks: list[L.Callback] = field(default_factory=list)  # the task's own, after conf/callbacks


def plain_options(options: Any) -> dict[str, Any]:
    """An options object (a dataclass, or its DictConfig) as plain values for `save_hyperparameters`
    and the loggers: enums as their values, interpolations resolved."""
    return OmegaConf.to_container(OmegaConf.structured(options), resolve=True, enum_to_str=True)


def classification_metrics(n_labels: int) -> MetricCollection:
    """Accuracy, macro-F1 (`f1`) and micro-F1 over the labels plus one class for labels unseen in
    training (never predicted, so always wrong)."""
    n = n_labels + 1
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=n, average="micro"),
            "f1": MulticlassF1Score(num_classes=n, average="macro"),
            "micro_f1": MulticlassF1Score(num_classes=n, average="micro"),
        }
    )


class MREModule(L.LightningModule):
    """Base of every task's module; subclasses set `self.metrics = ModuleDict({"val": ..., "test": ...})`
    and call `add_prediction` in their test step."""

    metrics: torch.nn.ModuleDict

    def __init__(
        self,
        model_cfg: ModelConfig,
        optim_cfg: Any,  # mre.config.OptimConfig (read by mre.optim.adamw_with_warmup)
        tokenizer: PreTrainedTokenizerBase,
        seed: int = 42,
        cache_dir: str | None = None,
        predictions_path: str | Path | None = None,
        model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg, self.optim_cfg, self.tokenizer = model_cfg, optim_cfg, tokenizer
        self.seed, self.cache_dir, self.predictions_path = seed, cache_dir, predictions_path
        self.model = model
        self.predictions: list[dict[str, Any]] = []
        self.val_golds: list[dict[str, Any]] = []

    def configure_model(self) -> None:
        """Build the network here (not in __init__) so FSDP/DeepSpeed can shard it as it is made."""
        if self.model is None:
            self.model = build_model(self.model_cfg, self.tokenizer, seed=self.seed, cache_dir=self.cache_dir)
            # from_pretrained returns a model in eval mode, and Lightning keeps modules' modes as they are:
            # without this, a pretrained model (and its LoRA dropout) would train in eval mode
            self.model.train()

    def configure_optimizers(self):
        return adamw_with_warmup(self, self.optim_cfg)

    def export(self, path: str | Path) -> Path:
        """The trained model and its tokenizer in `save_pretrained` format (adapters only for LoRA)."""
        return save_for_tools(self.model, self.tokenizer, path)

    # ---------- metrics and prediction rows ----------
    def add_prediction(self, rid: str, prompt: str, gold: Any, prediction: Any, correct: bool) -> None:
        self.predictions.append(
            {"id": rid, "prompt": prompt, "gold": gold, "prediction": prediction, "correct": correct}
        )

    def add_val_gold(self, rid: str, gold: Any) -> None:
        """A dev sample's gold answer, for the dev majority baseline (`val/majority_f1`)."""
        self.val_golds.append({"id": rid, "gold": gold, "prediction": gold})

    def answer_level(self) -> tuple[Direction, AnswerParser | None]:
        """How the answers are scored (the level, and the WLI answer parser): text labels by default."""
        return Direction.tli, None

    def _log_metrics(self, stage: str) -> None:
        metric: Metric | MetricCollection = self.metrics[stage]
        values = metric.compute()
        metric.reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "f1")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        golds, self.val_golds = gather_rows(self.val_golds), []
        if golds:
            self.log("val/majority_f1", majority_f1(golds, *self.answer_level()), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.predictions = gather_rows(self.predictions)
        if self.predictions:
            c = collapse(self.predictions, *self.answer_level())
            self.log("test/majority_f1", c.majority_f1, sync_dist=True)
            self.log("test/top_share", c.top_share, sync_dist=True)
            self.log("test/collapsed", float(c.collapsed), sync_dist=True)
        if self.predictions_path and self.trainer.is_global_zero:
            write_jsonl(self.predictions_path, self.predictions)
