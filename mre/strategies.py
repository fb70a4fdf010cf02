"""Strategy code that config alone cannot say: FSDP wrapping each decoder layer, and an orderly end
of a process group.

The decoder-layer class differs per architecture (LlamaDecoderLayer, Qwen2DecoderLayer,
GPT2Block, ...) and is unknown when the config is written, so the wrap policy recognises the
layers by class name. The same policy drives activation checkpointing.
"""

from __future__ import annotations

import functools
import re

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
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


def end_process_group(strategy: Strategy) -> None:
    """Ends this process's process group in order: all ranks meet at a barrier, then each destroys
    its own group (a no-op outside distributed runs).

    Lightning destroys only NCCL groups (at exit) and leaves a gloo group to interpreter shutdown,
    where gloo's worker threads can abort a rank whose work was done ("terminate called without an
    active exception", SIGABRT; pytorch/pytorch#190489) while rank 0 is still busy."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        strategy.barrier("mre-end-process-group")
        torch.distributed.destroy_process_group()


class EndSpawnedProcessGroup(L.Callback):
    """`end_process_group` at the end of each stage of a spawned worker (`ddp_spawn`): the worker
    runs that one stage and exits, a rank other than 0 at once, while rank 0 still sends its results
    back. A process that runs both stages itself ends its group when the run is over (`mre.runner`):
    the export after `test` may still need it (FSDP gathers the full weights)."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            end_process_group(trainer.strategy)
