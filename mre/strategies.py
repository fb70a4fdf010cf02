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
from lightning.pytorch.strategies import FSDPStrategy
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


class EndProcessGroup(L.Callback):
    """Ends the process group in order once a process's last stage is over: all ranks meet at a
    barrier, then each destroys its own group.

    Lightning destroys only NCCL groups (at exit) and leaves a gloo group to interpreter shutdown.
    In `ddp_spawn` a rank other than 0 exits as soon as its stage ends, while rank 0 still sends its
    results back; gloo's worker threads, torn down during interpreter finalization, can then abort
    it ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489) and fail
    a run whose work was done. A spawned worker runs one stage;
    any other process runs `fit` and then `test`, so its last stage is `test`."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return
        spawned = isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
        if spawned or stage == "test":
            trainer.strategy.barrier("mre-end-process-group")
            torch.distributed.destroy_process_group()
