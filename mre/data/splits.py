"""Train/dev/test splits as in the paper (seeded samples of 1,000 / 1,000) and K-shot sampling.

Sources with their own train/test keep them (the test sample comes from the test split); a dev
split is carved from the unused part of train when the source has none; single-file sources are
shuffled once and cut. Overlap between the splits is checked by record id, always.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass

from mre.data.record import Record

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The requested splits cannot be made from this source."""


@dataclass(frozen=True)
class Splits:
    train: list[Record]
    dev: list[Record]
    test: list[Record]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def _sample(records: list[Record], n: int, rng: random.Random) -> tuple[list[Record], list[Record]]:
    """Seeded sample of at most n records (in a stable order) and the rest."""
    order = list(range(len(records)))
    rng.shuffle(order)
    take = sorted(order[: max(0, n)])
    taken = set(take)
    return [records[i] for i in take], [records[i] for i in range(len(records)) if i not in taken]


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
    rng = random.Random(seed)
    if "train" in sources and "test" in sources:
        test, _ = _sample(sources["test"], n_test, rng)
        train, rest = _sample(sources["train"], n_train, rng)
        dev = _sample(sources["dev"], n_dev, rng)[0] if sources.get("dev") else _sample(rest, n_dev, rng)[0]
    elif set(sources) <= {"all", "train", "dev"}:
        pool = [r for name in ("all", "train") for r in sources.get(name, [])]
        test, rest = _sample(pool, min(n_test, len(pool) // 2), rng)
        train, rest = _sample(rest, n_train, rng)
        dev = _sample(sources["dev"], n_dev, rng)[0] if sources.get("dev") else _sample(rest, n_dev, rng)[0]
    else:
        raise SplitError(
            f"cannot make splits from source splits {sorted(sources)}: expected train+test or all"
        )
    splits = Splits(train, dev, test)
    check_disjoint(splits)
    if not train or not test:
        raise SplitError(f"empty split after sampling: {splits.sizes()}")
    return splits


def k_shot(records: list[Record], k: int, seed: int = 42) -> list[Record]:
    """K records per text label (fewer where a class has fewer), seeded, in source order."""
    by_class: dict[str | None, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r.tli].append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(by_class, key=str):
        idx = by_class[label]
        chosen += rng.sample(idx, min(k, len(idx)))
    short = {str(c): len(v) for c, v in by_class.items() if len(v) < k}
    if short:
        log.warning("k_shot(k=%d): classes with fewer samples than k: %s", k, short)
    return [records[i] for i in sorted(chosen)]


def n_total_sample(records: list[Record], n: int, seed: int = 42) -> list[Record]:
    """N records in total (the paper's 100-sample few-shot protocol), seeded."""
    return _sample(records, n, random.Random(seed))[0]
