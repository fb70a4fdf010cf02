"""One training run from a composed config: data, model, trainer, fit, test, and the run directory
(`metrics.json`, `predictions.jsonl`, `model/`, checkpoints, CSV and W&B logs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mre.cli import make_datamodule
from mre.data.datamodule import MREDataModule
from mre.models import save_for_tools
from mre.results import print_metrics, write_metrics
from mre.tasks.generative import GenerativeMRE

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers); null entries are off."""
    return [hydra.utils.instantiate(v) for v in (group or {}).values() if v is not None and "_target_" in v]


def resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means this run directory's last checkpoint (resume a killed run in place)."""
    if ckpt_path != "last":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        raise FileNotFoundError(
            f"ckpt_path=last but {last} does not exist; resume a run in its own directory: "
            "python train.py hydra.run.dir=<that run's directory> ckpt_path=last"
        )
    return str(last)


def build_generative(cfg: DictConfig, dm: MREDataModule, output_dir: Path) -> GenerativeMRE:
    dm.setup()
    wli_types = sorted({p.type for r in dm.records("train") for p in r.wli})
    return GenerativeMRE(
        model_cfg=cfg.model,
        optim_cfg=cfg.optim,
        tokenizer=dm.tokenizer,
        builder=dm.builder,
        wli_types=wli_types,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=cfg.seed,
        cache_dir=cfg.paths.cache_dir,
        predictions_path=output_dir / "predictions.jsonl",
    )


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat test metrics written to metrics.json."""
    if cfg.task == "fewshot":
        from mre.fewshot.run import run_fewshot

        return run_fewshot(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    dm = make_datamodule(cfg)
    module = build_generative(cfg, dm, output_dir)
    callbacks = instantiate_all(cfg.callbacks)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_all(cfg.logger), callbacks=callbacks
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt = resolve_ckpt(cfg.ckpt_path, output_dir)
    if cfg.fit:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        ckpt = (
            next((c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), "") or None
        )
    trainer.test(module, datamodule=dm, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", metrics)
        if module.model is not None:  # None in the parent of ddp_spawn workers
            save_for_tools(module.model, dm.tokenizer, output_dir / "model")
        print_metrics(
            metrics, f"{cfg.dataset.name} | {cfg.direction.name} | anchor={cfg.with_anchor}", output_dir
        )
    return metrics
