"""Flow against gain across the settings of a sweep: does a stronger anchor -> q flow go with a larger
F1 gain from the anchor?

One point per (with-anchor run, its no-anchor partner of the same seed), for every study that
compares an anchor (gold or a control) against no anchor: x = the with-anchor run's flow strength,
the mean over layers of S_pq over the mean over layers of S_ww (a ratio, free of the loss scale;
`mre.analysis.runs.flow_source` says which flow file), y = the F1 gain of that seed on the shared
test samples. Points are grouped per data set and direction. With at least MIN_POINTS points a group
gets Spearman's rank correlation and a 95% percentile bootstrap interval (points resampled with
replacement by `mre.stats.bootstrap_statistic`; resamples whose ranks are constant are left out and
counted). The result (`FlowGain`) is written to ``flow_gain.csv`` (the points) and
``flow_gain_correlations.csv`` and read back equal; `mre.analysis.report` draws and tabulates it.

Few points make a coarse statistic: with 3 points rho is one of -1, -0.5, 0.5, 1. Points of one
group share the no-anchor runs' training noise and come from different settings and seeds; the
interval treats them as exchangeable, which they are not quite: read it as a description.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from mre.analysis.runs import Run, run_flow
from mre.analysis.tables import Table
from mre.setting import Setting
from mre.stats import bootstrap_statistic, percentile_interval

MIN_POINTS = 3
MIN_INFORMATIVE = 6  # below, a resample holds so few distinct points that its rho is nearly always ±1
POINTS = "flow_gain.csv"
CORRELATIONS = "flow_gain_correlations.csv"


@dataclass(frozen=True)
class Point:
    dataset: str
    direction: str
    setting: str  # the with-anchor side's label and the row's other varying settings
    seed: str
    run: str  # the with-anchor run's directory name
    s_pq: float
    s_ww: float
    gain: float
    source: str  # the flow file, relative to the run (`mre.analysis.runs.flow_source`)

    @property
    def strength(self) -> float:
        return self.s_pq / self.s_ww


@dataclass(frozen=True)
class Correlation:
    dataset: str
    direction: str
    n: int
    rho: float | None
    lo: float | None
    hi: float | None
    n_boot: int
    degenerate: int  # resamples left out (constant ranks)


@dataclass(frozen=True)
class FlowGain:
    """The points and, per (data set, direction) group in the points' order, the correlation."""

    points: tuple[Point, ...]
    correlations: tuple[Correlation, ...]

    def groups(self) -> dict[tuple[str, str], list[Point]]:
        """The points per (data set, direction), in the order of `correlations`."""
        return groups(self.points)

    def write(self, out_dir: Path) -> list[Path]:
        pts, corrs = out_dir / POINTS, out_dir / CORRELATIONS
        with open(pts, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(POINT_COLUMNS)
            for p in self.points:
                w.writerow([*astuple(p)[:-2], p.strength, p.gain, p.source])
        with open(corrs, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow([x.name for x in fields(Correlation)])
            w.writerows(astuple(c) for c in self.correlations)
        return [pts, corrs]

    @classmethod
    def read(cls, out_dir: Path) -> FlowGain:
        points = tuple(
            Point(r["dataset"], r["direction"], r["setting"], r["seed"], r["run"], float(r["s_pq"]),
                  float(r["s_ww"]), float(r["gain"]), r["flow_source"])
            for r in _read_csv(out_dir / POINTS)
        )  # fmt: skip
        corrs = tuple(
            Correlation(r["dataset"], r["direction"], int(r["n"]), _float(r["rho"]), _float(r["lo"]),
                        _float(r["hi"]), int(r["n_boot"]), int(r["degenerate"]))
            for r in _read_csv(out_dir / CORRELATIONS)
        )  # fmt: skip
        return cls(points, corrs)


POINT_COLUMNS = [
    "dataset", "direction", "setting", "seed", "run", "s_pq", "s_ww", "strength", "gain", "flow_source"
]  # fmt: skip


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _float(s: str) -> float | None:
    return None if s == "" else float(s)


def groups(pts: tuple[Point, ...] | list[Point]) -> dict[tuple[str, str], list[Point]]:
    """The points per (data set, direction), in their order of first appearance."""
    out: dict[tuple[str, str], list[Point]] = {}
    for p in pts:
        out.setdefault((p.dataset, p.direction), []).append(p)
    return out


def _flow_means(run: Run) -> tuple[float, float, str] | None:
    found = run_flow(run)
    if found is None or "S_pq" not in found.layers:
        return None
    s_pq, s_ww = float(np.nanmean(found.layers["S_pq"].mean)), float(np.nanmean(found.layers["S_ww"].mean))
    return (s_pq, s_ww, found.source) if np.isfinite(s_pq) and s_ww > 0 else None


def points(tables: list[Table]) -> list[Point]:
    """Every (anchor vs no anchor) seed pair with a flow file, once per with-anchor run."""
    out: dict[str, Point] = {}
    for t in tables:
        s = t.study
        if not s.vs_no_anchor:
            continue
        for row in t.rows:
            if row.comparison is None:
                continue
            other = ", ".join(f"{k}={row.labels[k]}" for k in t.label_keys[1:])
            for pair, (fa, fb) in zip(row.compared, row.comparison.per_seed, strict=True):
                means = _flow_means(pair.b)
                if means is None or str(pair.b.path) in out:
                    continue
                direction = Setting.from_flat(pair.b.flat).direction.value
                label = s.label_b + (f" ({other})" if other else "")
                s_pq, s_ww, source = means
                out[str(pair.b.path)] = Point(
                    str(row.labels["dataset.name"]), direction, label, str(pair.seed), pair.b.name, s_pq,
                    s_ww, fb - fa, source,
                )  # fmt: skip
    return list(out.values())


def correlate(group: list[Point], n_boot: int, seed: int) -> Correlation:
    """Spearman's rho of strength vs gain and its bootstrap interval (see the module docstring)."""
    first = group[0]
    if len(group) < MIN_POINTS:
        return Correlation(first.dataset, first.direction, len(group), None, None, None, n_boot, 0)
    x = np.array([p.strength for p in group])
    y = np.array([p.gain for p in group])

    def rho_of(i: np.ndarray) -> float:
        """Spearman's rho of the points `i`; NaN when either coordinate is constant (no ranking)."""
        return float(spearmanr(x[i], y[i]).statistic) if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0 else np.nan

    rho = rho_of(np.arange(len(group)))
    boots = bootstrap_statistic(len(group), rho_of, n_boot, seed)
    lo, hi = percentile_interval(boots) or (None, None)
    return Correlation(
        first.dataset, first.direction, len(group), None if np.isnan(rho) else rho, lo, hi, n_boot,
        int(np.isnan(boots).sum()),
    )  # fmt: skip


def flow_gain(tables: list[Table], n_boot: int, seed: int) -> FlowGain | None:
    """The flow-gain points and their correlations; None when no run has both a flow file and a
    no-anchor partner."""
    pts = points(tables)
    if not pts:
        return None
    return FlowGain(tuple(pts), tuple(correlate(g, n_boot, seed) for g in groups(pts).values()))
