"""Generative MRE fine-tuning of any Hugging Face causal LM in the four settings.

Training: cross-entropy on the answer tokens only (the builder's labels). Evaluation:
- TLI: one forward pass; the scores of the one-token label codes at q, arg-max over the codes only
  (no `generate()`): accuracy, macro-F1 (reported as `f1`) and micro-F1.
- WLI: batched greedy generation with KV cache from the left-padded prompts, stopping at EOS, the
  chat template's end of turn or a newline (answers are one line; the text is cut at its first
  newline); parsed with the serialization's parser; micro P/R/F1 over (type, span) pairs, exact match and
  per-type F1 (`mre.metrics.WLIF1`).
Every evaluated sample becomes a prediction row (id, prompt, gold, prediction, correct), gathered
from all ranks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from mre.data.context import TaskContext, build_context
from mre.data.datamodule import MREDataModule
from mre.data.wli_format import WLIFormat
from mre.ending import Ending, NonFiniteLossError, Reason
from mre.flow.callback import SaliencyFlowCallback
from mre.metrics import WLIF1
from mre.model_options import ModelConfig
from mre.rundir import CHECKPOINTS, ENDING, FLOW, PREDICTIONS
from mre.setting import Direction
from mre.tasks.answers import code_predictions, generate_answers
from mre.tasks.base import MREModule, TaskParts, classification_metrics, plain_options
from mre.tasks.prefix import causal_lm_logits

log = logging.getLogger(__name__)


def build(cfg: DictConfig, run_dir: Path) -> TaskParts:
    """The generative task of a config: its context, loaders, module and the flow callback."""
    context = build_context(cfg)
    module = make_module(cfg, context, run_dir)
    s = context.setting
    title = f"{context.dataset_name} | {s.direction} | anchor={s.with_anchor}"
    data = MREDataModule(context, OmegaConf.to_object(cfg.data), cfg.seed)
    return TaskParts(data, module, title, flow_callbacks(cfg, context, run_dir))


def make_module(cfg: DictConfig, context: TaskContext, run_dir: Path) -> GenerativeMRE:
    """The module of a config on a built context (its model is made later, in `configure_model`)."""
    return GenerativeMRE(
        model_cfg=OmegaConf.to_object(cfg.model),
        optim_cfg=OmegaConf.to_object(cfg.optim),
        context=context,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=cfg.seed,
        cache_dir=cfg.paths.cache_dir,
        predictions_path=run_dir / PREDICTIONS,
    )


def flow_callbacks(cfg: DictConfig, context: TaskContext, run_dir: Path) -> list[SaliencyFlowCallback]:
    """The saliency flow callback when `flow.enabled` and the setting has an anchor to flow through."""
    if not cfg.flow.enabled:
        return []
    if not context.setting.with_anchor:
        log.warning("flow: the setting has no anchor, so S_wp and S_pq are undefined; flow is skipped")
        return []
    return [
        SaliencyFlowCallback(context, OmegaConf.to_object(cfg.flow), seed=cfg.seed, output_dir=run_dir / FLOW)
    ]


class GenerativeMRE(MREModule):
    """Fine-tunes a causal LM on prompt builder batches; see the module docstring."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        optim_cfg: Any,  # mre.config.OptimConfig (config assembles it, above the tasks)
        context: TaskContext,
        max_new_tokens: int = 64,
        seed: int = 42,
        cache_dir: str | None = None,
        predictions_path: str | Path | None = None,
    ) -> None:
        super().__init__(model_cfg, optim_cfg, context.tokenizer, seed, cache_dir, predictions_path)
        self.context, self.builder, self.setting = context, context.builder, context.setting
        self.save_hyperparameters(
            {
                "model": plain_options(model_cfg),
                "optim": plain_options(optim_cfg),
                "direction": str(self.setting.direction),
                "with_anchor": self.setting.with_anchor,
                "labels": list(context.labels),
                "max_new_tokens": max_new_tokens,
                "seed": seed,
            }
        )
        self.max_new_tokens = max_new_tokens
        self.strict_loading = model_cfg.lora is None  # LoRA checkpoints hold the adapters only
        self.metrics = torch.nn.ModuleDict({s: self._make_metrics() for s in ("val", "test")})

    def _make_metrics(self):
        if self.setting.is_wli:
            return WLIF1(self.context.wli_types)
        return classification_metrics(len(self.context.labels))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """LoRA runs keep only the trainable (adapter) weights: a 7B base model is not copied each epoch."""
        if self.model_cfg.lora is not None:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    # ---------- training ----------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last k positions (q and every position predicting an answer token) and the
        answer loss. Left padding puts every answer at the right edge, so the full [B, L, vocab]
        logits (over a GB for a 32k vocabulary) are never materialised."""
        labels = batch["labels"]
        k = int((labels != -100).sum(1).max()) + 1
        logits = causal_lm_logits(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["position_ids"],
            keep=k,
            share_prefix=self.model_cfg.share_prompt_prefix,
        )
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels[:, labels.shape[1] - k + 1 :].flatten(),
            ignore_index=-100,
        )
        return logits, loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch)[1]
        if not torch.isfinite(loss).all():
            self._stop_on_nonfinite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _stop_on_nonfinite(self, loss: torch.Tensor) -> None:
        step = self.global_step
        run_dir = Path(self.trainer.default_root_dir)
        path = run_dir / CHECKPOINTS / f"nonfinite-step{step}.ckpt"
        self.trainer.save_checkpoint(path)
        error = NonFiniteLossError(
            f"training loss is {loss.item()} at global step {step} (epoch {self.current_epoch}); "
            f"checkpoint saved to {path}. Lower optim.lr, check the data, or use precision=32-true."
        )
        Ending(Reason.nonfinite_loss, self.current_epoch, step, str(error)).write(run_dir / ENDING)
        raise error

    def answer_level(self) -> tuple[Direction, WLIFormat]:
        """Answers are scored at the setting's output level, WLI answers read in the run's format."""
        return self.setting.direction, self.builder.wli_format

    # ---------- evaluation ----------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits, loss = self(batch)
        bs = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", loss, batch_size=bs, sync_dist=True)
        items = [self.context.item(stage, i) for i in batch["index"].tolist()]
        if self.setting.is_tli:
            preds, golds = self._score_codes(logits, batch)
            self.metrics[stage].update(preds, golds)
            gold_labels = [e.record.tli for e in items]  # unseen ones too, as they are
            rows = zip(gold_labels, [self.builder.labels[p] for p in preds.tolist()], strict=True)
        else:
            texts = self.generate(batch)
            pred_pairs = [self.builder.wli_format.parse(t) for t in texts]
            golds = [e.answer for e in items]  # as encoded: the pairs of a shortened text's kept part
            self.metrics[stage].update(pred_pairs, [self.builder.wli_format.parse(g) for g in golds])
            rows = zip(golds, texts, strict=True)
        if stage == "val":
            for e, (gold, _) in zip(items, rows, strict=True):
                self.add_val_gold(e.record.id, gold)
        if stage == "test":
            for e, (gold, pred) in zip(items, rows, strict=True):
                rec = e.record
                self.add_prediction(
                    rec.id, self.builder.render(rec).prompt, gold, pred, self._correct(gold, pred)
                )

    def _score_codes(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]):
        """Arg-max over the code tokens at q (the position before the first answer token); `logits`
        holds the last k positions of the sequence."""
        first_answer = (batch["labels"] != -100).int().argmax(dim=1)
        q = first_answer - 1 - (batch["labels"].shape[1] - logits.shape[1])
        q_logits = logits[torch.arange(logits.shape[0], device=logits.device), q]
        preds = code_predictions(q_logits, self.builder.code_ids)
        code_ids = torch.tensor(self.builder.code_ids, device=logits.device)
        gold_ids = batch["target"].unsqueeze(1) == code_ids.unsqueeze(0)
        golds = torch.where(gold_ids.any(1), gold_ids.int().argmax(1), len(self.builder.labels))
        return preds, golds

    def generate(self, batch: dict[str, torch.Tensor]) -> list[str]:
        return generate_answers(
            self.model,
            self.tokenizer,
            self.builder,
            batch["prompt_ids"],
            batch["prompt_mask"],
            self.max_new_tokens,
        )

    def _correct(self, gold: str, pred: str) -> bool:
        if self.setting.is_tli:
            return gold == pred
        fmt = self.builder.wli_format
        return sorted(fmt.parse(gold)) == sorted(fmt.parse(pred))
