"""What a new run does with a run directory that already holds a run: a study launched again with the
same `hydra.sweep.dir` lands every job in the directory it used before.

By default a directory holding a finished run (`metrics.json`) or one with a whole checkpoint is
refused: nothing already done is overwritten. With `continue_existing=true` each job carries on
instead, provided the saved configuration is the one asked for: a finished run is skipped (its test
metrics are returned as they are), a run with a checkpoint continues from its newest whole one, and a
run that died before its first checkpoint starts over. An interrupted study therefore continues where
it stopped when its command is run again.

The saved configuration survives the new launch because Hydra then writes its own copy of the config
beside it, in `.hydra/rerun-<time>/` (`mre.config.output_subdir`), not over it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mre.checkpoints import checkpoint_step, newest_readable
from mre.config import RunConfigError, load_run_config
from mre.errors import ConfigError
from mre.loggers import truncate_after
from mre.rundir import CHECKPOINTS, CSV_METRICS, METRICS, RunDirError, previous_wandb_id

log = logging.getLogger(__name__)

# options that say how to start, not what the run is: they may differ between launches
_LAUNCH_KEYS = ("continue_existing", "ckpt_path", "resume")


@dataclass(frozen=True)
class PriorRun:
    """What a run directory already holds: a finished run's metrics, or its newest whole checkpoint."""

    run_dir: Path
    metrics: dict[str, float] | None
    checkpoint: Path | None

    def describe(self) -> str:
        if self.metrics is not None:
            return f"a finished run ({self.run_dir / METRICS})"
        assert self.checkpoint is not None
        return f"a run with a checkpoint at step {checkpoint_step(self.checkpoint)} ({self.checkpoint})"


def prior_run(run_dir: Path) -> PriorRun | None:
    """The finished or checkpointed run in `run_dir`, None when there is nothing to keep."""
    metrics_file = run_dir / METRICS
    if metrics_file.exists():
        try:
            metrics = {str(k): float(v) for k, v in json.loads(metrics_file.read_text()).items()}
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{metrics_file} cannot be read as a run's test metrics ({e})") from e
        return PriorRun(run_dir, metrics, None)
    ckpt = newest_readable(run_dir / CHECKPOINTS)
    return PriorRun(run_dir, None, ckpt) if ckpt is not None else None


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_differences(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """The dotted keys whose resolved values differ between two run configs (launch options aside)."""
    a, b = (_flat(OmegaConf.to_container(c, resolve=True, enum_to_str=True)) for c in (saved, cfg))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in keys if k.split(".")[0] not in _LAUNCH_KEYS]


def _value(cfg: DictConfig, key: str) -> str:
    v = OmegaConf.select(cfg, key, default="(absent)")
    return repr(getattr(v, "value", v))  # an enum as its value


def _check_same_config(prior: PriorRun, cfg: DictConfig) -> None:
    try:
        saved = load_run_config(prior.run_dir)
    except (RunDirError, RunConfigError) as e:
        raise ConfigError(f"continue_existing=true: cannot read the saved configuration: {e}") from e
    differences = config_differences(saved, cfg)
    if differences:
        shown = ", ".join(f"{k}: {_value(saved, k)} there, {_value(cfg, k)} now" for k in differences[:5])
        more = f" and {len(differences) - 5} more" if len(differences) > 5 else ""
        raise ConfigError(
            f"{prior.run_dir} holds {prior.describe()} of another configuration ({shown}{more}); "
            "continue_existing=true carries on only the same configuration: launch it into a new directory"
        )


def settle_prior_run(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, float] | None]:
    """A new run's configuration given what `run_dir` already holds, and the finished run's metrics when
    there is nothing left to do. Refuses a directory with a run to keep unless `continue_existing`."""
    prior = prior_run(run_dir)
    if prior is None:
        dropped = truncate_after(run_dir / CSV_METRICS, -1)  # a run that died before its first checkpoint
        if dropped:
            log.info("%s: %d rows of an unfinished earlier run dropped", run_dir / CSV_METRICS, dropped)
        return cfg, None
    if not cfg.continue_existing:
        raise ConfigError(
            f"{run_dir} already holds {prior.describe()}; continue_existing=true skips a finished run and "
            "continues one from its checkpoint (same configuration only), or launch into a new directory "
            "(hydra.run.dir=..., hydra.sweep.dir=...)"
        )
    _check_same_config(prior, cfg)
    if prior.metrics is not None:
        log.info("%s finished earlier: skipped (continue_existing=true)", run_dir)
        return cfg, prior.metrics
    assert prior.checkpoint is not None
    log.info("%s: continuing from %s (continue_existing=true)", run_dir, prior.checkpoint)
    with open_dict(cfg):
        cfg.ckpt_path = str(prior.checkpoint)
    continue_wandb_run(cfg, run_dir)
    return cfg, None


def continue_wandb_run(cfg: DictConfig, run_dir: Path) -> None:
    """A continued run logs to the W&B run it logged to before, not to a new one."""
    wandb = cfg.logger.get("wandb")
    if wandb is not None and (wandb_id := previous_wandb_id(run_dir)):
        with open_dict(wandb):
            wandb.id, wandb.resume = wandb_id, "allow"
