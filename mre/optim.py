"""The optimizer every task uses: AdamW over the trainable parameters with linear warm-up and decay.

The schedule is written here (a `LambdaLR`), not taken from transformers: importing
`transformers.get_linear_schedule_with_warmup` pulls in its Trainer utilities, peft and bitsandbytes.
"""

from __future__ import annotations

import functools

import lightning as L
import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """Factor of the base learning rate: 0 -> 1 over `warmup` steps, then linearly to 0 at `total`."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def adamw_with_warmup(module: L.LightningModule, optim_cfg: DictConfig) -> dict:
    """`configure_optimizers` result; parameters come from `trainer.model` so sharded strategies work."""
    params = [p for p in module.trainer.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, betas=tuple(optim_cfg.betas)
    )
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = min(optim_cfg.warmup_steps, total)
    sched = LambdaLR(opt, functools.partial(linear_warmup_decay, warmup=warmup, total=total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
