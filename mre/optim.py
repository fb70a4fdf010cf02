"""The optimizer every task uses: AdamW over the trainable parameters with linear warm-up and decay."""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig
from transformers import get_linear_schedule_with_warmup


def adamw_with_warmup(module: L.LightningModule, optim_cfg: DictConfig) -> dict:
    """`configure_optimizers` result; parameters come from `trainer.model` so sharded strategies work."""
    params = [p for p in module.trainer.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, betas=tuple(optim_cfg.betas)
    )
    total = max(1, int(module.trainer.estimated_stepping_batches))
    sched = get_linear_schedule_with_warmup(opt, min(optim_cfg.warmup_steps, total), total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
