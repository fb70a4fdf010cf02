"""Early stopping and the trainer's minimum: Lightning latches a stop decided before `min_epochs`;
`mre.stopping.EarlyStopFloor` takes it back, so the checks after the minimum decide. And how each
way a `fit` can end is recorded (`mre.ending.fit_ending`)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from mre.ending import Ending, Reason, fit_ending
from mre.stopping import EarlyStopFloor, EarlyStoppingAfterLearning

# dev scores by epoch: no gain in epochs 1-2 (patience 2 runs out at epoch 2), then gains up to epoch 5
SCORES = [0.5, 0.4, 0.3, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8]


class ScriptedScore(L.LightningModule):
    """A one-weight model whose dev score follows SCORES, one value per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return ((self.w - batch) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/f1", SCORES[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _stopped_after(floor: bool, min_epochs: int | None, tmp_path) -> int:
    """The number of epochs a run trains with early stopping (patience 2) and the given minimum."""
    data = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=2)
    callbacks = [
        EarlyStopping(monitor="val/f1", mode="max", patience=2),
        *([EarlyStopFloor()] if floor else []),
    ]
    trainer = L.Trainer(
        max_epochs=len(SCORES), min_epochs=min_epochs, callbacks=callbacks,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(ScriptedScore(), data, data)
    return trainer.current_epoch


def test_lightning_alone_stops_at_the_minimum_though_the_score_rose_since(tmp_path):
    """The behaviour the floor corrects (if Lightning fixes #19966 this fails: the floor can then go)."""
    assert _stopped_after(floor=False, min_epochs=5, tmp_path=tmp_path) == 5


@pytest.mark.parametrize(
    ("min_epochs", "epochs"),
    [
        (None, 3),  # no minimum: stops after the two checks without a gain (epochs 1-2)
        (5, 8),  # gains up to epoch 5 reset patience: stops after epochs 6-7 bring none
        (2, 3),  # a minimum already passed when patience runs out changes nothing
    ],
)
def test_the_floor_lets_the_checks_after_the_minimum_decide(tmp_path, min_epochs, epochs):
    assert _stopped_after(floor=True, min_epochs=min_epochs, tmp_path=tmp_path) == epochs


class StopsItself(ScriptedScore):
    """Asks the loop to stop at the end of its second epoch, as a user's module or callback may."""

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 1:
            self.trainer.should_stop = True


def _ending(module: L.LightningModule, tmp_path, callbacks=(), data=None, **trainer_kwargs) -> Ending:
    """How `fit` of `module` with these callbacks and limits ended, as the run directory records it
    (`data`: the training and validation batches, two of two samples unless given)."""
    data = data if data is not None else torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=2)
    trainer = L.Trainer(
        callbacks=list(callbacks), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, data, data)
    return fit_ending(trainer)


def test_each_way_a_fit_can_end_is_told_apart(tmp_path):
    """Budget in epochs, steps and time; patience and a threshold; a stop asked for by the module."""
    by_epochs = _ending(ScriptedScore(), tmp_path, max_epochs=2)
    assert (by_epochs.reason, by_epochs.epoch, by_epochs.global_step) == (Reason.budget, 2, 4)
    assert "max_epochs=2" in by_epochs.detail
    by_steps = _ending(ScriptedScore(), tmp_path, max_steps=3)
    assert (by_steps.reason, by_steps.global_step) == (Reason.budget, 3)
    assert "max_steps=3" in by_steps.detail
    by_time = _ending(ScriptedScore(), tmp_path, max_time={"seconds": 0})
    assert (by_time.reason, by_time.global_step) == (Reason.budget, 0)  # spent before the first step
    assert "max_time=0:00:00" in by_time.detail

    patience = EarlyStopping(monitor="val/f1", mode="max", patience=2)
    out = _ending(ScriptedScore(), tmp_path, [patience], max_epochs=len(SCORES))
    assert (out.reason, out.epoch) == (Reason.early_stopping, 2)  # no gain at epochs 1 and 2
    assert "did not improve for 2 validation checks" in out.detail

    threshold = EarlyStopping(monitor="val/f1", mode="max", patience=99, stopping_threshold=0.65)
    out = _ending(ScriptedScore(), tmp_path, [threshold], max_epochs=len(SCORES))
    assert (out.reason, out.epoch) == (Reason.early_stopping, 4)  # 0.7 at epoch 4
    assert "threshold" in out.detail

    asked = _ending(StopsItself(), tmp_path, max_epochs=len(SCORES))
    assert (asked.reason, asked.epoch, asked.global_step) == (Reason.stopped, 2, 4)
    assert "should_stop" in asked.detail


class ScoreByCheck(ScriptedScore):
    """Two validation checks per epoch (4 batches, `val_check_interval=0.5`), scored 0.5, 0.6, 0.6, ..."""

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/f1", 0.5 if self.global_step <= 2 else 0.6)


def test_a_stop_inside_the_last_epoch_is_early_stopping_not_the_budget(tmp_path):
    """Patience 1 runs out at the first check of the second and last epoch (step 6 of 8). Lightning
    ends that epoch there and counts it, so `max_epochs=2` reads as reached; the run trained 6 of its 8
    steps and stopped early (the converged studies' runs that stopped at step 225 of 240 were recorded
    as 'budget' before this)."""
    data = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=1)
    patience = EarlyStopping(monitor="val/f1", mode="max", patience=1)
    out = _ending(ScoreByCheck(), tmp_path, [patience], max_epochs=2, val_check_interval=0.5, data=data)
    assert (out.reason, out.epoch, out.global_step) == (Reason.early_stopping, 1, 6)
    full = _ending(ScoreByCheck(), tmp_path, [], max_epochs=2, val_check_interval=0.5, data=data)
    assert (full.reason, full.global_step) == (Reason.budget, 8)


# dev scores by epoch against a majority baseline of 0.2: at the baseline for epochs 0-4, learning from 5
LATE = [0.2, 0.2, 0.2, 0.2, 0.2, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8]


class LateLearner(ScriptedScore):
    """Logs `val/f1` from `scores` (one per epoch) beside a dev majority baseline of 0.2."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/f1", self.scores[self.current_epoch])
        self.log("val/majority_f1", 0.2)


def _late_ending(scores: list[float], stopper: EarlyStopping, tmp_path) -> Ending:
    return _ending(LateLearner(scores), tmp_path, [stopper], max_epochs=len(scores))


def _after_learning() -> EarlyStoppingAfterLearning:
    return EarlyStoppingAfterLearning(monitor="val/f1", mode="max", patience=2)


def test_no_early_stop_before_the_dev_score_has_left_the_majority_baseline(tmp_path):
    """Lightning's stopper (patience 2) stops the run at the majority level (epochs 1-2 bring no
    gain), before it learns; this one lets it train until it learns at epoch 5, and patience then stops
    it after two checks without a gain (epochs 8-9). A run that never learns trains its budget."""
    plain = _late_ending(LATE, EarlyStopping(monitor="val/f1", mode="max", patience=2), tmp_path)
    assert (plain.reason, plain.epoch) == (Reason.early_stopping, 2)
    stopper = _after_learning()
    held = _late_ending(LATE, stopper, tmp_path)
    assert (held.reason, held.epoch) == (Reason.early_stopping, 9) and stopper.learned
    assert "did not improve for 2 validation checks" in held.detail
    never = _after_learning()
    flat = _late_ending([0.2] * 6, never, tmp_path)
    assert (flat.reason, flat.epoch) == (Reason.budget, 6) and not never.learned
    # one more right answer than the majority is not learning (margin 0.05); with no margin it is
    blip = [0.2, 0.2, 0.21, 0.2, 0.2, 0.2]
    assert _late_ending(blip, _after_learning(), tmp_path).reason is Reason.budget
    strict = EarlyStoppingAfterLearning(monitor="val/f1", mode="max", patience=2, margin=0.0)
    assert (_late_ending(blip, strict, tmp_path).reason, strict.learned) == (Reason.early_stopping, True)
    # only patience waits for learning: a non-finite dev score stops the run at once
    broken = _late_ending([0.2, float("nan"), 0.2, 0.2], _after_learning(), tmp_path)
    assert (broken.reason, broken.epoch) == (Reason.early_stopping, 1) and "finite" in broken.detail


def test_whether_the_run_has_learned_is_kept_in_its_checkpoint(tmp_path):
    """A run resumed after it learned does not wait for learning again: the state goes into the
    checkpoint with the stopper's own."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=2)
    stopper = _after_learning()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_epochs=7, callbacks=[stopper, ckpt], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(LateLearner(LATE), data, data)
    assert stopper.learned
    fresh = _after_learning()
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    fresh.load_state_dict(state[fresh.state_key])
    assert fresh.learned and fresh.wait_count == stopper.wait_count
