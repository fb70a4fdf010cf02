"""Loggers: a CSV logger whose file survives a resumed run, a W&B logger without a deprecated argument,
and the quieting of dependencies' advertising and deprecation noise in a run's output.

Lightning's CSV writer deletes an existing `metrics.csv` when a new process opens the folder (a run
resumed in place, or the test stage of `ddp_spawn` after fit) and only knows the columns it wrote
itself. This one keeps the file and its columns, so the history of a resumed run is whole; the rows
a killed run wrote after its last checkpoint are cut by `truncate_after` before the run continues
(they are logged again, from the checkpoint on).
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

# the loggers through which Lightning's `rank_zero_info` prints (the pytorch one replaces the fabric one)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer, minus the deletion; the file's own header joins the known columns at every
    save (another process may have written the file since: the test stage of `ddp_spawn`, a resume)."""

    def _check_log_dir_exists(self) -> None:
        """Keep an existing file (Lightning deletes it here)."""

    def _record_new_keys(self) -> set[str]:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` that appends to the metrics.csv of an earlier process."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def truncate_after(path: Path, step: int) -> int:
    """Drop the rows of `path` logged after optimizer step `step` (a resumed run logs them again);
    returns how many were dropped."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= step]
    if len(kept) < len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, path)
    return len(rows) - len(kept)


class WandbLogger(_WandbLogger):
    """`lightning.pytorch.loggers.WandbLogger` that leaves out `anonymous` when it is not asked for.

    Lightning always passes `anonymous=None` to `wandb.init`, and wandb >= 0.2x answers every run with
    "The anonymous setting has no effect and will be removed". Only the unset value is dropped; a user's
    `anonymous=true` still reaches wandb (and its own warning)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class _DropTips(logging.Filter):
    """Lightning's advertising lines ("💡 Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_DROP_TIPS = _DropTips()


def quiet_dependencies() -> None:
    """Silence what dependencies print that is neither the run's nor actionable by its user, each at its
    source (one logger, one warning of one module), so nothing else of theirs is hidden:

    * Lightning's tips for its commercial loggers (a filter on the logger `rank_zero_info` writes to);
    * Lightning's own use of torch's deprecated `LeafSpec` (lightning/pytorch/utilities/_pytree.py), a
      FutureWarning at every fit and test that its user cannot act on;
    * peft's reading of transformers' deprecated `is_gradient_checkpointing` (warned from
      transformers/modeling_utils.py) whenever a LoRA model is built.

    Idempotent: the run and the analysis both call it."""
    for name in RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_DROP_TIPS)  # a filter object is added once
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )
