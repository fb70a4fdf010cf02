"""LightningDataModule for the four MRE settings: sources -> splits -> tokenizer -> prompts -> batches.

Batches are left-padded (decoder-only scoring and generation read the last position) and carry
explicit `position_ids`, so a left-padded sample gets the same positions as an unpadded one and
training, scoring, generation and the flow pass all see identical inputs. Each batch holds two
views of the same samples: the full sequence (prompt + answer, loss on the answer only) and the
prompt alone with its text/anchor ranges, q and target (for scoring, generation and flow).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mre.config import DataConfig, DatasetConfig, DirectionConfig, PromptConfig, TokenizerConfig
from mre.data.prompts import Encoded, Fields, PromptBuilder
from mre.data.readers import load_source
from mre.data.record import Record
from mre.data.splits import Splits, make_splits
from mre.data.synthetic import generate
from mre.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from mre.data.wli_format import WLIFormat

log = logging.getLogger(__name__)

IGNORE = -100


def _value(x: Any) -> Any:
    """Enum members from structured configs -> their plain values."""
    return getattr(x, "value", x)


def load_sources(ds: DatasetConfig) -> dict[str, list[Record]]:
    """Records of a dataset config by named split; a missing path says what file is expected."""
    source = _value(ds.source)
    if source == "synthetic":
        s = ds.synthetic
        recs = generate(
            s.n,
            n_classes=s.n_classes,
            language=_value(ds.language),
            seed=s.seed,
            wli_helps_tli=s.wli_helps_tli,
            tli_helps_wli=s.tli_helps_wli,
        )
        return {"all": recs}
    if ds.path is None or not Path(ds.path).exists():
        where = "no path was given" if ds.path is None else f"{ds.path} does not exist"
        raise FileNotFoundError(
            f"dataset {ds.name!r}: {where}. Expected {ds.expected or 'a ' + source + ' file'}; "
            f"give it with dataset.path=/path/to/it"
        )
    return load_source(source, ds.path, on_bad_row=_value(ds.on_bad_row))


def load_splits(ds: DatasetConfig) -> Splits:
    return make_splits(load_sources(ds), ds.n_train, ds.n_test, ds.n_dev, ds.split_seed)


def tokenizer_corpus(
    records: list[Record], direction: DirectionConfig, prompt: PromptConfig, lang: str
) -> list[str]:
    """Training texts for a tiny tokenizer: every field a prompt of either direction can hold."""
    f = prompt.fields[lang]
    fmt = WLIFormat(prompt.pair_sep, prompt.kv_sep, prompt.empty)
    lines = [str(v) for v in direction.instruction.values()] + [f.text, f.tli, f.wli, f.answer]
    for i, r in enumerate(records):
        code = chr(ord("A") + i % 26)
        lines.append(
            f"{f.text} {r.text}\n{f.tli} {r.tli or ''}\n{f.wli} {fmt.serialize(r.wli)}\n{f.answer} {code}"
        )
    return lines


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


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), like DistributedSampler: a run resumed at
    epoch k sees the same order as an uninterrupted one (a stateful generator would restart)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class LengthGroupedSampler(Sampler[int]):
    """Seeded shuffle, then sort by length inside mega-batches of 50 batches: less padding,
    still a random order of batches, and the same permutation for the same (seed, epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = self.batch_size * 50
        chunks = [
            sorted(order[i : i + mega], key=lambda j: -self.lengths[j]) for i in range(0, len(order), mega)
        ]
        batches = [c[i : i + self.batch_size] for c in chunks for i in range(0, len(c), self.batch_size)]
        rng.shuffle(batches)
        return iter([i for b in batches for i in b])


class MREDataModule(L.LightningDataModule):
    """Splits, tokenizer and prompt builder for one (dataset, direction, with_anchor) setting."""

    def __init__(
        self,
        dataset: DatasetConfig,
        direction: DirectionConfig,
        prompt: PromptConfig,
        data: DataConfig,
        tokenizer_cfg: TokenizerConfig,
        with_anchor: bool,
        seed: int = 42,
        pretrained_path: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.ds, self.direction, self.prompt_cfg, self.data_cfg = dataset, direction, prompt, data
        self.tokenizer_cfg, self.with_anchor, self.seed = tokenizer_cfg, with_anchor, seed
        self.pretrained_path, self.cache_dir = pretrained_path, cache_dir
        self.splits: Splits | None = None
        self.encoded: dict[str, list[Encoded]] = {}

    @property
    def language(self) -> str:
        return _value(self.ds.language)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.splits = load_splits(self.ds)
        self.tokenizer = self._tokenizer(self.splits)
        self.labels = sorted({r.tli for r in self.splits.train if r.tli is not None})
        self.builder = self._builder()
        self.encoded = {
            name: self.builder.encode_all(getattr(self.splits, name)) for name in ("train", "dev", "test")
        }
        unseen = sum(1 for r in self.splits.test if r.tli is not None and r.tli not in self.labels)
        if unseen and _value(self.direction.name) == "tli":
            log.warning("%d test samples have a text label never seen in training: scored as wrong", unseen)

    def _tokenizer(self, splits: Splits):
        if self.pretrained_path:
            return load_tokenizer(self.pretrained_path)
        corpus = tokenizer_corpus(splits.train, self.direction, self.prompt_cfg, self.language)
        held_out_chars = "".join(r.text + "".join(p.span for p in r.wli) for r in splits.dev + splits.test)
        return train_tiny_tokenizer(
            corpus,
            kind=self.tokenizer_cfg.kind,
            vocab_size=self.tokenizer_cfg.vocab_size,
            cache_dir=self.cache_dir,
            extra_alphabet=held_out_chars,
        )

    def _builder(self) -> PromptBuilder:
        f = self.prompt_cfg.fields[self.language]
        return PromptBuilder(
            tokenizer=self.tokenizer,
            direction=_value(self.direction.name),
            with_anchor=self.with_anchor,
            instruction=self.direction.instruction[self.language],
            fields=Fields(f.text, f.tli, f.wli, f.answer),
            labels=self.labels,
            wli_format=WLIFormat(self.prompt_cfg.pair_sep, self.prompt_cfg.kv_sep, self.prompt_cfg.empty),
            code_scheme=self.prompt_cfg.code_scheme,
            max_length=self.prompt_cfg.max_length,
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        items = self.encoded[split]
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
            collate_fn=Collator(self.tokenizer.pad_token_id),
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

    def records(self, split: str) -> list[Record]:
        assert self.splits is not None, "call setup() first"
        return getattr(self.splits, split)
