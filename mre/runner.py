"""The one training pipeline of every task: check the configuration, build the task's parts, make the
trainer, fit, test and write the run directory (`metrics.json`, `predictions.jsonl`, `model/`; see
`mre.rundir`). A run resumes in place from its directory alone (`resume=<run dir>`).

This is the only place that calls `trainer.fit` and `trainer.test`.
"""

from __future__ import annotations

import logging
import types
import typing
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from mre.checkpoints import AtomicCheckpointIO, RandomState, newest_readable
from mre.config import RunConfigError, load_run_config
from mre.loggers import truncate_after
from mre.models import check_model_config
from mre.results import print_metrics, write_metrics
from mre.rundir import CHECKPOINTS, CONFIG, CSV_METRICS, METRICS, MODEL, RunDirError, resolve_run_dir
from mre.strategies import EndSpawnedProcessGroup, end_process_group
from mre.tasks import build_task

log = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """A run cannot be resumed (with what to do instead)."""


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers); null entries are off."""
    return [hydra.utils.instantiate(v) for v in (group or {}).values() if v is not None and "_target_" in v]


def _command_line_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resume_config(cfg: DictConfig) -> DictConfig:
    """The saved configuration of the run directory `cfg.resume`, set to continue from its newest
    whole checkpoint. Other command-line overrides are refused: they would be silently ignored."""
    try:
        run_dir = resolve_run_dir(cfg.resume).resolve()
        saved = load_run_config(run_dir)
    except (RunDirError, RunConfigError) as e:
        raise ResumeError(f"cannot resume: {e}") from e
    others = [o for o in _command_line_overrides() if not o.startswith("resume=")]
    if others:
        raise ResumeError(
            f"resume={run_dir} continues that run with its own configuration ({run_dir / CONFIG}); these "
            f"overrides would be ignored: {others}. To change settings, start a new run with "
            "ckpt_path=<one of its checkpoints>"
        )
    if (run_dir / METRICS).exists():
        raise ResumeError(f"{run_dir} already finished ({run_dir / METRICS} exists): nothing to resume")
    ckpt = newest_readable(run_dir / CHECKPOINTS)
    if ckpt is None:
        raise ResumeError(
            f"{run_dir} has no whole checkpoint in {run_dir / CHECKPOINTS}: it stopped before its first "
            "one; start it again with the overrides in .hydra/overrides.yaml"
        )
    log.info("resuming %s from %s", run_dir, ckpt)
    with open_dict(saved):
        saved.ckpt_path, saved.resume = str(ckpt), str(run_dir)
        wandb = saved.logger.get("wandb")
        if wandb is not None and (wandb_id := previous_wandb_id(run_dir)):
            wandb.id, wandb.resume = wandb_id, "allow"  # the same W&B run continues
    return saved


def previous_wandb_id(run_dir: Path) -> str | None:
    """The id of the W&B run a run directory logged to (`wandb/[offline-]run-<time>-<id>`)."""
    runs = sorted((run_dir / "wandb").glob("*run-*-*"))
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def save_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    """Replace Hydra's copy of the config with the resolved one: the run's paths, root and every
    interpolated value as they were, so other tools read the run from any directory or session."""
    path = run_dir / CONFIG
    if HydraConfig.initialized() and path.exists() and not cfg.get("resume"):
        OmegaConf.save(cfg, path, resolve=True)


def resolve_ckpt(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means this run directory's newest whole checkpoint."""
    if ckpt_path != "last":
        return ckpt_path
    ckpt = newest_readable(run_dir / CHECKPOINTS)
    if ckpt is None:
        raise ResumeError(
            f"ckpt_path=last but {run_dir / CHECKPOINTS} holds no whole checkpoint; resume a run from its "
            "directory: python train.py resume=<that run's directory>"
        )
    return str(ckpt)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value fits a Trainer argument's type hint (types it cannot tell pass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    return True  # containers, objects (accelerators, strategies, timedelta): left to Lightning


def check_trainer(cfg: DictConfig) -> None:
    """Fail on a bad trainer option (`trainer.max_epochs=abc`, an absent GPU) before any data or model
    work: each value against the Trainer's own type hints, then a throw-away trainer made quietly."""
    hints = typing.get_type_hints(L.Trainer.__init__)
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key, value in options.items():
        if key in hints and not isinstance(value, dict) and not _fits(value, hints[key]):
            raise TypeError(f"trainer.{key}={value!r} does not fit the Trainer: expected {hints[key]}")
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    finally:
        quiet.setLevel(level)


def _plugins(cfg: DictConfig) -> list[Any]:
    """Atomic checkpoint files, where the strategy writes them through a CheckpointIO (not DeepSpeed's
    or FSDP's own sharded writers, configured as `_target_` strategies)."""
    return [AtomicCheckpointIO()] if isinstance(cfg.trainer.get("strategy", "auto"), str) else []


def _callbacks(cfg: DictConfig, task_callbacks: list[L.Callback]) -> list[L.Callback]:
    callbacks = [*instantiate_all(cfg.callbacks), *task_callbacks, RandomState(), EndSpawnedProcessGroup()]
    if not cfg.trainer.get("enable_progress_bar", True):  # a progress bar callback would contradict it
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    """The checkpoint the test runs on: the best by the monitored metric (None: the current weights)."""
    monitored = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    return (monitored[0].best_model_path or None) if monitored else None


def _continue_logs(run_dir: Path, ckpt: str | None) -> None:
    """Cut what a killed run logged after its checkpoint: it is logged again from there."""
    if ckpt is None or not (run_dir / CSV_METRICS).exists():
        return
    step = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"]
    dropped = truncate_after(run_dir / CSV_METRICS, step)
    if dropped:
        log.info("%s: %d rows after step %d dropped (logged again)", run_dir / CSV_METRICS, dropped, step)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat test metrics written to metrics.json."""
    if cfg.get("resume"):
        cfg = resume_config(cfg)
    check_model_config(OmegaConf.to_object(cfg.model))
    check_trainer(cfg)
    run_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, run_dir)
    ckpt = resolve_ckpt(cfg.ckpt_path, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    parts = build_task(cfg, run_dir)
    if cfg.fit:
        _continue_logs(run_dir, ckpt)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=instantiate_all(cfg.logger),
        callbacks=_callbacks(cfg, parts.callbacks),
        plugins=_plugins(cfg),
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    module, dm = parts.module, parts.datamodule
    if cfg.fit:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        ckpt = _best_checkpoint(trainer)
    trainer.test(module, datamodule=dm, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}
    if trainer.is_global_zero:
        write_metrics(run_dir / METRICS, metrics)
        if module.model is not None:  # None in the parent of ddp_spawn workers
            module.export(run_dir / MODEL)
        print_metrics(metrics, parts.title, run_dir)
    end_process_group(trainer.strategy)
    return metrics
