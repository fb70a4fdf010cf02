"""Switching a Hugging Face model to one of the project's attention implementations, and the pieces
those implementations share: the module's own eager attention and the eager mask where every position
may attend to itself.

The flow engine (`mre.flow.engine`) and the attention knockout (`mre.flow.knockout`) both register an
attention function in transformers' `AttentionInterface` and run a model under it; `switched` is the
one switch both use, so the model's attention implementation and train/eval flags are restored the
same way (also on exceptions).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from mre.flow.blockwise import row_mask

EAGER_HELP = (
    "attention-saliency flow needs eager attention (the attention probabilities and their gradient); "
    "it runs a Hugging Face causal LM through transformers' AttentionInterface"
)

_EAGER_CACHE: dict[type, Any] = {}


def eager_attention_for(module: nn.Module):
    """The eager attention function of the module's own modeling file (what ``"eager"`` would run), so
    model-specific details such as GPT-2's default scaling stay exact."""
    cls = type(module)
    fn = _EAGER_CACHE.get(cls)
    if fn is None:
        for klass in cls.__mro__:
            fn = getattr(sys.modules.get(klass.__module__), "eager_attention_forward", None)
            if callable(fn):
                break
        if not callable(fn):
            raise RuntimeError(
                f"{EAGER_HELP}, but no `eager_attention_forward` was found for {cls.__name__} "
                f"(module {cls.__module__})."
            )
        _EAGER_CACHE[cls] = fn
    return fn


def self_attending_mask(**kwargs: Any) -> Tensor | None:
    """The eager 4D float mask, with every position allowed to attend to itself.

    Real rows are unchanged (the causal diagonal is always allowed); a left-padding row would otherwise be
    fully masked, and with a float64 model the eager softmax (computed in float32) turns the float64
    minimum into -inf and the row into NaN, which then leaks into real rows through 0 * NaN in A @ V.
    """
    return row_mask(**kwargs).full()


def hf_model(model: nn.Module):
    """The transformers `PreTrainedModel` inside `model` (itself, or the one a PEFT wrapper holds)."""
    from transformers import PreTrainedModel

    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            return m
    raise RuntimeError(f"{EAGER_HELP}; {type(model).__name__} contains no transformers PreTrainedModel.")


def _all_configs(model: nn.Module) -> list:
    """Every config whose attention implementation the switch may touch (sub-configs included)."""
    from transformers import PreTrainedModel

    seen: dict[int, Any] = {}
    todo = [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in seen:
            continue
        seen[id(cfg)] = cfg
        for key in getattr(cfg, "sub_configs", {}) or {}:
            todo.append(getattr(cfg, key, None))
    return list(seen.values())


@contextlib.contextmanager
def switched(model: nn.Module, implementation: str) -> Iterator[None]:
    """`model` in eval mode with the registered attention `implementation`; its attention
    implementations (every config's, sub-configs included) and every module's `training` flag are
    restored exactly afterwards."""
    hf = hf_model(model)
    attn_before = [(c, c._attn_implementation_internal) for c in _all_configs(model)]
    modes_before = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        try:
            hf.set_attn_implementation(implementation)
        except (ValueError, ImportError, KeyError, AttributeError) as e:
            raise RuntimeError(f"{EAGER_HELP}; switching {type(hf).__name__} failed: {e}") from e
        if hf.config._attn_implementation != implementation:
            raise RuntimeError(
                f"{EAGER_HELP}, but {type(hf).__name__} does not let its attention implementation be "
                f"switched (it stays {hf.config._attn_implementation!r}); load a model whose attention "
                "dispatches through AttentionInterface (attn_implementation='eager' must be supported)."
            )
        yield
    finally:
        for c, impl in attn_before:
            c._attn_implementation_internal = impl
        for m, mode in modes_before:
            m.training = mode
