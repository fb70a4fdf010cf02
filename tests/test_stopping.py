"""Early stopping and the trainer's minimum: Lightning latches a stop decided before `min_epochs`;
`mre.stopping.EarlyStopFloor` takes it back, so the checks after the minimum decide."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from mre.stopping import EarlyStopFloor

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
