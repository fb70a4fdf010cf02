"""How each run of a sweep trained, as its dev split saw it: the dev F1 at every validation check.

A table gives where runs ended; a run trained to convergence is believed only when its path is
seen too: did it leave the majority baseline at once or after epochs, did it plateau or stop while
still rising, did it never learn? The same questions were answered by hand from each run's
`csv/metrics.csv` for every study so far; here the sweep report answers them (`dev_curves.png`, a
per-run table) from the runs' own logs.

`DevCurves` is the result: exactly what ``dev_curves.csv`` holds (one line per run and check), read
back equal; the per-run summary (`RunPath`) is derived from it.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from mre.analysis.runs import DevCheck, Run
from mre.results import write_stream_csv
from mre.stopping import above_majority

FILE = "dev_curves.csv"
PANEL_KEYS = ("dataset.name", "direction.name")  # always in a panel's title
VARYING_PANEL_KEYS = ("model.name", "dataset.n_train")  # in the title when the sweep varies them
NEAR_BEST = 0.9  # "learned": the first check at this share of the run's best dev F1


@dataclass(frozen=True)
class DevPoint:
    """One validation check of one run."""

    run: str  # relative to the sweep directory
    panel: str  # "snips, tli" (+ the model or training size when the sweep varies them)
    setting: str  # "text + WLI -> TLI"
    step: int
    f1: float
    majority_f1: float | None


COLUMNS = [f.name for f in fields(DevPoint)]


@dataclass(frozen=True)
class RunPath:
    """A run's dev F1 path in numbers: what the report's table shows."""

    run: str
    panel: str
    setting: str
    checks: int
    left_majority_step: int | None  # the first check above the dev majority baseline (None: never)
    near_best_step: int | None  # the first check at NEAR_BEST of the best dev F1 (None: never learned)
    best_f1: float
    best_step: int  # the first check at the best dev F1: the checkpoint a run trained to convergence tests
    last_f1: float
    last_step: int


@dataclass(frozen=True)
class DevCurves:
    points: tuple[DevPoint, ...]  # by run (the sweep's order), then step

    def runs(self) -> dict[str, list[DevPoint]]:
        out: dict[str, list[DevPoint]] = {}
        for p in self.points:
            out.setdefault(p.run, []).append(p)
        return out

    def panels(self) -> dict[str, dict[str, list[DevPoint]]]:
        """Per panel, each run's points."""
        out: dict[str, dict[str, list[DevPoint]]] = {}
        for run, pts in self.runs().items():
            out.setdefault(pts[0].panel, {})[run] = pts
        return out

    def paths(self) -> list[RunPath]:
        return [run_path(pts) for pts in self.runs().values()]

    def write(self, out_dir: Path) -> Path:
        rows = (dict(zip(COLUMNS, astuple(p), strict=True)) for p in self.points)  # None -> "" (csv)
        return write_stream_csv(out_dir / FILE, COLUMNS, rows, quoting=csv.QUOTE_MINIMAL)

    @classmethod
    def read(cls, out_dir: Path) -> DevCurves:
        with open(out_dir / FILE, newline="", encoding="utf-8") as f:
            lines = list(csv.DictReader(f))
        return cls(tuple(_point(line) for line in lines))


def _point(line: dict[str, str]) -> DevPoint:
    majority = line["majority_f1"]
    return DevPoint(
        line["run"], line["panel"], line["setting"], int(line["step"]), float(line["f1"]),
        float(majority) if majority else None,
    )  # fmt: skip


def run_path(points: list[DevPoint]) -> RunPath:
    """The summary of one run's checks (`points`, by step)."""
    first = points[0]
    above = [p.step for p in points if p.majority_f1 is not None and above_majority(p.f1, p.majority_f1)]
    best = max(points, key=lambda p: p.f1)  # max keeps the first of equal values
    never = not above and any(p.majority_f1 is not None for p in points)  # 90% of noise is no step
    near = None if never else next(p.step for p in points if p.f1 >= NEAR_BEST * best.f1)
    last = points[-1]
    return RunPath(
        first.run, first.panel, first.setting, len(points), above[0] if above else None, near, best.f1,
        best.step, last.f1, last.step,
    )  # fmt: skip


def _panel(run: Run, varying: tuple[str, ...]) -> str:
    keys = [*PANEL_KEYS, *varying]
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={run.get(k)}" if k in varying else str(run.get(k)) for k in keys
    )


def _points(run: Run, panel: str, checks: list[DevCheck]) -> list[DevPoint]:
    return [DevPoint(run.name, panel, run.setting, c.step, c.f1, c.majority_f1) for c in checks]


def dev_curves(runs: list[Run]) -> DevCurves | None:
    """The dev F1 paths of the finished runs that validated at least twice; None when there is none
    (a sweep whose runs validate once has no path to show)."""
    shown = [r for r in runs if r.finished and len(r.dev_checks) >= 2]
    if not shown:
        return None
    varying = tuple(k for k in VARYING_PANEL_KEYS if len({repr(r.get(k)) for r in shown}) > 1)
    return DevCurves(tuple(p for r in shown for p in _points(r, _panel(r, varying), r.dev_checks)))
