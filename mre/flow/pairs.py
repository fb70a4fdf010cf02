"""The three pair sets of the flow metrics, and one layer's saliency reduced onto them.

Shared by both backends of the engine (`mre.flow.engine`): the eager one reduces a layer's whole map,
the blockwise one a block of target rows (and only the key columns it attends to) at a time, so that
nothing L x L is ever held. Rows are target positions i, columns source positions j (docs/design.md,
"Saliency and the three flow metrics"). The masks of `PairSets.rows` count the pairs (and are what
`PairSets.sums` is tested against).
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

    def sums(self, sal: Tensor, start: int, col0: int = 0) -> Tensor:
        """[B, 3] float64 sums of saliency rows start.. over the pairs of C_wp, C_pq, C_ww.

        `sal` [B, rows, cols] holds I[i, j] for target rows i = start.. and source columns j = col0..
        (columns outside it hold no saliency: masked keys, whose probability is 0). Each pair set meets a
        row in one interval of columns (C_ww: the row's causal pairs less the other two), so one float64
        prefix sum per row gives every sum by differences, with no [rows, L] mask at all.
        """
        bsz, rows, cols = sal.shape
        dev = sal.device
        j = torch.arange(col0, col0 + cols, device=dev).view(1, 1, cols)
        keep_j = self.valid[:, col0 : col0 + cols].view(bsz, 1, cols) & (j != self.sink.view(bsz, 1, 1))
        prefix = torch.nn.functional.pad(torch.where(keep_j, sal.double(), 0.0).cumsum(-1), (1, 0))
        i = torch.arange(start, start + rows, device=dev).view(1, rows)

        def before(x: Tensor) -> Tensor:
            """[B, rows] sum over the kept columns j < x of each row (x: [B, rows] or [B, 1])."""
            k = (x - col0).clamp(0, cols).expand(bsz, rows)
            return prefix.gather(-1, k.unsqueeze(-1)).squeeze(-1)

        def within(r: Tensor) -> Tensor:
            """[B, rows] sum over the kept columns of [r0, r1) before the row's own position."""
            lo, hi = r[:, :1], torch.minimum(r[:, 1:2], i)
            return torch.where(hi > lo, before(hi) - before(lo), 0.0)

        causal = before(i)  # j < i
        in_anchor = (i >= self.anchor[:, :1]) & (i < self.anchor[:, 1:2])
        wp = torch.where(in_anchor, causal if self.all_prior else within(self.text), 0.0)
        q = self.q.view(bsz, 1)
        pq = torch.where(i == q, within(self.anchor), 0.0)
        rows_ok = (self.valid[:, start : start + rows] & (i <= q)).double()
        return torch.stack([wp, pq, causal - wp - pq], dim=1).mul_(rows_ok.unsqueeze(1)).sum(-1)

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
