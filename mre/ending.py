"""How a run's training ended, said in its log and written to `<run dir>/ending.json`, so a sweep,
a scheduler and a reader of the run directory know whether it completed its budget, stopped early
on a plateau, stopped on a non-finite loss, or was interrupted by a signal (and where to go on).

Lightning turns SIGTERM into `SIGTERMException` (a `SystemExit` with no status: the process would
exit 0) and catches Ctrl+C itself (exit 1, nothing said). `SignalRecorder` notes which signal
stopped the loop, so the runner can say where it stopped and exit 128 + the signal number.
"""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mre.errors import UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN/inf; a checkpoint was saved first. The NaN guard writes its ending
    itself, in the process that saw the loss (a `ddp_spawn` worker's exceptions reach no callback)."""


class Reason(StrEnum):
    budget = "budget"  # trainer.max_epochs / max_steps / max_time reached
    early_stopping = "early_stopping"  # the monitored metric stopped improving
    nonfinite_loss = "nonfinite_loss"  # the NaN guard stopped it
    interrupted = "interrupted"  # SIGTERM or SIGINT
    no_training = "no_training"  # fit=false: evaluated as loaded
    stopped = "stopped"  # another callback or the module set trainer.should_stop


@dataclass(frozen=True)
class Ending:
    """Where training stopped and why; `detail` is the sentence the log shows."""

    reason: Reason
    epoch: int
    global_step: int
    detail: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Ending:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cls(Reason(raw["reason"]), int(raw["epoch"]), int(raw["global_step"]), str(raw["detail"]))


class SignalRecorder(L.Callback):
    """Notes the signal that interrupted `fit` or `test` (None when none did)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self.signum = signal.SIGTERM
        elif isinstance(exception, KeyboardInterrupt):
            self.signum = signal.SIGINT


class EndingRecorder(L.Callback):
    """Writes how `fit` ended from the process that trained: with `ddp_spawn` the workers train, and
    the parent's trainer, which never ran a step, knows neither the step nor why the loop stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            fit_ending(trainer).write(self.path)


def fit_ending(trainer: L.Trainer) -> Ending:
    """Why a `fit` that returned normally stopped: the budget if it was spent (epochs, steps or
    `max_time`), else early stopping if a stopper fired and the loop obeyed it (`trainer.should_stop`
    still set), else a stop requested by some other callback or the module. A stopper that fired
    before `trainer.min_epochs` / `min_steps` was taken back (`mre.stopping`), so its `stopped_epoch`
    alone does not say that the run stopped there."""
    epoch, step = trainer.current_epoch, trainer.global_step
    limit = _budget_spent(trainer)
    if limit is not None:
        return Ending(Reason.budget, epoch, step, f"trained its budget ({limit}): epoch {epoch}, step {step}")
    stopper = next((cb for cb in trainer.callbacks if _stopped_by(cb, trainer)), None)
    if stopper is not None:
        detail = f"stopped early at epoch {stopper.stopped_epoch}, step {step}: {_why(stopper)}"
        return Ending(Reason.early_stopping, stopper.stopped_epoch, step, detail)
    detail = (
        f"stopped before its budget at epoch {epoch}, step {step}: "
        "a callback or the module set trainer.should_stop"
    )
    return Ending(Reason.stopped, epoch, step, detail)


def _stopped_by(cb: L.Callback, trainer: L.Trainer) -> bool:
    """True for an `EarlyStopping` whose stop the loop obeyed. A patience stop counts only while its
    patience is still spent: one taken back before the minimum (`mre.stopping`) keeps its reason."""
    if not (isinstance(cb, EarlyStopping) and trainer.should_stop):
        return False
    if cb.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
        return cb.wait_count >= cb.patience
    return cb.stopping_reason is not EarlyStoppingReason.NOT_STOPPED


def _why(stopper: EarlyStopping) -> str:
    """The stopper's reason, with the patience count and best score when patience ran out."""
    if stopper.stopping_reason is not EarlyStoppingReason.PATIENCE_EXHAUSTED:
        return stopper.stopping_reason_message or stopper.stopping_reason.name.lower()
    best = stopper.best_score.item() if stopper.best_score is not None else float("nan")
    return (
        f"{stopper.monitor} did not improve for {stopper.wait_count} validation checks "
        f"(patience {stopper.patience}; best {best:.4f})"
    )


def _epochs_whole(trainer: L.Trainer) -> bool:
    """True when the last epoch ran to its last batch. A stop at a check inside an epoch
    (`val_check_interval` < 1) ends that epoch early, and Lightning still counts it as done: in the last
    epoch `current_epoch` then reads `max_epochs` though the run trained fewer steps than its budget."""
    return trainer.current_epoch == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def _budget_spent(trainer: L.Trainer) -> str | None:
    """The limit the run reached (`max_steps=…`, `max_epochs=…`, `max_time=…`), or None."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return f"max_steps={trainer.max_steps}"
    if (
        trainer.max_epochs is not None
        and 0 <= trainer.max_epochs <= trainer.current_epoch
        and _epochs_whole(trainer)
    ):
        return f"max_epochs={trainer.max_epochs}"
    for cb in trainer.callbacks:
        left = cb.time_remaining() if isinstance(cb, Timer) else None
        if left is not None and left <= 0:
            return f"max_time={timedelta(seconds=round(left + cb.time_elapsed()))}"
    return None
