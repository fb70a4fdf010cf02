"""Knockout effects against relative depth: where in a model does q read the anchor, and is it the same
place in another model family?

Models differ in depth (SmolLM2-135M has 30 layers, Gemma 3 270M 18), so a layer-resolved knockout
(`analyze.py run_dir=... knockout.layers=["0-2","3-5",...]`) is only comparable across models on the
relative depth of its windows. For every finished run of a sweep that holds such a knockout
(``<run>/analysis*/knockout.csv`` with at least two layer windows, and the model's depth in its
``knockout_meta.json``), each window's effect against the baseline, of the knockout and of both
controls, becomes a point at the window's relative depth (its first layer / depth to its last + 1 /
depth).

Beside the knockouts, the same runs' per-layer flow at relative depth (layer + 1/2) / depth: S_pq / S_ww,
how strongly q reads the anchor against how strongly the text's words read each other, of the
fine-tuned model (the run's flow file) and of the base model (the training callback's epoch -1). A
knockout says where removing the reads matters; the flow says where the reads are.

`DepthProfile` is the result: exactly what ``depth_profile.csv`` and ``depth_flow.csv`` hold, read
back equal; the report draws ``depth_profile.png`` from it (`mre.analysis.report`).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mre.analysis.knockout_run import META_FILE, RESULT_FILE, Control, KnockoutEffects
from mre.analysis.runs import Run
from mre.flow.files import read_layers
from mre.results import write_stream_csv
from mre.rundir import FLOW
from mre.stats import LayerStats

log = logging.getLogger(__name__)

FILE = "depth_profile.csv"
FLOW_FILE = "depth_flow.csv"
BASE_FLOW = FLOW / "epoch_-1.csv"  # the training callback's measurement of the base model
STAGES = ("tuned", "base")
CONDITIONS = ("knockout", *(str(c) for c in Control))  # the knockout, then its controls


@dataclass(frozen=True)
class DepthPoint:
    """One layer window of one run's knockout, for one condition, against the baseline."""

    model: str  # the run's model.name
    run: str  # the run's name in the sweep
    edges: str  # the blocked edge set (anchor_q, ...)
    layers: str  # the window as given (`20-24`)
    n_layers: int  # the model's depth
    depth_lo: float  # first layer / n_layers
    depth_hi: float  # (last layer + 1) / n_layers
    condition: str  # knockout, random, receiver
    n: int  # test samples
    d_f1: float
    d_f1_lo: float
    d_f1_hi: float
    d_logp: float
    d_logp_lo: float
    d_logp_hi: float

    @property
    def depth(self) -> float:
        """The window's middle, as a share of the model's depth."""
        return (self.depth_lo + self.depth_hi) / 2


@dataclass(frozen=True)
class FlowDepthPoint:
    """One layer of one run's flow (means over the flow's samples)."""

    model: str
    run: str
    stage: str  # tuned (the run's flow file) or base (the callback's epoch -1)
    layer: int
    n_layers: int
    s_pq: float
    s_ww: float

    @property
    def depth(self) -> float:
        """The layer's middle, as a share of the model's depth."""
        return (self.layer + 0.5) / self.n_layers

    @property
    def ratio(self) -> float:
        """S_pq / S_ww (NaN where S_ww is 0)."""
        return self.s_pq / self.s_ww if self.s_ww else math.nan


COLUMNS = [f.name for f in fields(DepthPoint)]
FLOW_COLUMNS = [f.name for f in fields(FlowDepthPoint)]
_STR = {"model", "run", "edges", "layers", "condition", "stage"}
_INT = {"n_layers", "n", "layer"}


@dataclass(frozen=True)
class DepthProfile:
    points: tuple[DepthPoint, ...]  # by model, run, edge set, depth, condition
    flow: tuple[FlowDepthPoint, ...] = ()  # by model, run, stage, layer

    def models(self) -> list[str]:
        return list(dict.fromkeys(p.model for p in self.points))

    def edge_sets(self) -> list[str]:
        return list(dict.fromkeys(p.edges for p in self.points))

    def write(self, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        return [
            write_stream_csv(out_dir / name, columns, (asdict(p) for p in points), quoting=csv.QUOTE_MINIMAL)
            for name, columns, points in ((FILE, COLUMNS, self.points), (FLOW_FILE, FLOW_COLUMNS, self.flow))
        ]

    @classmethod
    def read(cls, out_dir: Path) -> DepthProfile:
        knocked = tuple(DepthPoint(**line) for line in _read(Path(out_dir) / FILE, COLUMNS))
        flow = tuple(FlowDepthPoint(**line) for line in _read(Path(out_dir) / FLOW_FILE, FLOW_COLUMNS))
        return cls(knocked, flow)


def _read(path: Path, columns: list[str]) -> list[dict[str, str | int | float]]:
    """The file's rows, typed; none when the file is not there (an analysis older than the flow part)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _value(k, line[k]) for k in columns} for line in csv.DictReader(f)]


def _value(key: str, cell: str) -> str | int | float:
    if key in _STR:
        return cell
    return int(cell) if key in _INT else float(cell)


def _knockout_dirs(run: Run) -> list[Path]:
    """The run's knockout results (`analysis/`, `analysis_layers/`, ...), in name order."""
    found = run.path.glob(f"analysis*/{RESULT_FILE}")
    return sorted(p.parent for p in found if (p.parent / META_FILE).exists())


def _run_points(run: Run, result: KnockoutEffects, n_layers: int) -> list[DepthPoint]:
    """The windows of each edge set that the knockout resolved into two or more, against the baseline."""
    vs_base = [e for e in result.effects if e.reference == "baseline" and e.condition.layers]
    model = str(run.get("model.name"))
    out = []
    for edges in dict.fromkeys(str(e.condition.edges) for e in vs_base):
        mine = [e for e in vs_base if str(e.condition.edges) == edges]
        if len({e.condition.layers for e in mine}) < 2:
            continue
        for e in mine:
            c = e.condition
            depth = (min(c.layers) / n_layers, (max(c.layers) + 1) / n_layers)
            f1 = (e.f1.diff, e.f1.lo, e.f1.hi)
            logp = (e.d_logp, e.d_logp_lo, e.d_logp_hi)
            where = (model, run.name, edges, c.spec, n_layers, *depth)
            out.append(DepthPoint(*where, c.kind, e.f1.n, *f1, *logp))
    return out


def _flow_points(run: Run, stage: str, layers: dict[str, LayerStats]) -> list[FlowDepthPoint]:
    if "S_pq" not in layers or "S_ww" not in layers:
        return []  # a run without an anchor has no S_pq
    pq, ww = layers["S_pq"].mean, layers["S_ww"].mean
    where = (str(run.get("model.name")), run.name, stage)
    return [FlowDepthPoint(*where, i, len(pq), float(pq[i]), float(ww[i])) for i in range(len(pq))]


def _run_flow(run: Run) -> list[FlowDepthPoint]:
    """The run's fine-tuned flow and, where the callback measured it, its base model's."""
    out = [] if run.flow is None else _flow_points(run, "tuned", run.flow.layers)
    base = run.path / BASE_FLOW
    if base.exists() and (run.flow is None or run.flow.source != str(BASE_FLOW)):
        out += _flow_points(run, "base", read_layers(base))
    return out


def depth_profile(runs: list[Run]) -> DepthProfile | None:
    """The layer-resolved knockouts of the finished runs against relative depth, with the flow of the
    finished runs of the same models; None when there is no such knockout."""
    points: list[DepthPoint] = []
    for run in runs:
        if not run.finished:
            continue
        for d in _knockout_dirs(run):
            result = KnockoutEffects.read(d)
            n_layers = result.meta.get("n_layers")
            if n_layers is None:
                log.warning("%s does not record the model's depth: run its knockout again to place it", d)
                continue
            points += _run_points(run, result, int(n_layers))
    if not points:
        return None
    points.sort(key=lambda p: (p.model, p.run, p.edges, p.depth_lo, CONDITIONS.index(p.condition)))
    models = {p.model for p in points}
    flow = [
        f for run in runs if run.finished and str(run.get("model.name")) in models for f in _run_flow(run)
    ]
    flow.sort(key=lambda f: (f.model, f.run, STAGES.index(f.stage), f.layer))
    return DepthProfile(tuple(points), tuple(flow))
