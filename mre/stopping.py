"""Early stopping that waits for the trainer's minimum (`trainer.min_epochs` / `min_steps`).

Lightning's `EarlyStopping` latches its decision: once patience runs out it sets
`trainer.should_stop`, nothing clears it, and the loop obeys it the moment the minimum is reached,
even when the monitored metric has improved since (Lightning issue #19966, open in 2.6). The minimum
is meant for runs that need a while before their dev F1 starts to rise (SLURP's 18 scenarios: two
epochs at the majority level); with the latch such a run stops at the minimum however it is doing.
`EarlyStopFloor` withdraws a stop that a stopper decided before the minimum, so each check decides
afresh from the stopper's own patience count: a run whose metric never improved stops at the first
check past the minimum, one that improved within its last `patience` checks trains on.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

log = logging.getLogger(__name__)


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
