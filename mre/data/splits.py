"""Train/dev/test splits as in the paper (seeded samples of 1,000 / 1,000) and K-shot sampling.

Sources with their own train/test keep them (the test sample comes from the test split); a dev
split is carved from the unused part of train when the source has none; single-file sources are cut
into test, train and dev. Every draw ranks records by a seeded hash of their id, so adding, removing
or skipping rows never changes which of the other records are drawn. Overlap between the splits is
checked by record id, always.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass

from mre.data.record import Record
from mre.errors import UserError

log = logging.getLogger(__name__)


class SplitError(UserError, ValueError):
    """The requested splits cannot be made from this source."""


@dataclass(frozen=True)
class Splits:
    train: list[Record]
    dev: list[Record]
    test: list[Record]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def _rank(record: Record, seed: int, salt: str) -> str:
    """A record's place in a seeded draw, from its id alone: adding, removing or skipping other rows
    never changes which of the remaining records are drawn."""
    return hashlib.sha1(f"{seed}/{salt}/{record.id}".encode()).hexdigest()


def _sample(records: list[Record], n: int, seed: int, salt: str) -> tuple[list[Record], list[Record]]:
    """The n records of lowest seeded rank (in source order) and the rest."""
    chosen = {r.id for r in sorted(records, key=lambda r: _rank(r, seed, salt))[: max(0, n)]}
    return [r for r in records if r.id in chosen], [r for r in records if r.id not in chosen]


def check_disjoint(splits: Splits) -> None:
    """Fail when a record id appears in two splits (or twice in one)."""
    seen: dict[str, str] = {}
    for name in ("train", "dev", "test"):
        for r in getattr(splits, name):
            if r.id in seen:
                raise SplitError(f"record id {r.id!r} is in both {seen[r.id]} and {name}")
            seen[r.id] = name


def make_splits(
    sources: dict[str, list[Record]],
    n_train: int = 1000,
    n_test: int = 1000,
    n_dev: int = 200,
    seed: int = 42,
) -> Splits:
    """Seeded splits capped by what exists; see the module docstring for the rules."""
    if "train" in sources and "test" in sources:
        test, _ = _sample(sources["test"], n_test, seed, "test")
        train, rest = _sample(sources["train"], n_train, seed, "train")
    elif set(sources) <= {"all", "train", "dev"}:
        pool = [r for name in ("all", "train") for r in sources.get(name, [])]
        test, rest = _sample(pool, min(n_test, len(pool) // 2), seed, "test")
        train, rest = _sample(rest, n_train, seed, "train")
    else:
        raise SplitError(
            f"cannot make splits from source splits {sorted(sources)}: expected train+test or all"
        )
    dev = _sample(sources["dev"] if sources.get("dev") else rest, n_dev, seed, "dev")[0]
    splits = Splits(train, dev, test)
    check_disjoint(splits)
    if not train or not test:
        raise SplitError(f"empty split after sampling: {splits.sizes()}")
    return splits


def k_shot(records: list[Record], k: int, seed: int = 42) -> list[Record]:
    """K records per text label (fewer where a class has fewer), seeded by id, in source order."""
    by_class: dict[str | None, list[Record]] = defaultdict(list)
    for r in records:
        by_class[r.tli].append(r)
    chosen = {r.id for group in by_class.values() for r in _sample(group, k, seed, "k_shot")[0]}
    short = {str(c): len(v) for c, v in by_class.items() if len(v) < k}
    if short:
        log.warning("k_shot(k=%d): classes with fewer samples than k: %s", k, short)
    return [r for r in records if r.id in chosen]


def n_total_sample(records: list[Record], n: int, seed: int = 42) -> list[Record]:
    """N records in total (the paper's 100-sample few-shot protocol), seeded by id."""
    return _sample(records, n, seed, "n_total")[0]
