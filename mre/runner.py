"""The one training pipeline of every task: build the task's parts, make the trainer, fit, test and
write the run directory (`metrics.json`, `predictions.jsonl`, `model/`; see `mre.rundir`).

This is the only place that calls `trainer.fit` and `trainer.test`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mre.models import check_model_config
from mre.results import print_metrics, write_metrics
from mre.rundir import LAST_CKPT, METRICS, MODEL
from mre.tasks import build_task

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers); null entries are off."""
    return [hydra.utils.instantiate(v) for v in (group or {}).values() if v is not None and "_target_" in v]


def resolve_ckpt(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means this run directory's last checkpoint (resume a killed run in place)."""
    if ckpt_path != "last":
        return ckpt_path
    last = run_dir / LAST_CKPT
    if not last.exists():
        raise FileNotFoundError(
            f"ckpt_path=last but {last} does not exist; resume a run in its own directory: "
            "python train.py hydra.run.dir=<that run's directory> ckpt_path=last"
        )
    return str(last)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat test metrics written to metrics.json."""
    check_model_config(cfg.model)
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    parts = build_task(cfg, run_dir)
    callbacks = [*instantiate_all(cfg.callbacks), *parts.callbacks]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_all(cfg.logger), callbacks=callbacks
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    ckpt = resolve_ckpt(cfg.ckpt_path, run_dir)
    module, dm = parts.module, parts.datamodule
    if cfg.fit:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        best = next((c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), "")
        ckpt = best or None
    trainer.test(module, datamodule=dm, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}
    if trainer.is_global_zero:
        write_metrics(run_dir / METRICS, metrics)
        if module.model is not None:  # None in the parent of ddp_spawn workers
            module.export(run_dir / MODEL)
        print_metrics(metrics, parts.title, run_dir)
    return metrics
