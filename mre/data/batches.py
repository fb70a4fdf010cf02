"""Batches of encoded prompts, shared by training, evaluation, the flow callback and the analysis.

Batches are left-padded (decoder-only scoring and generation read the last position) and carry
explicit `position_ids`, so a left-padded sample gets the same positions as an unpadded one and
training, scoring, generation and the flow pass all see identical inputs. Each batch holds two
views of the same samples: the full sequence (prompt + answer, loss on the answer only) and the
prompt alone with its text/anchor ranges, q and target (for scoring, generation and flow).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mre.data.prompts import Encoded

IGNORE = -100


class ListDataset(Dataset):
    """A map-style dataset over a list of already encoded samples."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for b, s in enumerate(seqs):
        off = width - len(s)
        ids[b, off:] = torch.tensor(s, dtype=torch.long)
        mask[b, off:] = 1
        offsets.append(off)
    return ids, mask, offsets


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (0 at the first non-pad token)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class Collator:
    """Left-pads a list of `Encoded` into the two views described in the module docstring."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        full, mask, offs = _left_pad([e.prompt_ids + e.answer_ids for e in items], self.pad_id)
        labels = torch.full_like(full, IGNORE)
        for b, e in enumerate(items):
            start = offs[b] + len(e.prompt_ids)
            labels[b, start : start + len(e.answer_ids)] = torch.tensor(e.answer_ids)
        prompt, pmask, poffs = _left_pad([e.prompt_ids for e in items], self.pad_id)
        shift = torch.tensor(poffs).unsqueeze(1)
        anchor = torch.tensor([e.anchor_range for e in items])
        return {
            "input_ids": full,
            "attention_mask": mask,
            "position_ids": position_ids(mask),
            "labels": labels,
            "prompt_ids": prompt,
            "prompt_mask": pmask,
            "prompt_position_ids": position_ids(pmask),
            "text_range": torch.tensor([e.text_range for e in items]) + shift,
            "anchor_range": torch.where(
                anchor[:, 1:] > anchor[:, :1], anchor + shift, anchor
            ),  # (0, 0): none
            "q": torch.full((len(items),), prompt.shape[1] - 1, dtype=torch.long),
            "target": torch.tensor([e.target for e in items]),
            "index": torch.tensor([e.index for e in items]),
        }


Position = Callable[[], "tuple[int, int] | None"]  # (epoch, batches of it already trained) or None


class EpochSampler(Sampler[int]):
    """The training order of one epoch, a function of (seed, epoch) alone, that can start part-way:
    `position()` (the DataModule's view of a restored trainer) says which epoch runs and how many of
    its batches were trained before a checkpoint, so a resumed run draws exactly the batches an
    uninterrupted one would. Without a trainer, the epoch is the one `set_epoch` gave.

    `group_by_length`: sort by length inside seeded mega-batches of 50 batches (less padding, still a
    random order of batches)."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        group_by_length: bool = False,
        position: Position | None = None,
    ) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group_by_length, self.position, self.epoch = group_by_length, position, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int) -> list[int]:
        """The whole epoch's order."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if not self.group_by_length:
            return order
        rng = random.Random(self.seed + epoch)
        mega = self.batch_size * 50
        chunks = [
            sorted(order[i : i + mega], key=lambda j: -self.lengths[j]) for i in range(0, len(order), mega)
        ]
        batches = [c[i : i + self.batch_size] for c in chunks for i in range(0, len(c), self.batch_size)]
        rng.shuffle(batches)
        return [i for b in batches for i in b]

    def __iter__(self) -> Iterator[int]:
        where = self.position() if self.position is not None else None
        epoch, done = where if where is not None else (self.epoch, 0)
        return iter(self.order(epoch)[done * self.batch_size :])


class ResumableLoader(DataLoader):
    """A DataLoader Lightning treats as resumable: its `EpochSampler` starts where the restored trainer
    left off, so there is no state of its own to save."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore: the sampler reads the position from the restored trainer."""


class SplitDataModule(L.LightningDataModule):
    """Train (shuffled per (seed, epoch), resumable mid-epoch), dev and test loaders over lists of
    prepared samples; a task's DataModule says which samples (`samples`), how they are collated
    (`collate`) and, optionally, by which lengths training batches are grouped (`train_lengths`)."""

    def __init__(self, batch_size: int, eval_batch_size: int, num_workers: int = 0, seed: int = 42) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed

    def samples(self, split: str) -> list:
        raise NotImplementedError

    def collate(self) -> Callable[[list], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def train_lengths(self, items: list) -> list[int] | None:
        """Sample lengths to group training batches by (None: a plain shuffle)."""
        return None

    def position(self) -> tuple[int, int] | None:
        """(epoch, batches of it already trained) of the trainer running this module: after a restore,
        the epoch and progress of the checkpoint; None outside a fit."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        loop = trainer.fit_loop.epoch_loop
        done = loop.batch_progress.current.completed if loop.restarting else 0
        if done >= trainer.num_training_batches:  # saved at the epoch's very end: the next epoch starts
            return trainer.current_epoch + 1, 0
        return trainer.current_epoch, done

    def _loader(self, split: str, train: bool) -> DataLoader:
        items = self.samples(split)
        sampler = None
        if train:
            lengths = self.train_lengths(items)
            sampler = EpochSampler(
                lengths or [0] * len(items),
                self.batch_size,
                self.seed,
                group_by_length=lengths is not None,
                position=self.position,
            )
        return (ResumableLoader if train else DataLoader)(
            ListDataset(items),
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            collate_fn=self.collate(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
