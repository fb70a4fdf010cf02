"""The few-shot prompt classifier: any AutoModelForSeq2SeqLM (a tiny random T5 by default, or a real
T5 from a local folder) reads the prompt `... <extra_id_0> ...`; the label-word scores are the
decoder's vocabulary logits at the first decoding step (decoder input `[decoder_start]`, or
`[decoder_start, <extra_id_0>]` with `sentinel_first`), turned into class scores by a
`VerbalizerHead`. The whole model (and the learnable word weights, when on) is fine-tuned with
cross-entropy over the class scores; evaluation reports accuracy, macro-F1 (`f1`) and micro-F1, and
the test pass collects one prediction row per sample (id, prompt, gold, prediction, correct).

Contextual calibration, when on, is recomputed with the current weights at the start of every
training, validation and test epoch, from the same unlabeled training texts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mre.fewshot.verbalizer import Verbalizer, VerbalizerHead
from mre.models import build_model
from mre.optim import adamw_with_warmup
from mre.results import write_jsonl
from mre.tasks.generative import gather_rows

log = logging.getLogger(__name__)


def first_step_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoder_prefix: torch.Tensor,
) -> torch.Tensor:
    """B x V: the decoder's vocabulary logits at the last position of `decoder_prefix` (the first
    decoding step when the prefix is `[decoder_start]`)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_prefix.to(input_ids.device).expand(input_ids.shape[0], -1),
        use_cache=False,
    )
    return out.logits[:, -1]


class PromptClassifier(L.LightningModule):
    """Few-shot T5 prompt classifier; see the module docstring."""

    def __init__(
        self,
        model_cfg: DictConfig,
        optim_cfg: DictConfig,
        tokenizer: PreTrainedTokenizerBase,
        verbalizer: Verbalizer,
        pieces: list[list[list[int]]],
        multi_token: str = "mean",
        aggregate: str = "mean_logprob",
        calibrate: bool = False,
        learn_weights: bool = False,
        mask_id: int | None = None,
        sentinel_first: bool = False,
        calibration_ids: list[list[int]] | None = None,
        eval_batch_size: int = 32,
        seed: int = 42,
        cache_dir: str | None = None,
        predictions_path: str | Path | None = None,
        model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "model": OmegaConf.to_container(model_cfg, resolve=True),
                "optim": OmegaConf.to_container(optim_cfg, resolve=True),
                "verbalizer": verbalizer.as_dict(),
                "multi_token": multi_token,
                "aggregate": aggregate,
                "calibrate": calibrate,
                "learn_weights": learn_weights,
                "sentinel_first": sentinel_first,
                "seed": seed,
            }
        )
        if sentinel_first and mask_id is None:
            raise ValueError("sentinel_first needs the sentinel's token id (mask_id)")
        self.model_cfg, self.optim_cfg, self.tokenizer = model_cfg, optim_cfg, tokenizer
        self.verbalizer, self.labels = verbalizer, list(verbalizer.labels)
        self.head = VerbalizerHead(pieces, multi_token, aggregate, calibrate, learn_weights)
        self.mask_id, self.sentinel_first = mask_id, sentinel_first
        self.calibration_ids = calibration_ids or []
        if calibrate and not self.calibration_ids:
            raise ValueError("verbalizer.calibrate needs unlabeled calibration texts")
        self.eval_batch_size, self.seed, self.cache_dir = eval_batch_size, seed, cache_dir
        self.predictions_path = predictions_path
        self.model = model
        n = len(self.labels) + 1  # the extra class stands for labels unseen in training
        self.metrics = torch.nn.ModuleDict(
            {
                s: MetricCollection(
                    {
                        "acc": MulticlassAccuracy(num_classes=n, average="micro"),
                        "f1": MulticlassF1Score(num_classes=n, average="macro"),
                        "micro_f1": MulticlassF1Score(num_classes=n, average="micro"),
                    }
                )
                for s in ("val", "test")
            }
        )
        self.predictions: list[dict[str, Any]] = []

    # ---------- model and optimizer ----------
    def configure_model(self) -> None:
        """Build the network here (not in __init__) so FSDP/DeepSpeed can shard it as it is made."""
        if self.model is None:
            self.model = build_model(self.model_cfg, self.tokenizer, seed=self.seed, cache_dir=self.cache_dir)
        if not getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError(
                f"the few-shot prompt classifier needs an encoder-decoder (seq2seq) model such as T5; "
                f"model {self.model_cfg.name!r} is {type(self.model).__name__}"
            )

    @property
    def decoder_prefix(self) -> torch.Tensor:
        """1 x T decoder input: `[decoder_start]` (+ `<extra_id_0>` with sentinel_first)."""
        start = self.model.config.decoder_start_token_id
        if start is None:
            start = self.tokenizer.pad_token_id
        ids = [start, self.mask_id] if self.sentinel_first else [start]
        return torch.tensor([ids], dtype=torch.long)

    def configure_optimizers(self):
        return adamw_with_warmup(self, self.optim_cfg)

    # ---------- scores ----------
    def vocab_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return first_step_logits(self.model, input_ids, attention_mask, self.decoder_prefix)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B x C class scores."""
        return self.head(self.vocab_logits(input_ids, attention_mask))

    @torch.no_grad()
    def calibrate(self) -> torch.Tensor:
        """Set the head's calibration to the mean word probabilities over the calibration texts."""
        was_training = self.model.training
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        total, n = None, 0
        for i in range(0, len(self.calibration_ids), self.eval_batch_size):
            chunk = self.calibration_ids[i : i + self.eval_batch_size]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, c in enumerate(chunk):
                ids[b, : len(c)] = torch.tensor(c)
                mask[b, : len(c)] = 1
            p = self.head.word_probs(self.vocab_logits(ids.to(self.device), mask.to(self.device)), False)
            total = p.sum(0) if total is None else total + p.sum(0)
            n += len(chunk)
        self.model.train(was_training)
        mean = total / n
        self.head.set_calibration(mean)
        return mean

    def _maybe_calibrate(self) -> None:
        if self.head.calibrate:
            self.calibrate()

    # ---------- training ----------
    def on_train_epoch_start(self) -> None:
        self._maybe_calibrate()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scores = self(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(scores, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=scores.shape[0])
        return loss

    # ---------- evaluation ----------
    def on_validation_epoch_start(self) -> None:
        self._maybe_calibrate()

    def on_test_epoch_start(self) -> None:
        self._maybe_calibrate()
        self.predictions = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        scores = self(batch["input_ids"], batch["attention_mask"])
        golds = batch["labels"]
        known = golds < len(self.labels)  # labels unseen in training have no score: no loss
        losses = F.cross_entropy(scores, golds.clamp(max=len(self.labels) - 1), reduction="none")
        loss = (losses * known).sum() / known.sum().clamp(min=1)
        self.log(f"{stage}/loss", loss, batch_size=int(known.sum().clamp(min=1)), sync_dist=True)
        preds = scores.argmax(-1)
        self.metrics[stage].update(preds, golds)
        if stage == "test":
            dm = self.trainer.datamodule
            for i, p in zip(batch["index"].tolist(), preds.tolist(), strict=True):
                rec = dm.records("test")[i]
                pred = self.labels[p]
                self.predictions.append(
                    {
                        "id": rec.id,
                        "prompt": dm.prompt("test", i),
                        "gold": rec.tli,
                        "prediction": pred,
                        "correct": rec.tli == pred,
                    }
                )

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.predictions = gather_rows(self.predictions)
        if self.predictions_path and self.trainer.is_global_zero:
            write_jsonl(self.predictions_path, self.predictions)

    def _log_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "f1")
