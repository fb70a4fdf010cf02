"""Metrics as torchmetrics `Metric`s with summed states, so they are exact under DDP.

WLI extraction is scored on (type, span) pairs as multisets: micro precision / recall / F1 over
all pairs, exact match of the whole set, and per-type F1 for the types of the training split that
occur in the gold pairs or the predictions (pairs of other types count in the micro scores only; a
type that occurs in neither has no F1 and is not reported).
"""

from __future__ import annotations

from collections import Counter

import torch
from torchmetrics import Metric

Pairs = list[tuple[str, str]]


def pair_overlap(pred: Pairs, gold: Pairs) -> int:
    """Number of predicted pairs matched by a gold pair (multiset intersection)."""
    return sum((Counter(pred) & Counter(gold)).values())


class WLIF1(Metric):
    """Micro P/R/F1 over (type, span) pairs, exact match, and per-type F1."""

    full_state_update = False

    def __init__(self, types: list[str]) -> None:
        super().__init__()
        self.types = list(types)
        n = len(self.types)
        for name in ("tp", "n_pred", "n_gold", "exact", "n"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("type_tp", "type_pred", "type_gold"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: list[Pairs], golds: list[Pairs]) -> None:
        for pred, gold in zip(preds, golds, strict=True):
            self.tp += pair_overlap(pred, gold)
            self.n_pred += len(pred)
            self.n_gold += len(gold)
            self.exact += float(Counter(pred) == Counter(gold))
            self.n += 1
            for i, t in enumerate(self.types):
                p = [x for x in pred if x[0] == t]
                g = [x for x in gold if x[0] == t]
                self.type_tp[i] += pair_overlap(p, g)
                self.type_pred[i] += len(p)
                self.type_gold[i] += len(g)

    @staticmethod
    def _f1(tp: torch.Tensor, n_pred: torch.Tensor, n_gold: torch.Tensor) -> torch.Tensor:
        denom = n_pred + n_gold
        return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom))

    def compute(self) -> dict[str, torch.Tensor]:
        out = {
            "precision": torch.where(
                self.n_pred > 0, self.tp / self.n_pred.clamp(min=1), self.n_gold == 0
            ).double(),
            "recall": torch.where(
                self.n_gold > 0, self.tp / self.n_gold.clamp(min=1), self.n_pred == 0
            ).double(),
            "f1": self._f1(self.tp, self.n_pred, self.n_gold),
            "exact_match": self.exact / self.n.clamp(min=1),
        }
        per_type = self._f1(self.type_tp, self.type_pred, self.type_gold)
        seen = (self.type_pred + self.type_gold) > 0  # a type absent from gold and predictions has no F1
        for t, v, ok in zip(self.types, per_type, seen.tolist(), strict=True):
            if ok:
                out[f"f1_type/{t}"] = v
        return {k: v.float() for k, v in out.items()}
