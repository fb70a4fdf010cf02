"""The one training pipeline of every task: check the configuration, build the task's parts, make the
trainer, fit, test and write the run directory (`metrics.json`, `predictions.jsonl`, `model/`; see
`mre.rundir`). A run resumes in place from its directory alone (`resume=<run dir>`).

This is the only place that calls `trainer.fit` and `trainer.test`.
"""

from __future__ import annotations

import logging
import shutil
import signal
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from mre.checkpoints import AtomicCheckpointIO, RandomState, checkpoint_step, newest_readable
from mre.config import RunConfigError, load_run_config
from mre.ending import Ending, EndingRecorder, NonFiniteLossError, Reason, SignalRecorder
from mre.errors import ConfigError, RunInterrupted, UserError, signal_name
from mre.loggers import truncate_after
from mre.models import check_model_config
from mre.prior_run import continue_wandb_run, settle_prior_run
from mre.results import print_metrics, write_metrics
from mre.rundir import (
    CHECKPOINTS,
    CONFIG,
    CSV_METRICS,
    ENDING,
    METRICS,
    MODEL,
    RunDirError,
    resolve_run_dir,
)
from mre.runlock import RunLockedError, run_dir_lock
from mre.stopping import EarlyStopFloor
from mre.strategies import EndSpawnedProcessGroup, end_process_group
from mre.tasks import build_task

log = logging.getLogger(__name__)


class ResumeError(UserError, RuntimeError):
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
    continue_wandb_run(saved, run_dir)
    return saved


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
            raise ConfigError(f"trainer.{key}={value!r} does not fit the Trainer: expected {hints[key]}")
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
    callbacks = [
        *instantiate_all(cfg.callbacks),
        *task_callbacks,
        RandomState(),
        EndSpawnedProcessGroup(),
        EarlyStopFloor(),  # after the stoppers: takes back a stop decided before trainer.min_epochs
    ]
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
    step = checkpoint_step(ckpt)
    dropped = truncate_after(run_dir / CSV_METRICS, step)
    if dropped:
        log.info("%s: %d rows after step %d dropped (logged again)", run_dir / CSV_METRICS, dropped, step)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one configuration; returns the flat test metrics written to metrics.json. The run
    directory is locked for the whole run: a second writer (a resume started twice) is refused."""
    if not cfg.get("resume"):
        check_config(cfg)  # before anything is written
    run_dir = _run_dir_of(cfg)
    try:
        with run_dir_lock(run_dir):
            cfg, finished = _settle(cfg, run_dir)
            return finished if finished is not None else _run(cfg)
    except RunLockedError:
        _forget_refused_launch(run_dir)
        raise


def _settle(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, float] | None]:
    """Under the lock (another process may have just finished the run): the configuration to run, from
    the resumed run's directory or given what the directory already holds; a refusal leaves no trace."""
    try:
        if cfg.get("resume"):
            cfg = resume_config(cfg)
            check_config(cfg)
            return cfg, None
        return settle_prior_run(cfg, run_dir)
    except UserError:
        _forget_refused_launch(run_dir)
        raise


def _run_dir_of(cfg: DictConfig) -> Path:
    if not cfg.get("resume"):
        return Path(cfg.paths.output_dir)
    try:
        return resolve_run_dir(cfg.resume).resolve()
    except RunDirError as e:
        raise ResumeError(f"cannot resume: {e}") from e


def _forget_refused_launch(run_dir: Path) -> None:
    """A refused resume or relaunch leaves no trace in the run it was refused: Hydra already wrote
    this process's copy of the config (`.hydra/resumed-<time>`, `.hydra/rerun-<time>`) there."""
    if HydraConfig.initialized():
        mine = run_dir / HydraConfig.get().output_subdir
        if mine.name.startswith(("resumed-", "rerun-")) and mine.is_dir():
            shutil.rmtree(mine, ignore_errors=True)


def check_config(cfg: DictConfig) -> None:
    """The model and trainer options, checked before any data or model work."""
    check_model_config(OmegaConf.to_object(cfg.model))
    check_trainer(cfg)


def _run(cfg: DictConfig) -> dict[str, float]:
    run_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, run_dir)
    ckpt = resolve_ckpt(cfg.ckpt_path, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    parts = build_task(cfg, run_dir)
    if cfg.fit:
        _continue_logs(run_dir, ckpt)
    signals = SignalRecorder()
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=instantiate_all(cfg.logger),
        callbacks=[*_callbacks(cfg, parts.callbacks), signals, EndingRecorder(run_dir / ENDING)],
        plugins=_plugins(cfg),
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    module, dm = parts.module, parts.datamodule
    with _reporting_interruptions(trainer, signals, run_dir):
        if cfg.fit:
            _fit(trainer, module, dm, ckpt, run_dir)
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


def _fit(
    trainer: L.Trainer, module: L.LightningModule, dm: L.LightningDataModule, ckpt: str | None, run_dir: Path
) -> None:
    """`trainer.fit`, then say in the log why training stopped, as the process that trained wrote it to
    `ending.json` (`EndingRecorder`: the budget, early stopping or a non-finite loss)."""
    if trainer.is_global_zero:
        (run_dir / ENDING).unlink(missing_ok=True)  # an earlier attempt's, on a resume
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    except NonFiniteLossError as e:
        log.info("%s", e)  # as the other endings; the entry point prints it as the error
        raise
    if trainer.is_global_zero:
        log.info("%s", Ending.read(run_dir / ENDING).detail)


def _record(trainer: L.Trainer, run_dir: Path, ending: Ending) -> None:
    if trainer.is_global_zero:
        ending.write(run_dir / ENDING)
        (log.warning if ending.reason is Reason.interrupted else log.info)("%s", ending.detail)


@contextmanager
def _reporting_interruptions(trainer: L.Trainer, signals: SignalRecorder, run_dir: Path) -> Iterator[None]:
    """Lightning ends a loop stopped by SIGTERM with `SystemExit()` (status 0) and one stopped by
    Ctrl+C with `SystemExit(1)`, saying nothing of how to go on: say it, and raise `RunInterrupted`
    (the entry point exits 128 + the signal number)."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        if signals.signum is None:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores a second Ctrl+C
        ending = _interruption(trainer, signals.signum, run_dir)
        _record(trainer, run_dir, ending)
        raise RunInterrupted(signals.signum, ending.detail) from None


def _interruption(trainer: L.Trainer, signum: int, run_dir: Path) -> Ending:
    ckpt = newest_readable(run_dir / CHECKPOINTS)
    if ckpt is None:
        go_on = "no checkpoint was written yet: start the run again"
    else:
        step = checkpoint_step(ckpt)
        go_on = f"continue with: python train.py resume={run_dir} (from {ckpt.name}, step {step})"
    epoch, step = trainer.current_epoch, trainer.global_step
    detail = f"interrupted by {signal_name(signum)} at epoch {epoch}, step {step}; {go_on}"
    return Ending(Reason.interrupted, epoch, step, detail)
