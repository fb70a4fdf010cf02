"""Flow against gain across the settings of a sweep: does a stronger anchor -> q flow go with a larger
F1 gain from the anchor?

One point per (with-anchor run, its no-anchor partner of the same seed), for every study that
compares an anchor (gold or a control) against no anchor: x = the with-anchor run's flow strength,
the mean over layers of S_pq over the mean over layers of S_ww (a ratio, free of the loss scale;
`mre.analysis.sweep.flow_source` says which flow file), y = the F1 gain of that seed on the shared
test samples. Points are grouped per data set and direction. With at least MIN_POINTS points a group
gets Spearman's rank correlation and a 95% percentile bootstrap interval (points resampled with
replacement; resamples whose ranks are constant are left out and counted).

Few points make a coarse statistic: with 3 points rho is one of -1, -0.5, 0.5, 1. Points of one
group share the no-anchor runs' training noise and come from different settings and seeds; the
interval treats them as exchangeable, which they are not quite: read it as a description.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from mre.analysis.sweep import Table, describe_sources, run_flow
from mre.flow.plots import plot_flow_gain
from mre.setting import Setting

MIN_POINTS = 3
MIN_INFORMATIVE = 6  # below, a resample holds so few distinct points that its rho is nearly always ±1
FEW_POINTS = "too few points: the interval says little (a resample of n points holds at most n distinct)"


@dataclass(frozen=True)
class Point:
    dataset: str
    direction: str
    setting: str  # the with-anchor side's label and the row's other varying settings
    seed: Any
    run: str  # the with-anchor run's directory name
    s_pq: float
    s_ww: float
    gain: float
    source: str  # the flow file, relative to the run (`mre.analysis.sweep.flow_source`)

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
    sources: tuple[str, ...] = ()  # each point's flow file (they can differ between runs)


def _flow_means(run) -> tuple[float, float, str] | None:
    found = run_flow(run)
    if found is None or "S_pq" not in found[1]:
        return None
    src, stats = found
    s_pq, s_ww = float(np.nanmean(stats["S_pq"].mean)), float(np.nanmean(stats["S_ww"].mean))
    return (s_pq, s_ww, str(src.relative_to(run.path))) if np.isfinite(s_pq) and s_ww > 0 else None


def points(tables: list[Table]) -> list[Point]:
    """Every (anchor vs no anchor) seed pair with a flow file, once per with-anchor run."""
    out: dict[str, Point] = {}
    for t in tables:
        s = t.study
        if not s.anchored or s.label_a != "Text only":
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
                    str(row.labels["dataset.name"]),
                    direction,
                    label,
                    pair.seed,
                    pair.b.name,
                    s_pq,
                    s_ww,
                    fb - fa,
                    source,
                )
    return list(out.values())


def correlate(group: list[Point], n_boot: int, seed: int) -> Correlation:
    """Spearman's rho of strength vs gain and its bootstrap interval (see the module docstring)."""
    first, sources = group[0], tuple(p.source for p in group)
    if len(group) < MIN_POINTS:
        return Correlation(first.dataset, first.direction, len(group), None, None, None, n_boot, 0, sources)
    x = np.array([p.strength for p in group])
    y = np.array([p.gain for p in group])
    ranked = np.ptp(x) > 0 and np.ptp(y) > 0  # else no ranking: rho is undefined
    rho = float(spearmanr(x, y).statistic) if ranked else None
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(group), len(group))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boots.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5])) if boots else (None, None)
    return Correlation(
        first.dataset, first.direction, len(group), rho, lo, hi, n_boot, n_boot - len(boots), sources
    )


def groups(pts: list[Point]) -> dict[tuple[str, str], list[Point]]:
    out: dict[tuple[str, str], list[Point]] = {}
    for p in pts:
        out.setdefault((p.dataset, p.direction), []).append(p)
    return out


def write_points(pts: list[Point], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            [
                "dataset",
                "direction",
                "setting",
                "seed",
                "run",
                "s_pq",
                "s_ww",
                "strength",
                "gain",
                "flow_source",
            ]
        )
        for p in pts:
            w.writerow(
                [
                    p.dataset,
                    p.direction,
                    p.setting,
                    p.seed,
                    p.run,
                    p.s_pq,
                    p.s_ww,
                    p.strength,
                    p.gain,
                    p.source,
                ]
            )
    return path


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def markdown(corrs: list[Correlation]) -> str:
    lines = [
        "Per data set and direction, one point per with-anchor run (gold or control anchor) and seed: "
        "flow strength = mean over layers of S_pq / mean over layers of S_ww of that run, gain = its F1 "
        "minus the F1 of the same seed's run without the anchor. Spearman's ρ with a 95% bootstrap "
        f"interval (points resampled) once a group has {MIN_POINTS} points; few points make ρ coarse "
        "(3 points: ρ ∈ {−1, −0.5, 0.5, 1}). Points: [flow_gain.csv](flow_gain.csv).",
        "",
        "| data set | direction | points | Spearman ρ | 95% CI | resamples left out (ties) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in corrs:
        ci = "—" if c.lo is None else f"[{c.lo:+.2f}, {c.hi:+.2f}]"
        left = "" if c.rho is None and c.lo is None else f"{c.degenerate} of {c.n_boot}"
        notes = [FEW_POINTS] if MIN_POINTS <= c.n < MIN_INFORMATIVE else []
        if len(set(c.sources)) > 1:
            notes.append(f"flow files differ: {describe_sources(list(c.sources))}")
        note = "; ".join(notes)
        lines.append(f"| {c.dataset} | {c.direction} | {c.n} | {_fmt(c.rho)} | {ci} | {left} | {note} |")
    return "\n".join(lines)


def flow_gain(tables: list[Table], out_dir: Path, n_boot: int, seed: int) -> dict[str, Any] | None:
    """flow_gain.csv, flow_gain.png and the report's section; None when no run has both a flow file
    and a no-anchor partner."""
    pts = points(tables)
    if not pts:
        return None
    by_group = groups(pts)
    corrs = [correlate(g, n_boot, seed) for g in by_group.values()]
    panels = [
        (f"{c.dataset}, {c.direction}" + ("" if c.rho is None else f": ρ = {c.rho:+.2f}"), g)
        for c, g in zip(corrs, by_group.values(), strict=True)
    ]
    png = plot_flow_gain(
        [(title, [(p.strength, p.gain, p.setting) for p in g]) for title, g in panels],
        out_dir / "flow_gain.png",
    )
    return {
        "points": pts,
        "correlations": corrs,
        "csv": write_points(pts, out_dir / "flow_gain.csv"),
        "png": png,
        "markdown": markdown(corrs),
    }
