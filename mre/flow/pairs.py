"""The three pair sets of the flow metrics as masks, and one layer's saliency reduced onto them.

Shared by both backends of the engine (`mre.flow.engine`): the eager one builds the masks of all
target rows at once ([B, 3, L, L]) and reduces a layer's whole map; the blockwise one builds them a
block of target rows at a time and reduces that block, so that nothing L x L is ever held. Rows are
target positions i, columns source positions j (docs/design.md, "Saliency and the three flow metrics").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PairSets:
    """Per-sample description of C_wp, C_pq and C_ww ([B]- and [B, 2]-sized tensors, on the model's
    device), from which any block of mask rows is made on demand."""

    valid: Tensor  # [B, L] bool: non-pad positions
    q: Tensor  # [B] long: the target position
    text: Tensor  # [B, 2] long: text range [start, end)
    anchor: Tensor  # [B, 2] long: anchor range [start, end) (empty: no anchor)
    sink: Tensor  # [B] long: a position no pair may have as its source (the BOS), -1: none
    all_prior: bool  # S_wp sources: every earlier non-pad position instead of the text

    @property
    def seq(self) -> int:
        return int(self.valid.shape[1])

    def rows(self, start: int, stop: int) -> Tensor:
        """Boolean masks [B, 3, stop - start, L] (wp, pq, ww) of target rows start..stop-1."""
        bsz, seq = self.valid.shape
        dev = self.valid.device
        i = torch.arange(start, stop, device=dev).view(1, -1, 1)
        j = torch.arange(seq, device=dev).view(1, 1, seq)

        def inside(r: Tensor, x: Tensor) -> Tensor:
            return (x >= r[:, 0].view(-1, 1, 1)) & (x < r[:, 1].view(-1, 1, 1))

        valid_i = self.valid[:, start:stop].view(bsz, -1, 1)
        valid_j = self.valid.view(bsz, 1, seq)
        qv = self.q.view(bsz, 1, 1)
        causal = (j < i) & (i <= qv) & valid_i & valid_j  # every pair j < i <= q, off-diagonal, non-pad
        causal &= j != self.sink.view(bsz, 1, 1)
        src_j = valid_j if self.all_prior else inside(self.text, j)
        wp = causal & inside(self.anchor, i) & src_j
        pq = causal & (i == qv) & inside(self.anchor, j)
        ww = causal & ~wp & ~pq
        return torch.stack([wp, pq, ww], dim=1)

    def counts(self, block: int) -> Tensor:
        """[B, 3] pair counts, built `block` rows at a time (the blockwise backend never holds L x L)."""
        return sum(
            self.rows(s, min(s + block, self.seq)).flatten(2).sum(-1) for s in range(0, self.seq, block)
        )


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision maps (their sums would lose the small pairs), float64 stays."""
    return torch.promote_types(dtype, torch.float32)


def saliency(probs: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """(|A * dL/dA| per head [B, H, rows, L], I = |sum_h A * dL/dA| [B, rows, L]) in the accumulation
    dtype, for a layer's probabilities A and their gradient (all rows or one block of them)."""
    acc = accumulation_dtype(probs.dtype)
    per_head = probs.to(acc) * grad.to(acc)
    sal = per_head.sum(dim=1).abs_()
    return per_head, sal


def pair_sums(sal: Tensor, masks: Tensor) -> Tensor:
    """[B, 3] sums of the saliency rows `sal` [B, rows, L] over the pairs of `masks` [B, 3, rows * L]
    (the same rows, as floats in `sal`'s dtype): one batched matrix-vector product."""
    b = sal.shape[0]
    return torch.bmm(masks, sal.reshape(b, -1, 1)).squeeze(-1)
