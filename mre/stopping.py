"""Early stopping that waits for the trainer's minimum (`trainer.min_epochs` / `min_steps`).

Lightning's `EarlyStopping` latches its decision: once patience runs out it sets
`trainer.should_stop`, nothing clears it, and the loop obeys it the moment the minimum is reached,
even when the monitored metric has improved since (Lightning issue #19966, open in 2.6). The minimum
is meant for runs that need a while before their dev F1 starts to rise (SLURP's 18 scenarios: two
epochs at the majority level); with the latch such a run stops at the minimum however it is doing.
`EarlyStopFloor` withdraws a stop that a stopper decided before the minimum, so each check decides
afresh from the stopper's own patience count: a run whose metric never improved stops at the first
check past the minimum, one that improved within its last `patience` checks trains on.

A fixed minimum is a guess at when a run starts to learn, and on SLURP it was wrong both ways: one
text-only run left the majority level at step 134, another had not after 120 (docs/results).
`EarlyStoppingAfterLearning` waits for the run itself instead: no early stop while the dev F1 has never
risen clearly above the dev majority baseline (`val/majority_f1`); the budget still ends a run that
never learns, which the report then marks as collapsed.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

log = logging.getLogger(__name__)

LEARNING_MARGIN = 0.05  # see EarlyStoppingAfterLearning: about three right answers on SLURP's dev split


def above_majority(score: float, baseline: float, margin: float = LEARNING_MARGIN) -> bool:
    """Whether a dev score shows that a run has learned more than the most frequent answer: above the
    majority baseline by more than `margin`. One definition for the stopper and the sweep report (the
    dev path's "above majority from step", the collapse mark), so a run the stopper let stop is never
    one the report calls collapsed on its dev checks, and the other way round."""
    return score > baseline + margin


def minimum_reached(trainer: L.Trainer) -> bool:
    """True when the trainer may stop early: its minimum epochs (counting the current one when this is
    its last batch) and minimum steps are done, as Lightning's loop counts them."""
    loop = trainer.fit_loop
    epochs_done = trainer.current_epoch + int(loop.epoch_loop.batch_progress.is_last_batch)
    return epochs_done >= (loop.min_epochs or 0) and trainer.global_step >= (loop.min_steps or 0)


class EarlyStopFloor(L.Callback):
    """After every early-stopping check (it must come after the stoppers in the callback list), takes
    back a stop that an `EarlyStopping` whose patience ran out requested before the minimum."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._defer(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._defer(trainer)

    @staticmethod
    def _defer(trainer: L.Trainer) -> None:
        if not trainer.should_stop or trainer.sanity_checking or minimum_reached(trainer):
            return
        stoppers = [
            c for c in trainer.callbacks if isinstance(c, EarlyStopping) and c.wait_count >= c.patience
        ]
        if stoppers:
            trainer.should_stop = False
            log.info(
                "%s has not improved for %d checks, but the minimum (min_epochs=%s, min_steps=%s) is not "
                "reached: training goes on, and the checks after it decide",
                stoppers[0].monitor,
                stoppers[0].wait_count,
                trainer.fit_loop.min_epochs,
                trainer.fit_loop.min_steps,
            )


class EarlyStoppingAfterLearning(EarlyStopping):
    """Lightning's `EarlyStopping` that does not stop a run whose monitored dev score has never risen
    above the baseline the module logs beside it by more than `margin` (`val/f1` over
    `val/majority_f1`: the run has not yet learned more than the most frequent answer). Patience counts
    as usual; a patience stop before the run has learned is taken back (a non-finite score or a
    threshold still stops it), and the first check above baseline + margin is an improvement that
    resets the count. Whether the run has learned is kept in its checkpoints, with the stopper's own
    state. A subclass rather than a second callback: Lightning calls stoppers after the other callbacks
    at an epoch's end, so only a stopper sees its own decision in time to take it back.

    Why a margin: a run that gives the most frequent answer to every dev text but one, and gets that
    one right, is already above the baseline (a SLURP run stopped so, at dev F1 0.0164 against 0.0161,
    with its training loss flat for 390 steps). One right answer in a class of m dev texts adds
    2 / (m + 1) to that class's F1 and that over K classes to macro-F1: about 0.017 on SLURP's 100
    dev texts (K = 18, m ~ 5.5), 0.02 on SNIPS's (K = 7, m ~ 14). The default 0.05 asks for about
    three such answers on SLURP."""

    def __init__(
        self, *args: Any, baseline: str = "val/majority_f1", margin: float = LEARNING_MARGIN, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.baseline = baseline
        self.margin = margin
        self.learned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping = trainer.should_stop
        super().on_validation_end(trainer, pl_module)
        self._hold(trainer, stopping)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping = trainer.should_stop
        super().on_train_epoch_end(trainer, pl_module)
        self._hold(trainer, stopping)

    def _hold(self, trainer: L.Trainer, stopping_before: bool) -> None:
        if trainer.sanity_checking:
            return
        score, base = trainer.callback_metrics.get(self.monitor), trainer.callback_metrics.get(self.baseline)
        if score is not None and base is not None and above_majority(float(score), float(base), self.margin):
            self.learned = True
        patience_stop = self.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
        if self.learned or stopping_before or not trainer.should_stop or not patience_stop:
            return
        trainer.should_stop = False
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message = None
        log.info(
            "%s has not improved for %d checks, but it has never risen above %s + %g: training goes on "
            "until it does (then patience decides) or the budget ends",
            self.monitor,
            self.wait_count,
            self.baseline,
            self.margin,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "learned": self.learned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.learned = bool(state_dict.get("learned", False))
