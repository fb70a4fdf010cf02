"""Learning curves: when a sweep varies the training-set size (`dataset.n_train`), a study's rows at
each size become the points of a curve per group (data set and the other varying settings): F1 of
both settings with their three-level intervals (data draws, seeds, test samples), the majority
baseline, and Δ with its interval. Does a setting's gain fade as data grows, or persist?

`LearningCurve` is the result: exactly what ``learning_curve_<study>.csv`` holds, read back equal; the
report draws ``learning_curve_<study>.png`` from it (`mre.analysis.report`).
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from mre.analysis.tables import RowResult, SweepTable
from mre.results import write_stream_csv

N_TRAIN = "dataset.n_train"


@dataclass(frozen=True)
class CurvePoint:
    """One training-set size of one group: a row of the study's table."""

    group: str  # the row's other labels, "dataset.name=snips, model.name=..."
    n_train: int
    f1_a: float | None
    f1_a_lo: float | None
    f1_a_hi: float | None
    f1_b: float | None
    f1_b_lo: float | None
    f1_b_hi: float | None
    majority_f1: float | None
    diff: float | None
    ci_lo: float | None
    ci_hi: float | None
    n_draws: int | None
    n_seeds: int | None
    collapsed_a: int | None
    collapsed_b: int | None


COLUMNS = [f.name for f in fields(CurvePoint)]
_INTS = {"n_train", "n_draws", "n_seeds", "collapsed_a", "collapsed_b"}


@dataclass(frozen=True)
class LearningCurve:
    study: str  # the key in `STUDIES`
    points: tuple[CurvePoint, ...]  # by group, then training-set size

    @staticmethod
    def path(out_dir: Path, study: str) -> Path:
        return out_dir / f"learning_curve_{study}.csv"

    def groups(self) -> dict[str, list[CurvePoint]]:
        out: dict[str, list[CurvePoint]] = {}
        for p in self.points:
            out.setdefault(p.group, []).append(p)
        return out

    def write(self, out_dir: Path) -> Path:
        rows = (dict(zip(COLUMNS, astuple(p), strict=True)) for p in self.points)  # None -> "" (csv)
        return write_stream_csv(self.path(out_dir, self.study), COLUMNS, rows, quoting=csv.QUOTE_MINIMAL)

    @classmethod
    def read(cls, out_dir: Path, study: str) -> LearningCurve:
        with open(cls.path(out_dir, study), newline="", encoding="utf-8") as f:
            lines = list(csv.DictReader(f))
        return cls(study, tuple(CurvePoint(**{k: _value(k, line[k]) for k in COLUMNS}) for line in lines))


def _value(key: str, cell: str) -> str | int | float | None:
    if key == "group":
        return cell
    if cell == "":
        return None
    return int(cell) if key in _INTS else float(cell)


def _point(table: SweepTable, row: RowResult) -> CurvePoint | None:
    """The row as a point; None when its size is not a whole number or it has no F1 on either side."""
    try:
        n_train = int(row.labels[N_TRAIN])
    except ValueError:
        return None
    if row.f1_a is None or row.f1_b is None:
        return None
    group = ", ".join(f"{k}={row.labels[k]}" for k in table.label_keys if k != N_TRAIN)
    return CurvePoint(
        group, n_train, row.f1_a, row.f1_a_lo, row.f1_a_hi, row.f1_b, row.f1_b_lo, row.f1_b_hi,
        row.majority_f1, row.diff, row.ci_lo, row.ci_hi, row.n_draws, row.n_seeds, row.collapsed_a,
        row.collapsed_b,
    )  # fmt: skip


def learning_curve(table: SweepTable) -> LearningCurve | None:
    """The study's learning curve when its rows vary `dataset.n_train` over at least two sizes."""
    if N_TRAIN not in table.label_keys:
        return None
    points = sorted(
        (p for row in table.rows if (p := _point(table, row)) is not None), key=lambda p: (p.group, p.n_train)
    )
    if len({p.n_train for p in points}) < 2:
        return None
    return LearningCurve(table.study, tuple(points))
