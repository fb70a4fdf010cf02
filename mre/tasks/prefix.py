"""One forward pass over a batch whose prompts all begin alike, computing the shared beginning once.

Every prompt of a run starts with the same tokens: the chat template's system turn and the task
instruction with its label codes (86 of SmolLM2's 128-token SNIPS TLI prompts, 114 of 138 on SLURP;
`bench/prefix_sharing.py`). A plain
forward computes them once per sample. Here the batch's common prefix runs once ([1, P], with its
key/value cache kept in the autograd graph), its cache is repeated over the batch, and only the rest
of each sequence runs ([B, S]). The result is the same function of the weights, to float rounding,
so the loss, its gradient and the code scores equal those of a plain forward (the test holds them to
it); what differs is dropout in training mode, whose mask on the prefix is then shared by the batch.

Batches are left-padded with explicit `position_ids` (`mre.data.batches`): row i's real tokens are
right-aligned, its prefix sits at columns [pad_i, pad_i + P). The suffix window is the last S columns
(S = the longest row's length minus P); in a shorter row the window's first columns still hold the
end of its own prefix (or padding), so they are masked out as keys; their outputs are never read
because `logits_to_keep` positions lie after every row's prefix.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache, PreTrainedModel

from mre.flow.attention import hf_model

MIN_PREFIX = 8  # not measured: a prefix this short saves little against a second call's overhead


def common_prefix_length(ids: torch.Tensor, mask: torch.Tensor, keep: int) -> int:
    """How many tokens every row begins with after its left padding, at most the shortest row's length
    minus `keep` (the positions whose logits are read must lie after the prefix in every row)."""
    lengths = mask.sum(1)
    limit = int(lengths.min()) - keep
    if limit <= 0:
        return 0
    starts = (ids.shape[1] - lengths).unsqueeze(1)
    aligned = ids.gather(1, starts + torch.arange(limit, device=ids.device).unsqueeze(0))
    same = (aligned == aligned[:1]).all(0)
    return int(same.int().cumprod(0).sum())


def can_share(model: PreTrainedModel, ids: torch.Tensor) -> bool:
    """Sharing needs a key/value cache that autograd can pass through: not with activation
    checkpointing (transformers turns the cache off there), and only within a sliding attention
    window, where the window counts columns and the two layouts place the prefix at different column
    distances. `model` is the transformers model (`hf_model` of a peft wrapper)."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.2x
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    window = getattr(model.config, "sliding_window", None)
    return not checkpointing and ids.shape[0] > 1 and (window is None or ids.shape[1] < window)


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """transformers renamed the forward's `past_key_values` to `cache` (the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def causal_lm_logits(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    keep: int,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Logits of the last `keep` positions of a left-padded batch [B, keep, vocab], computing the
    batch's common prompt prefix once when `share_prefix` and it is long enough to pay."""
    base = hf_model(model)
    prefix = common_prefix_length(ids, mask, keep) if share_prefix and can_share(base, ids) else 0
    if prefix < MIN_PREFIX:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    lengths = mask.sum(1)
    first = int(ids.shape[1] - lengths[0])  # row 0's first real token
    cache = DynamicCache(config=base.config)
    keyword = _cache_keyword(type(base))
    model(
        input_ids=ids[:1, first : first + prefix],
        attention_mask=mask[:1, first : first + prefix],
        position_ids=positions[:1, first : first + prefix],
        use_cache=True,
        logits_to_keep=1,
        **{keyword: cache},
    )
    cache.batch_repeat_interleave(ids.shape[0])
    start = ids.shape[1] - (int(lengths.max()) - prefix)
    columns = torch.arange(start, ids.shape[1], device=ids.device).unsqueeze(0)
    own = columns >= (ids.shape[1] - lengths + prefix).unsqueeze(1)  # after this row's prefix
    window_mask = torch.cat([mask.new_ones(ids.shape[0], prefix), own.to(mask.dtype)], dim=1)
    return model(
        input_ids=ids[:, start:],
        attention_mask=window_mask,
        position_ids=positions[:, start:],
        logits_to_keep=keep,
        **{keyword: cache},
    ).logits
