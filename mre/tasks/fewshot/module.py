"""The few-shot prompt classifier. An encoder-decoder (a tiny random T5 by default, or a real T5)
reads the prompt `... <extra_id_0> ...` and the label-word scores are the decoder's vocabulary logits
at the first decoding step (decoder input `[decoder_start]`, or `[decoder_start, <extra_id_0>]` with
`sentinel_first`); a decoder-only LM (LLaMA, SmolLM2, ...) reads the prompt up to the mask (in its
chat template's user turn when it has one) and the scores are its next-token logits. A
`VerbalizerHead` turns them into class scores. The whole model (and the learnable word weights, when
on) is fine-tuned with cross-entropy over the class scores; evaluation reports accuracy, macro-F1
(`f1`) and micro-F1, and the test pass collects one prediction row per sample (id, prompt, gold,
prediction, correct).

Contextual calibration, when on, is recomputed with the current weights at the start of every
training, validation and test epoch, from the same unlabeled training texts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from mre.data.batches import position_ids
from mre.errors import ConfigError
from mre.model_options import ModelConfig
from mre.tasks.base import MREModule, classification_metrics, plain_options
from mre.tasks.fewshot.data import Collate, Example, FewShotContext
from mre.tasks.fewshot.options import Aggregate, MultiToken
from mre.tasks.fewshot.verbalizer import Verbalizer, VerbalizerHead

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


def next_token_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """B x V: a decoder-only model's logits for the token after each left-padded prompt."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=1,
        use_cache=False,
    )
    return out.logits[:, -1]


class PromptClassifier(MREModule):
    """Few-shot prompt classifier (T5 or a decoder-only LM); see the module docstring."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        optim_cfg: Any,  # mre.config.OptimConfig
        context: FewShotContext,
        verbalizer: Verbalizer,
        pieces: list[list[list[int]]],
        multi_token: MultiToken = MultiToken.mean,
        aggregate: Aggregate = Aggregate.mean_logprob,
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
        super().__init__(model_cfg, optim_cfg, context.tokenizer, seed, cache_dir, predictions_path, model)
        self.save_hyperparameters(
            {
                "model": plain_options(model_cfg),
                "optim": plain_options(optim_cfg),
                "verbalizer": verbalizer.as_dict(),
                "multi_token": str(multi_token),
                "aggregate": str(aggregate),
                "calibrate": calibrate,
                "learn_weights": learn_weights,
                "sentinel_first": sentinel_first,
                "seed": seed,
            }
        )
        if sentinel_first and mask_id is None:
            raise ValueError("sentinel_first needs the sentinel's token id (mask_id)")
        self.context = context
        self.verbalizer, self.labels = verbalizer, list(verbalizer.labels)
        self.head = VerbalizerHead(pieces, multi_token, aggregate, calibrate, learn_weights)
        self.mask_id, self.sentinel_first = mask_id, sentinel_first
        self.calibration_ids = calibration_ids or []
        if calibrate and not self.calibration_ids:
            raise ConfigError("verbalizer.calibrate needs unlabeled calibration texts")
        self.eval_batch_size = eval_batch_size
        self.metrics = torch.nn.ModuleDict(
            {s: classification_metrics(len(self.labels)) for s in ("val", "test")}
        )

    # ---------- model ----------
    def configure_model(self) -> None:
        """Build the network (see MREModule); it must be of the kind the prompt template was made for."""
        super().configure_model()
        seq2seq = bool(getattr(self.model.config, "is_encoder_decoder", False))
        if seq2seq == self.context.template.causal:
            made_for = "a decoder-only" if self.context.template.causal else "an encoder-decoder"
            raise ConfigError(
                f"the few-shot prompt was built for {made_for} model, but model {self.model_cfg.name!r} is "
                f"{type(self.model).__name__}"
            )

    @property
    def decoder_prefix(self) -> torch.Tensor:
        """1 x T decoder input: `[decoder_start]` (+ `<extra_id_0>` with sentinel_first)."""
        start = self.model.config.decoder_start_token_id
        if start is None:
            start = self.tokenizer.pad_token_id
        ids = [start, self.mask_id] if self.sentinel_first else [start]
        return torch.tensor([ids], dtype=torch.long)

    # ---------- scores ----------
    def vocab_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B x V: the scores the label words are read from (see the module docstring)."""
        if self.context.template.causal:
            return next_token_logits(self.model, input_ids, attention_mask)
        return first_step_logits(self.model, input_ids, attention_mask, self.decoder_prefix)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B x C class scores."""
        return self.head(self.vocab_logits(input_ids, attention_mask))

    @torch.no_grad()
    def calibrate(self) -> torch.Tensor:
        """Set the head's calibration to the mean word probabilities over the calibration texts."""
        was_training = self.model.training
        self.model.eval()
        collate = Collate(self.tokenizer.pad_token_id, left=self.context.template.causal)
        total, n = None, 0
        for i in range(0, len(self.calibration_ids), self.eval_batch_size):
            chunk = self.calibration_ids[i : i + self.eval_batch_size]
            batch = collate([Example(c, 0, k) for k, c in enumerate(chunk)])
            logits = self.vocab_logits(
                batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            )
            p = self.head.word_probs(logits, False)
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
        super().on_test_epoch_start()
        self._maybe_calibrate()

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
        if stage == "val":
            for i in batch["index"].tolist():
                rec = self.context.records("val")[i]
                self.add_val_gold(rec.id, rec.tli)
        if stage == "test":
            for i, p in zip(batch["index"].tolist(), preds.tolist(), strict=True):
                rec = self.context.records("test")[i]
                pred = self.labels[p]
                self.add_prediction(rec.id, self.context.prompt("test", i), rec.tli, pred, rec.tli == pred)
