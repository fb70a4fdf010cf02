"""LightningDataModule of the generative task: the loaders over a `TaskContext`'s encoded splits.

Everything about the data itself (splits, tokenizer, prompts) lives in the context, built once; this
module only decides batch sizes, order and collation (see `mre.data.batches`).
"""

from __future__ import annotations

from mre.data.batches import Collator, SplitDataModule
from mre.data.context import TaskContext
from mre.data.options import DataConfig
from mre.data.prompts import Encoded


class MREDataModule(SplitDataModule):
    """Train (shuffled, seeded; optionally grouped by length), dev and test loaders of one setting."""

    def __init__(self, context: TaskContext, data_cfg: DataConfig, seed: int = 42) -> None:
        super().__init__(data_cfg.batch_size, data_cfg.eval_batch_size, data_cfg.num_workers, seed)
        self.context, self.group_by_length = context, data_cfg.group_by_length

    def samples(self, split: str) -> list[Encoded]:
        return self.context.items(split)

    def collate(self) -> Collator:
        return Collator(self.context.tokenizer.pad_token_id)

    def train_lengths(self, items: list[Encoded]) -> list[int] | None:
        if not self.group_by_length:
            return None
        return [len(e.prompt_ids) + len(e.answer_ids) for e in items]
