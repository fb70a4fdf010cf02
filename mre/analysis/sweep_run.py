"""The sweep analysis of a multirun directory: find its runs, compute the flow they lack (when asked),
build the studies' tables with draw- and seed-aware statistics, the flow-gain analysis, the
known-answer checks, the learning curves and the runs' dev F1 paths (`measure_sweep`), then write the
result and render it (`analyze_sweep`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from mre.analysis.depth_profile import depth_profile
from mre.analysis.dev_curves import dev_curves
from mre.analysis.flow_gain import flow_gain
from mre.analysis.known_answer import known_answer
from mre.analysis.learning_curve import learning_curve
from mre.analysis.report import flow_gain_markdown, render_sweep, table_markdown
from mre.analysis.runs import Run, discover_runs, never_started
from mre.analysis.studies import STUDIES
from mre.analysis.sweep_result import SweepResult
from mre.analysis.tables import Table, attach_flow, build_table, pair_rows
from mre.config import SweepOptions
from mre.errors import MissingInputError
from mre.flow.options import FlowAnalysisConfig
from mre.rundir import ANALYSIS
from mre.setting import Setting

log = logging.getLogger(__name__)


def compute_missing_flow(
    runs: list[Run], flow_opts: FlowAnalysisConfig, seed: int, cache_dir: str | None
) -> None:
    """Run the flow analysis on every finished generative with-anchor run without analysis/flow.csv."""
    from mre.analysis.flow_run import analyze_run

    for r in runs:
        if not (r.finished and r.get("task") == "generative" and Setting.from_flat(r.flat).with_anchor):
            continue
        if (r.path / ANALYSIS / "flow.csv").exists():
            continue
        log.info("flow analysis of run #%d (%s)", r.index, r.name)
        analyze_run(r.path, flow_opts, seed, cache_dir)


def measure_sweep(
    sweep_dir: Path,
    runs: list[Run],
    opts: SweepOptions,
    seed: int,
) -> SweepResult:
    """The tables, known-answer checks and flow-gain analysis of the sweep's runs."""
    tables: list[Table] = []
    for study in STUDIES.values():
        t = build_table(study, runs, opts)
        if t is None:
            continue
        pair_rows(t, opts, seed)
        attach_flow(t)
        tables.append(t)
    results = {t.study.key: t.result() for t in tables}
    known = {k: ka for k, t in results.items() if (ka := known_answer(t)) is not None}
    curves = {k: c for k, t in results.items() if (c := learning_curve(t)) is not None}
    return SweepResult(
        sweep_dir,
        runs,
        never_started(sweep_dir, runs),
        opts.n_boot,
        opts.n_perm,
        results,
        known,
        flow_gain(tables, opts.n_boot, seed),
        curves,
        opts.collapse_share,
        depth_profile(runs),
        dev_curves(runs),
    )


def analyze_sweep(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    opts: SweepOptions | None = None,
    flow_opts: FlowAnalysisConfig | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
) -> SweepResult:
    """Tables, figures and report.md of a multirun directory (default: `<sweep_dir>/analysis/`)."""
    opts = opts or SweepOptions()
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / ANALYSIS
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console()
    runs = discover_runs(sweep_dir)
    if not runs:
        raise MissingInputError(f"no runs (directories with .hydra/config.yaml) below {sweep_dir}")
    for r in runs:
        if not r.finished:
            console.print(f"run #{r.index} {r.name}: {r.problem}", style="yellow", markup=False)
    if opts.compute_flow:
        compute_missing_flow(runs, flow_opts or FlowAnalysisConfig(), seed, cache_dir)
    result = measure_sweep(sweep_dir, runs, opts, seed)
    for m in result.missing:
        console.print(f"never started: {m}", style="yellow", markup=False)
    result.write(out_dir)
    for key, t in result.tables.items():
        if key in result.known:
            verdict = "PASS" if result.known[key].recovered else "FAIL"
            console.print(f"known-answer check ({key}): {verdict}", style="bold", markup=False)
        console.print(f"\n{STUDIES[key].title}", style="bold", markup=False)
        text = table_markdown(result, t, link_prefix=None)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if result.flow_gain is not None:
        console.print("\nFlow and gain across settings", style="bold", markup=False)
        console.print(flow_gain_markdown(result.flow_gain), markup=False, highlight=False, soft_wrap=True)
    report = render_sweep(result, out_dir)
    console.print(f"\nreport: {report}", markup=False)
    return result
