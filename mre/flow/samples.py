"""Which test samples a flow measurement takes, and the engine's view of their batch: shared by the
training callback (`mre.flow.callback`) and the analyses (`mre.analysis.stream` and its users), so the
callback's fixed held-out sample and an analysis of the same size and seed are the same samples."""

from __future__ import annotations

import logging
import random

import torch

from mre.data.context import TaskContext
from mre.data.prompts import Encoded
from mre.errors import ConfigError
from mre.flow.options import FlowLoss

log = logging.getLogger(__name__)


def select_samples(n_items: int, n: int | None, seed: int) -> list[int]:
    """Positions 0..n_items-1: all of them (n None or at least n_items), or a seeded subset of n, in
    order. The one seeded selection of the project."""
    if n is None or n >= n_items:
        return list(range(n_items))
    if n <= 0:
        raise ConfigError(f"n_samples must be positive, got {n}")
    return sorted(random.Random(seed).sample(range(n_items), n))


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


def label_token_ids(context: TaskContext, loss: FlowLoss) -> list[int] | None:
    """The TLI code ids the label-restricted loss is taken over (None for the full-vocabulary loss)."""
    return context.builder.code_ids if str(loss) == FlowLoss.label_restricted else None


def measurable(items: list[Encoded], label_ids: list[int] | None) -> list[Encoded]:
    """The samples the loss is defined for: with the label-restricted loss, those whose gold label was
    seen in training (an unseen one has no code among the C classes); the others are left out, said."""
    if label_ids is None:
        return items
    kept = [e for e in items if e.target in label_ids]
    if len(kept) < len(items):
        log.warning(
            "flow.loss=label_restricted: %d test samples have a text label never seen in training (no code "
            "to restrict the loss to) and are left out of the flow",
            len(items) - len(kept),
        )
    return kept
