"""Attention knockout: block chosen attention edges in chosen layers through the attention mask.

The causal test of "Label Words are Anchors" (Wang et al., 2023, Section 2.2) applied to MRE: if the
anchor gathers the text's information in the shallow layers and q reads it from the anchor in the deep
layers, blocking those edges there should hurt more than blocking as many random edges.

Edge sets (i: the attending row, j: the attended column, positions of the left-padded prompt):

* `text_anchor`: i in the anchor P, j in the text T (the anchor cannot read the text);
* `anchor_q`: i = q, j in P (q cannot read the anchor);
* `anchor_after`: i after P up to q, j in P (no later position reads the anchor: q nor the tokens
  between, e.g. a chat template's end of turn and assistant header, which could relay it to q);
* the random control of a set: as many edges per sample, drawn uniformly from the other causal
  pairs j < i <= q of non-pad positions (never the diagonal, so no row is left empty);
* the receiver-matched control of a set: the same rows, each with as many edges as the set blocks in
  it, from sources outside the set's source span (non-anchor sources for `anchor_q` and
  `anchor_after`, non-text sources for `text_anchor`). For `anchor_q` the uniform control almost
  never touches q's row; this one blocks q's reads of as many other tokens, so "q reads the anchor in
  these layers" is told apart from "q reads anything in these layers".

Blocking adds the dtype's minimum to the pre-softmax scores of the blocked edges (the row is
renormalised over the edges left), in the listed layers only, through a custom attention function
registered in transformers' `AttentionInterface` that wraps the module's own eager attention. Only the
prompt pass is touched: in KV-cached generation the later steps (one query row each) run unchanged, so
a knockout changes what the prompt's positions computed, as in the paper.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mre.errors import UserError
from mre.flow.attention import eager_attention_for, self_attending_mask, switched
from mre.flow.options import EdgeSet

KNOCKOUT_ATTN_IMPLEMENTATION = "mre_knockout"


class KnockoutError(UserError, ValueError):
    """A knockout that cannot be run as asked (a bad layer spec, a model without layer indices)."""


def parse_layers(spec: str | int | list, n_layers: int) -> list[int]:
    """`first:k`, `last:k`, `a-b` (inclusive) or a list of layer indices -> sorted layer indices."""
    if isinstance(spec, int) or (isinstance(spec, list | tuple) and all(isinstance(x, int) for x in spec)):
        layers = [spec] if isinstance(spec, int) else list(spec)
    else:
        text = str(spec).strip()
        m = re.fullmatch(r"(first|last):(\d+)", text)
        r = re.fullmatch(r"(\d+)-(\d+)", text)
        if m:
            k = int(m.group(2))
            if not 1 <= k <= n_layers:
                raise KnockoutError(
                    f"knockout layers {text!r}: k must be in 1..{n_layers} (the model's layers)"
                )
            layers = list(range(k)) if m.group(1) == "first" else list(range(n_layers - k, n_layers))
        elif r:
            layers = list(range(int(r.group(1)), int(r.group(2)) + 1))
        else:
            raise KnockoutError(
                f"knockout layers {text!r}: expected first:k, last:k, a-b or a list of layer indices"
            )
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise KnockoutError(f"knockout layers {spec!r}: {bad or 'none'} outside 0..{n_layers - 1}")
    return sorted(set(layers))


def _inside(r: Tensor, x: Tensor) -> Tensor:
    return (x >= r[:, 0].view(-1, 1, 1)) & (x < r[:, 1].view(-1, 1, 1))


def _grid(mask: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row and column positions [1, L, 1], [1, 1, L] and the causal pairs j < i <= q of non-pad
    positions [B, L, L]."""
    bsz, seq = mask.shape
    pos = torch.arange(seq, device=mask.device)
    i, j = pos.view(1, seq, 1), pos.view(1, 1, seq)
    valid = mask.view(bsz, seq, 1) & mask.view(bsz, 1, seq)
    return i, j, (j < i) & (i <= q.view(bsz, 1, 1)) & valid


def edge_masks(
    mask: Tensor, q: Tensor, text_range: Tensor, anchor_range: Tensor
) -> tuple[dict[EdgeSet, Tensor], Tensor]:
    """Per edge set the blocked edges [B, L, L] (bool), and the pool of other causal pairs the random
    controls draw from."""
    bsz = mask.shape[0]
    i, j, causal = _grid(mask, q)
    reads_anchor = causal & _inside(anchor_range, j)
    sets = {
        EdgeSet.text_anchor: causal & _inside(anchor_range, i) & _inside(text_range, j),
        EdgeSet.anchor_q: reads_anchor & (i == q.view(bsz, 1, 1)),
        EdgeSet.anchor_after: reads_anchor & (i >= anchor_range[:, 1].view(-1, 1, 1)),
    }
    pool = causal
    for edges in sets.values():
        pool = pool & ~edges
    return sets, pool


def receiver_pools(
    sets: dict[EdgeSet, Tensor], mask: Tensor, q: Tensor, text_range: Tensor, anchor_range: Tensor
) -> dict[EdgeSet, Tensor]:
    """Per edge set the pairs its receiver-matched control draws from [B, L, L]: the causal pairs of
    the rows the set blocks edges in, from sources outside its source span (the text for
    `text_anchor`, the anchor otherwise)."""
    _, j, causal = _grid(mask, q)
    out = {}
    for name, edges in sets.items():
        span = text_range if name is EdgeSet.text_anchor else anchor_range
        rows = edges.any(-1, keepdim=True)
        out[name] = causal & rows & ~_inside(span, j)
    return out


def receiver_matched_edges(edges: Tensor, pool: Tensor, generator: torch.Generator) -> Tensor:
    """Per sample and row, as many edges as `edges` blocks in that row, drawn uniformly without
    replacement from the row's pairs in `pool` (all of them when there are fewer)."""
    out = torch.zeros_like(pool)
    counts = edges.sum(-1)  # [B, L]
    for b, i in counts.nonzero().tolist():
        cols = pool[b, i].nonzero().squeeze(1)
        n = min(int(counts[b, i]), cols.numel())
        if n:
            out[b, i, cols[torch.randperm(cols.numel(), generator=generator)[:n].to(cols.device)]] = True
    return out


def random_edges(pool: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Per sample, `counts[b]` edges drawn uniformly without replacement from `pool[b]` (all of the
    pool when it is smaller)."""
    out = torch.zeros_like(pool)
    for b in range(pool.shape[0]):
        flat = pool[b].flatten().nonzero().squeeze(1)
        n = min(int(counts[b]), flat.numel())
        if n:
            pick = flat[torch.randperm(flat.numel(), generator=generator)[:n].to(flat.device)]
            out[b].view(-1)[pick] = True
    return out


@dataclass
class _Knockout:
    block: Tensor  # [B, L, L] bool
    layers: frozenset[int]


_ACTIVE: _Knockout | None = None
_LOCK = threading.Lock()


def _layer_of(module: nn.Module) -> int:
    idx = getattr(module, "layer_idx", None)
    if idx is None:
        raise KnockoutError(
            f"attention knockout needs the attention module's layer index, and {type(module).__name__} has "
            "no `layer_idx`"
        )
    return int(idx)


def _knockout_attention(module, query, key, value, attention_mask, **kwargs):
    state = _ACTIVE
    prompt_pass = state is not None and query.shape[-2] == state.block.shape[-1]
    if prompt_pass and _layer_of(module) in state.layers:
        block = state.block[:, None, :, : key.shape[-2]].to(attention_mask.device)
        attention_mask = attention_mask.masked_fill(block, torch.finfo(attention_mask.dtype).min)
    return eager_attention_for(module)(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(KNOCKOUT_ATTN_IMPLEMENTATION, _knockout_attention)
    AttentionMaskInterface.register(KNOCKOUT_ATTN_IMPLEMENTATION, self_attending_mask)


_register()


@contextlib.contextmanager
def knockout(model: nn.Module, block: Tensor | None, layers: list[int]) -> Iterator[None]:
    """Run `model` (eval mode, eager attention) with the `block` edges [B, L, L] masked in `layers`
    (None: no edge blocked, the same attention path: the baseline of a comparison). The attention
    implementation and train/eval flags are restored afterwards (`mre.flow.attention.switched`)."""
    global _ACTIVE
    with _LOCK, switched(model, KNOCKOUT_ATTN_IMPLEMENTATION):
        try:
            if block is not None:
                _ACTIVE = _Knockout(block.bool(), frozenset(layers))
            yield
        finally:
            _ACTIVE = None
