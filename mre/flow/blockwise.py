"""Memory-linear attention for the flow engine: probabilities never held for more than a block of rows.

Row i of attention depends only on q_i, all keys and values and row i of the mask, so a layer's
output, its gradients dQ, dK, dV and its saliency A * dL/dA can be computed a block of query rows at a
time. `BlockwiseAttention` does that with the module's *own* eager attention function on each block:

* forward (no graph): for each block, eager(q[block], k, v, mask[block]) -> the block's output rows;
  only q, k, v are saved, never the probabilities;
* backward: for each block, the same eager call again with autograd on, and one
  ``torch.autograd.grad`` of the block's output (upstream gradient dO[block]) with respect to
  q[block], k, v *and the returned probabilities* gives that block's dQ rows, its share of dK and dV
  (grouped-query heads summed by the eager function's own ``repeat_kv``) and dL/dA of its rows; the
  saliency rows are reduced onto the pair masks of the same rows at once.

Running the module's own eager function is what makes this exact for every architecture the eager
backend supports, with no per-model code: its scaling (GPT-2's default and per-layer scaling arrive
as the same ``scaling`` kwarg or its default), its softmax dtype (LLaMA's float32 softmax, GPT-2's
input-dtype one), logit softcapping, grouped-query heads. The backward differs from autograd through
full eager attention only in the order dK and dV are summed over blocks (rounding).

The mask: transformers builds one 4D float mask of all rows for eager attention, itself L x L. For the
blockwise backend the mask function (`row_mask`, registered by the engine) returns a `RowMask` that
keeps the mask's recipe (transformers' own mask function: causal, sliding window, padding) and makes
the float rows of one block on demand, equal to those rows of the eager mask.

Peak memory per layer: q, k, v and the output (O(L)) plus one block's heads x block x L working set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mre.flow.pairs import PairSets, saliency

__all__ = ["BlockwiseAttention", "BlockwiseLayer", "RowMask", "mask_rows"]

USE_EAGER = "use the eager backend (flow.backend=eager)"


class RowMask:
    """The eager 4D float mask [B, 1, rows, L] of any block of query rows, with every position allowed to
    attend to itself (see the engine's mask: a left-padding row would otherwise be fully masked).

    It is handed to the model as its attention mask and read only by the flow's attention function; a
    model that indexes or inspects the mask itself gets a clear error instead.
    """

    def __init__(self, mask_kwargs: dict[str, Any]):
        self._kwargs = mask_kwargs

    def rows(self, start: int, stop: int) -> Tensor | None:
        """Rows start..stop-1 of transformers' eager mask, diagonal allowed (None: no mask at all)."""
        from transformers.masking_utils import eager_mask

        kw = self._kwargs
        rows = stop - start
        mask = eager_mask(**{**kw, "q_length": rows, "q_offset": kw.get("q_offset", 0) + start})
        if isinstance(mask, Tensor) and mask.ndim == 4 and kw["q_length"] == kw["kv_length"]:
            mask.diagonal(offset=start, dim1=-2, dim2=-1).zero_()
        return mask

    def full(self) -> Tensor | None:
        """All rows: the eager backend's mask."""
        return self.rows(0, self._kwargs["q_length"])

    def _refuse(self, what: str):
        return TypeError(
            f"the blockwise flow backend hands the model a lazy attention mask, but the model's code {what} "
            f"it before the attention function; {USE_EAGER}."
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):  # protocol probes (copy, pickle): the usual answer
            raise AttributeError(name)
        raise AttributeError(str(self._refuse(f"reads .{name} of")))

    def __getitem__(self, index):
        raise self._refuse("indexes")


def row_mask(**mask_kwargs: Any) -> RowMask:
    """The mask function of the blockwise backend (an ``AttentionMaskInterface`` entry)."""
    return RowMask(mask_kwargs)


def mask_rows(mask: Any) -> Callable[[int, int], Tensor | None]:
    """`(start, stop) -> mask rows` for the mask the attention function received: a `RowMask`, a 4D
    tensor (a model's own mask: its rows are sliced) or None; anything else is refused."""
    if isinstance(mask, RowMask):
        return mask.rows
    if mask is None:
        return lambda start, stop: None
    if isinstance(mask, Tensor) and mask.ndim == 4:
        if mask.shape[-2] == 1:  # broadcast over query rows
            return lambda start, stop: mask
        return lambda start, stop: mask[:, :, start:stop]
    raise TypeError(
        f"the blockwise flow backend got an attention mask of type {type(mask).__name__} "
        f"(shape {tuple(getattr(mask, 'shape', ()))}); it reads 4D float masks and its own lazy mask only; "
        f"{USE_EAGER}."
    )


@dataclass
class BlockwiseLayer:
    """One call of one attention layer: what its blocks need, and where its saliency sums go."""

    eager: Callable[..., tuple[Tensor, Tensor | None]]  # the module's own eager_attention_forward
    module: nn.Module
    mask: Callable[[int, int], Tensor | None]  # `mask_rows` of the layer's mask
    kwargs: dict[str, Any]  # scaling, dropout (0), ...: passed to `eager` unchanged
    block_size: int
    pairs: PairSets
    store: Callable[[Tensor], None]  # receives the layer's [B, 3] pair sums once its backward is done

    def blocks(self, seq: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.block_size, seq)) for s in range(0, seq, self.block_size)]

    def _block_mask(self, start: int, stop: int, seq: int) -> tuple[Tensor | None, int, int]:
        """The mask of query rows start..stop-1 cut to the key columns [a, z) any of them may attend to,
        and a, z. The columns outside are masked with the dtype's minimum: probability exactly 0, A *
        dL/dA exactly 0, no share of dK and dV, so leaving them out changes no number and skips the
        causal upper triangle (and what a sliding window hides). A block with a row that may attend to
        nothing (its softmax spreads over every column) keeps every column."""
        mask = self.mask(start, stop)
        if mask is None or mask.shape[-1] != seq:
            return mask, 0, seq
        allowed = (mask > torch.finfo(mask.dtype).min).flatten(0, -2)  # [B * heads * rows, L]
        cols = allowed.any(0).nonzero()
        if cols.numel() == 0 or not bool(allowed.any(-1).all()):
            return mask, 0, seq
        a, z = int(cols[0]), int(cols[-1]) + 1
        return mask[..., a:z], a, z

    def _attend(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None):
        """(output rows, probabilities) of the block's query rows over its keys and values."""
        out, probs = self.eager(self.module, query, key, value, mask, **self.kwargs)
        if out.shape[1] != query.shape[2]:
            raise RuntimeError(
                f"{type(self.module).__name__}: its eager attention returned an output of shape "
                f"{tuple(out.shape)} for {query.shape[2]} query rows (expected [batch, rows, heads, "
                f"head_dim]); the blockwise flow backend cannot split it by rows; {USE_EAGER}."
            )
        return out, probs

    def output(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """The attention output [B, L, H, D], block by block, no graph kept."""
        seq = key.shape[2]
        parts = []
        with torch.no_grad():
            for s, e in self.blocks(query.shape[2]):
                mask, a, z = self._block_mask(s, e, seq)
                parts.append(self._attend(query[:, :, s:e], key[:, :, a:z], value[:, :, a:z], mask)[0])
        return torch.cat(parts, dim=1)

    def gradients(self, query: Tensor, key: Tensor, value: Tensor, grad_out: Tensor) -> tuple[Tensor, ...]:
        """(dQ, dK, dV) given dL/d(output); the saliency rows of each block are reduced on the way."""
        seq = key.shape[2]
        if seq != self.pairs.seq:
            raise RuntimeError(
                f"flow engine: keys of length {seq} do not match the prompt length {self.pairs.seq} "
                "(a cache or prefix must not be used)"
            )
        d_query = torch.empty_like(query)
        d_key, d_value = torch.zeros_like(key), torch.zeros_like(value)
        sums = []
        for s, e in self.blocks(query.shape[2]):
            mask, a, z = self._block_mask(s, e, seq)
            q = query[:, :, s:e].detach().requires_grad_(True)
            k = key[:, :, a:z].detach().requires_grad_(True)
            v = value[:, :, a:z].detach().requires_grad_(True)
            with torch.enable_grad():
                out, probs = self._attend(q, k, v, mask)
                if probs is None:
                    raise RuntimeError(
                        f"{type(self.module).__name__}: its eager attention returned no probabilities; "
                        f"{USE_EAGER}."
                    )
                dq, dk, dv, d_probs = torch.autograd.grad(out, (q, k, v, probs), grad_out[:, s:e])
            d_query[:, :, s:e] = dq
            d_key[:, :, a:z] += dk
            d_value[:, :, a:z] += dv
            _, sal = saliency(probs.detach(), d_probs)
            sums.append(self.pairs.sums(sal, s, a))
        self.store(torch.stack(sums).sum(0))
        return d_query, d_key, d_value


class BlockwiseAttention(torch.autograd.Function):
    """Attention output of `layer` with its blockwise backward (saves q, k, v; no probabilities)."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, layer: BlockwiseLayer) -> Tensor:
        ctx.save_for_backward(query, key, value)
        ctx.layer = layer
        return layer.output(query, key, value)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        query, key, value = ctx.saved_tensors
        return (*ctx.layer.gradients(query, key, value, grad_out), None)
