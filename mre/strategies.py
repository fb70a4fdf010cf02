"""Strategy factories that need code, not just config: FSDP wrapping each decoder layer.

The decoder-layer class differs per architecture (LlamaDecoderLayer, Qwen2DecoderLayer,
GPT2Block, ...) and is unknown when the config is written, so the wrap policy recognises the
layers by class name. The same policy drives activation checkpointing.
"""

from __future__ import annotations

import functools
import re

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

LAYER_CLASS = re.compile(r"(DecoderLayer|Block|EncoderLayer)$")


def is_transformer_layer(module: torch.nn.Module) -> bool:
    """True for one transformer block of any Hugging Face architecture."""
    return bool(LAYER_CLASS.search(type(module).__name__))


def fsdp_strategy(
    sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = True, **kwargs
) -> FSDPStrategy:
    """FSDP with one unit per transformer layer, optionally activation checkpointing the same units."""
    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=is_transformer_layer)
    return FSDPStrategy(
        auto_wrap_policy=policy,
        activation_checkpointing_policy=policy if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type="full",
        **kwargs,
    )
