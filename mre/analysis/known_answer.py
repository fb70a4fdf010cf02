"""The known-answer check: on a sweep over the synthetic generator's planted strengths, does the
anchor's seed-aware gain behave as planted (none at strength 0, growing with the strength)?

The check reads a study's table (`SweepTable`) and is a result of its own, written to
``known_answer_<key>.json`` and read back equal.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from mre.analysis.studies import STUDIES
from mre.analysis.tables import RowResult, SweepTable

STRENGTH_KEYS = ("dataset.synthetic.wli_helps_tli", "dataset.synthetic.tli_helps_wli")
MIN_SEEDS = 3  # the known-answer check wants training noise measured, not only test-sample noise


@dataclass(frozen=True)
class Level:
    """One planted strength (a value per strength key) and its row's comparison and flow strength."""

    level: tuple[float, ...]
    f1_a: float
    f1_b: float
    diff: float
    lo: float
    hi: float
    p: float
    p_bh: float | None
    n_seeds: int
    n_perm: int
    s_pq: float | None
    s_pq_ratio: float | None


@dataclass(frozen=True)
class KnownAnswer:
    """The levels in increasing strength, each check's outcome, the verdict and the flow's trends."""

    study: str  # the key in `STUDIES`
    keys: tuple[str, ...]
    min_seeds: int
    levels: tuple[Level, ...]
    checks: dict[str, bool]
    recovered: bool
    s_pq_trend: str | None
    s_pq_ratio_trend: str | None

    @staticmethod
    def path(out_dir: Path, study: str) -> Path:
        return out_dir / f"known_answer_{study}.json"

    def write(self, out_dir: Path) -> Path:
        path = self.path(out_dir, self.study)
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, out_dir: Path, study: str) -> KnownAnswer:
        d = json.loads(cls.path(out_dir, study).read_text(encoding="utf-8"))
        levels = tuple(Level(**{**lv, "level": tuple(lv["level"])}) for lv in d.pop("levels"))
        return cls(**{**d, "keys": tuple(d["keys"]), "levels": levels})


def _level(row: RowResult, keys: list[str]) -> Level | None:
    """The row as a level, None when it was not compared or its strengths are not numbers."""
    if not row.compared:
        return None
    try:
        level = tuple(float(row.labels[k]) for k in keys)
    except ValueError:
        return None
    return Level(
        level, row.f1_a, row.f1_b, row.diff, row.ci_lo, row.ci_hi, row.p, row.p_bh, row.n_seeds,
        row.n_perm, row.s_pq_b, row.s_pq_ww_b,
    )  # fmt: skip


def known_answer(table: SweepTable) -> KnownAnswer | None:
    """Per strength level: the seed-aware gain of with-anchor over without, and the mean S_pq.

    Passes when (1) every level has at least MIN_SEEDS seeds, (2) the seed-aware interval at strength
    0 contains 0 (without a planted effect the anchor carries no information), and (3) the gain rises
    with the strength: the strongest level's interval lies above the gain at strength 0, and no level's
    gain falls below the previous level's lower bound. Only for sweeps that vary the synthetic strengths.
    """
    keys = [k for k in table.label_keys if k in STRENGTH_KEYS]
    if not keys or not STUDIES[table.study].known_answer:
        return None
    levels = sorted((lv for row in table.rows if (lv := _level(row, keys))), key=lambda lv: lv.level)
    if len(levels) < 2:
        return None
    null = [lv for lv in levels if all(v == 0 for v in lv.level)]
    strongest = levels[-1]
    checks = {
        "null level present": bool(null),
        f"at least {MIN_SEEDS} seeds per level": all(lv.n_seeds >= MIN_SEEDS for lv in levels),
        "the interval at strength 0 contains 0": bool(null) and null[0].lo <= 0 <= null[0].hi,
        "the strongest level's interval lies above the gain at strength 0": bool(null)
        and strongest.lo > null[0].diff,
        "the gain never falls below the previous level's lower bound": all(
            b.diff >= a.lo for a, b in itertools.pairwise(levels)
        ),
    }
    return KnownAnswer(
        table.study, tuple(keys), MIN_SEEDS, tuple(levels), checks, all(checks.values()),
        _trend([lv.s_pq for lv in levels]), _trend([lv.s_pq_ratio for lv in levels]),
    )  # fmt: skip


def _trend(values: list[float | None]) -> str | None:
    if len(values) < 2 or not all(v is not None and math.isfinite(v) for v in values):
        return None
    if all(b >= a for a, b in itertools.pairwise(values)):
        return "increasing"
    if all(b <= a for a, b in itertools.pairwise(values)):
        return "decreasing"
    return "not monotone"
