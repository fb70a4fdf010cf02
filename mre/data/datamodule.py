"""LightningDataModule of the generative task: the loaders over a `TaskContext`'s encoded splits.

Everything about the data itself (splits, tokenizer, prompts) lives in the context, built once; this
module only decides batch sizes, order and collation (see `mre.data.batches`).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from mre.data.batches import Collator, LengthGroupedSampler, ListDataset
from mre.data.context import TaskContext


class MREDataModule(L.LightningDataModule):
    """Train (shuffled, seeded), dev and test loaders of one setting's encoded samples."""

    def __init__(self, context: TaskContext, data_cfg, seed: int = 42) -> None:
        super().__init__()
        self.context, self.data_cfg, self.seed = context, data_cfg, seed

    def _loader(self, split: str, train: bool) -> DataLoader:
        items = self.context.items(split)
        bs = self.data_cfg.batch_size if train else self.data_cfg.eval_batch_size
        sampler = None
        if train and self.data_cfg.group_by_length:
            sampler = LengthGroupedSampler(
                [len(e.prompt_ids) + len(e.answer_ids) for e in items], bs, self.seed
            )
        return DataLoader(
            ListDataset(items),
            batch_size=bs,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=Collator(self.context.tokenizer.pad_token_id),
            num_workers=self.data_cfg.num_workers,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            persistent_workers=self.data_cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
