"""The sweep report: a `SweepResult` rendered as Markdown tables, flow grids, the flow-gain figure and
`analysis/report.md`.

One flow panel per data set (and per other varying setting) for each direction, as the paper's
Figures 4 and 5, and `report.md` with relative links to every run's directory and config, so the
report reads on GitHub next to the runs. Everything here renders: the numbers come from
`mre.analysis.sweep_run` (`SweepResult`).
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mre.analysis.depth_profile import CONDITIONS, STAGES, DepthPoint, DepthProfile, FlowDepthPoint
from mre.analysis.depth_profile import FILE as DEPTH_CSV
from mre.analysis.depth_profile import FLOW_FILE as DEPTH_FLOW_CSV
from mre.analysis.dev_curves import FILE as DEV_CSV
from mre.analysis.dev_curves import NEAR_BEST, DevCurves
from mre.analysis.flow_gain import MIN_INFORMATIVE, MIN_POINTS, POINTS, FlowGain
from mre.analysis.known_answer import KnownAnswer
from mre.analysis.learning_curve import LearningCurve
from mre.analysis.runs import Run, describe_sources, run_flow
from mre.analysis.studies import STUDIES
from mre.analysis.sweep_result import SweepResult
from mre.analysis.tables import REFUSED, RowResult, SweepTable
from mre.flow.plots import (
    plot_depth_profile,
    plot_dev_curves,
    plot_flow_gain,
    plot_grid,
    plot_learning_curve,
)
from mre.setting import Direction
from mre.stats import LayerStats, p_text
from mre.stopping import LEARNING_MARGIN

# --------------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _sig(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.4f}"


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _link(res: SweepResult, name: str, prefix: str | None = "..") -> str:
    if not name:
        return "—"
    index = res.run(name).index
    return f"#{index}" if prefix is None else f"[#{index}](<{prefix}/{name}/>)"


def _label_header(key: str) -> str:
    return "data set" if key == "dataset.name" else key.removeprefix("dataset.synthetic.")


def table_columns(t: SweepTable) -> list[str]:
    s = STUDIES[t.study]
    cols = [_label_header(k) for k in t.label_keys]
    cols += [s.label_a, s.label_b, "majority F1", "Δ", "95% CI", "p", "p (BH)", "draws", "seeds", "n"]
    cols.append("variance of Δ: draw / seed / test")
    if s.anchored:
        cols.append(f"S_pq ({s.label_b})")
    return [*cols, "runs", "note"]


def _pairs_links(res: SweepResult, row: RowResult, prefix: str | None) -> str:
    return ", ".join(f"{_link(res, x.run_a, prefix)} vs {_link(res, x.run_b, prefix)}" for x in row.seeds)


def _note(row: RowResult) -> str:
    """The row's note, a refusal first and in bold."""
    if not row.refused:
        return row.note
    return "**refused**: " + row.note.removeprefix(REFUSED).removesuffix("; ")


def _f1_cell(f1: float | None, collapsed: int | None, row: RowResult) -> str:
    """F1, with how many of the compared runs collapsed when any did."""
    runs = sum(1 for x in row.seeds if x.collapsed_a is not None)
    return _num(f1) + (f" (⚠ {collapsed}/{runs} collapsed)" if collapsed else "")


def _diff_cell(row: RowResult) -> str:
    if row.both_collapsed:
        return "both collapsed"
    return _signed(row.diff) + (" (⚠ draws disagree in sign)" if row.draws_disagree else "")


def variance_text(row: RowResult) -> str:
    """The shares of the variance of one run's Δ (— where a component is not estimable)."""
    shares = row.variance_shares()
    if shares is None:
        return "—"
    return " / ".join(f"{shares[k]:.0%}" if k in shares else "—" for k in ("draw", "seed", "test"))


def _row_cells(res: SweepResult, t: SweepTable, row: RowResult, link_prefix: str | None) -> list[str]:
    cells = [_cell(row.labels[k]) for k in t.label_keys]
    cells += [_f1_cell(row.f1_a, row.collapsed_a, row), _f1_cell(row.f1_b, row.collapsed_b, row)]
    cells += [_num(row.majority_f1), _diff_cell(row)]
    if row.compared:
        cells += [
            f"[{row.ci_lo:+.4f}, {row.ci_hi:+.4f}]",
            p_text(row.p, row.n_perm),
            p_text(row.p_bh, row.n_perm),
            str(row.n_draws),
            str(row.n_seeds),
            str(row.n),
            variance_text(row),
        ]
    else:
        cells += ["—"] * 7
    if STUDIES[t.study].anchored:
        cells.append(_sig(row.s_pq_b))
    cells.append(_pairs_links(res, row, link_prefix))
    cells.append(_cell(_note(row)))
    return cells


def table_markdown(res: SweepResult, t: SweepTable, link_prefix: str | None = "..") -> str:
    """The table in Markdown; runs link to their directories (relative to link_prefix; None: no links)."""
    cols = table_columns(t)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in t.rows:
        lines.append("| " + " | ".join(_row_cells(res, t, row, link_prefix)) + " |")
    return "\n".join(lines)


def _row_title(t: SweepTable, row: RowResult) -> str:
    parts = [str(row.labels["dataset.name"])]
    parts += [f"{_label_header(k)}={row.labels[k]}" for k in t.label_keys[1:]]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------


def plot_flow_grid(res: SweepResult, t: SweepTable, path: Path) -> Path | None:
    """The flow grid of a study's table (`flow_panels`); None when no row has flow."""
    study = STUDIES[t.study]
    panels = flow_panels(res, t)
    if not panels:
        return None
    return plot_grid(panels, path, f"information flow, {study.label_b} ({study.kind.upper()} output)")


def flow_panels(res: SweepResult, t: SweepTable) -> list[tuple[str, dict[str, LayerStats]]]:
    """One panel per row (data set and varying settings): the flow curves of the row's first seed
    whose with-anchor run has flow (the other seeds' and draws' curves are in their own run
    directories); the title names that run's data draw when the row has several."""
    study = STUDIES[t.study]
    panels = []
    for row in t.rows:
        found = next(
            (
                (x, f)
                for x in row.seeds
                if x.run_b and res.run(x.run_b).finished and (f := run_flow(res.run(x.run_b))) and f.layers
            ),
            None,
        )
        if found is None:
            continue
        x, flow = found
        f1 = f", F1 {x.f1_b:.3f}" if x.f1_b is not None else ""
        draw = f"draw {x.draw}, " if len({s.draw for s in row.seeds}) > 1 else ""
        seed = f" ({draw}seed {x.seed}{f1})" if len(row.seeds) > 1 else f1.replace(", ", " ")
        panels.append((f"{_row_title(t, row)}\n{study.label_b}{seed}", flow.layers))
    return panels


def plot_gain(fg: FlowGain, path: Path) -> Path:
    """flow_gain.png: one scatter of flow strength against gain per (data set, direction)."""
    panels = [
        (f"{c.dataset}, {c.direction}" + ("" if c.rho is None else f": ρ = {c.rho:+.2f}"), g)
        for c, g in zip(fg.correlations, fg.groups().values(), strict=True)
    ]
    points = [(title, [(p.strength, p.gain, p.setting) for p in g]) for title, g in panels]
    return plot_flow_gain(points, path)


def curve_png(key: str) -> str:
    """The learning curve figure's file name of a study."""
    return f"learning_curve_{key}.png"


def plot_curve(curve: LearningCurve, path: Path) -> Path:
    """learning_curve_<study>.png: per group, F1 of both settings and Δ against the training-set size."""
    s = STUDIES[curve.study]
    panels = []
    for group, pts in curve.groups().items():
        x = [p.n_train for p in pts]
        sides = {
            s.label_a: ([p.f1_a for p in pts], [p.f1_a_lo for p in pts], [p.f1_a_hi for p in pts]),
            s.label_b: ([p.f1_b for p in pts], [p.f1_b_lo for p in pts], [p.f1_b_hi for p in pts]),
        }
        diff = ([p.diff for p in pts], [p.ci_lo for p in pts], [p.ci_hi for p in pts])
        panels.append((group, x, sides, diff, [p.majority_f1 for p in pts]))
    return plot_learning_curve(panels, path)


def curve_markdown(curve: LearningCurve) -> str:
    """The learning curve's points as a table."""
    s = STUDIES[curve.study]
    lines = [
        f"| group | training texts | {s.label_a} | 95% CI | {s.label_b} | 95% CI | majority F1 | Δ | 95% CI "
        "| draws | seeds | collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in curve.points:
        ci = [
            "—" if lo is None else f"[{lo:.4f}, {hi:.4f}]"
            for lo, hi in ((p.f1_a_lo, p.f1_a_hi), (p.f1_b_lo, p.f1_b_hi))
        ]
        d_ci = "—" if p.ci_lo is None else f"[{p.ci_lo:+.4f}, {p.ci_hi:+.4f}]"
        collapsed = "—" if p.collapsed_a is None else f"{p.collapsed_a} / {p.collapsed_b}"
        lines.append(
            f"| {_cell(p.group)} | {p.n_train} | {_num(p.f1_a)} | {ci[0]} | {_num(p.f1_b)} | {ci[1]} "
            f"| {_num(p.majority_f1)} | {_signed(p.diff)} | {d_ci} | {p.n_draws or '—'} | {p.n_seeds or '—'} "
            f"| {collapsed} |"
        )
    return "\n".join(lines)


DEV_PNG = "dev_curves.png"


def plot_dev(curves: DevCurves, path: Path) -> Path:
    """dev_curves.png: per panel (data set, direction, and the model or training size where they vary)
    every run's dev F1 against the step, coloured by setting, with the dev majority baselines."""
    panels = []
    for title, runs in curves.panels().items():
        by_setting: dict[str, list[tuple[list[int], list[float]]]] = {}
        baselines: dict[tuple, tuple[list[int], list[float]]] = {}
        for pts in runs.values():
            by_setting.setdefault(pts[0].setting, []).append(([p.step for p in pts], [p.f1 for p in pts]))
            known = [(p.step, p.majority_f1) for p in pts if p.majority_f1 is not None]
            if known:
                steps, values = (list(x) for x in zip(*known, strict=True))
                baselines.setdefault(tuple(values), (steps, values))  # one line per distinct dev split
        panels.append((title, by_setting, list(baselines.values())))
    return plot_dev_curves(panels, path)


def dev_markdown(res: SweepResult, curves: DevCurves) -> str:
    """Per run of `curves` (the sweep's `res.dev`): its checks, when its dev F1 first rose above the
    dev majority baseline and when it reached NEAR_BEST of its best, its best and last dev F1 and how
    its training ended (from `res`'s runs)."""
    lines = [
        f"| run | panel | setting | checks | above majority from step | {NEAR_BEST:.0%} of best from step "
        "| best dev F1 (step) | last dev F1 (step) | training ended |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in curves.paths():
        left = "never" if p.left_majority_step is None else str(p.left_majority_step)
        near = "—" if p.near_best_step is None else str(p.near_best_step)
        lines.append(
            f"| [{_cell(_short(p.run))}](<../{p.run}/>) | {_cell(p.panel)} | {_cell(p.setting)} | {p.checks} "
            f"| {left} | {near} | {p.best_f1:.4f} ({p.best_step}) "
            f"| {p.last_f1:.4f} ({p.last_step}) | {_ending_text(res.run(p.run))} |"
        )
    return "\n".join(lines)


DEPTH_PNG = "depth_profile.png"


def _windows(points: list[DepthPoint]) -> dict[tuple[float, float], list[DepthPoint]]:
    """The points of one (model, edge set, condition) by layer window, over the model's runs."""
    out: dict[tuple[float, float], list[DepthPoint]] = {}
    for p in points:
        out.setdefault((p.depth_lo, p.depth_hi), []).append(p)
    return dict(sorted(out.items()))


def _envelope(pts: list[DepthPoint], key: str) -> tuple[float, float, float]:
    """The runs' mean effect, and the lowest lower and highest upper bound of their 95% intervals."""
    mean = sum(getattr(p, key) for p in pts) / len(pts)
    return mean, min(getattr(p, f"{key}_lo") for p in pts), max(getattr(p, f"{key}_hi") for p in pts)


def _select(profile: DepthProfile, model: str, edges: str, kind: str) -> list[DepthPoint]:
    return [p for p in profile.points if p.model == model and p.edges == edges and p.condition == kind]


def _flow_series(profile: DepthProfile, model: str, stage: str) -> dict[int, list[FlowDepthPoint]]:
    """One model's flow points of one stage by layer, over its runs."""
    out: dict[int, list[FlowDepthPoint]] = {}
    for f in profile.flow:
        if f.model == model and f.stage == stage:
            out.setdefault(f.layer, []).append(f)
    return dict(sorted(out.items()))


def _ratio_range(pts: list[FlowDepthPoint]) -> tuple[float, float, float]:
    """The runs' mean S_pq / S_ww at a layer, with the lowest and highest run's."""
    ratios = [f.ratio for f in pts]
    return sum(ratios) / len(ratios), min(ratios), max(ratios)


def plot_depth(profile: DepthProfile, path: Path) -> Path:
    """depth_profile.png: S_pq / S_ww of the flow, and Δ log p of each edge set's knockout and
    controls, against relative depth."""
    panels = []
    if profile.flow:
        by_model = {}
        for model in profile.models():
            by_stage = {}
            for stage in STAGES:
                layers = _flow_series(profile, model, stage)
                if layers:
                    cols = [(pts[0].depth, *_ratio_range(pts)) for pts in layers.values()]
                    by_stage[stage] = tuple(list(c) for c in zip(*cols, strict=True))
            if by_stage:
                by_model[model] = by_stage
        panels.append(("flow: q reads the anchor (range over runs)", "S_pq / S_ww", by_model))
    for edges in profile.edge_sets():
        by_model = {}
        for model in profile.models():
            by_kind = {}
            for kind in CONDITIONS:
                windows = _windows(_select(profile, model, edges, kind))
                if windows:
                    cols = [(pts[0].depth, *_envelope(pts, "d_logp")) for pts in windows.values()]
                    by_kind[kind] = tuple(list(c) for c in zip(*cols, strict=True))
            if by_kind:
                by_model[model] = by_kind
        panels.append((f"knockout of {edges}", "Δ log p(gold target)", by_model))
    return plot_depth_profile(panels, path)


def flow_depth_markdown(profile: DepthProfile) -> str:
    """Per model and stage: where S_pq / S_ww (the runs' mean per layer) peaks, and which layers reach
    half the peak, at relative depth."""
    lines = [
        "| model | flow | runs | layers | peak S_pq / S_ww | at layer (relative depth) "
        "| layers at ≥ half the peak (relative depth) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in profile.models():
        for stage in STAGES:
            layers = _flow_series(profile, model, stage)
            if not layers:
                continue
            mean = {layer: _ratio_range(pts)[0] for layer, pts in layers.items()}
            peak = max(mean, key=lambda layer: mean[layer])
            half = [layer for layer, r in mean.items() if r >= mean[peak] / 2]
            n_layers = layers[peak][0].n_layers
            runs = len({f.run for pts in layers.values() for f in pts})
            at = {i: f"{i} ({layers[i][0].depth:.2f})" for i in (peak, min(half), max(half))}
            lines.append(
                f"| {_cell(model)} | {stage} | {runs} | {n_layers} | {mean[peak]:.3f} | {at[peak]} "
                f"| {len(half)}: {at[min(half)]} to {at[max(half)]} |"
            )
    return "\n".join(lines)


def depth_markdown(profile: DepthProfile) -> str:
    """Per model, edge set and layer window: the runs' mean effects with their intervals' envelope."""
    lines = [
        "| model | edges | layers | relative depth | runs | Δ log p knockout | random | receiver "
        "| ΔF1 knockout | random | receiver |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in profile.models():
        for edges in profile.edge_sets():
            knocked = _windows(_select(profile, model, edges, "knockout"))
            controls = {k: _windows(_select(profile, model, edges, k)) for k in CONDITIONS[1:]}
            for w, pts in knocked.items():
                cells = []
                for key in ("d_logp", "d_f1"):
                    for by_w in (knocked, *controls.values()):
                        if w not in by_w:
                            cells.append("—")
                            continue
                        m, lo, hi = _envelope(by_w[w], key)
                        cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
                lines.append(
                    f"| {_cell(model)} | {edges} | {pts[0].layers} | {w[0]:.2f}–{w[1]:.2f} | {len(pts)} | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------------

STATS_NOTE = (
    "{a} and {b}: F1 averaged over the data draws (`dataset.split_seed`) of the mean over each draw's "
    "training seeds (runs that differ only in `seed` and `dataset.split_seed` are one row); Δ = F1({b}) − "
    "F1({a}), each run pair on its draw's test samples. 95% CI: hierarchical bootstrap, {n_boot} "
    "resamples: the draws are resampled, then each drawn draw's seeds, then each drawn seed's test "
    "samples (the same resample scores both settings), percentile interval; with one draw it covers "
    "seeds and test samples only, not which texts were drawn, and with one seed test-sample noise only "
    "(`{key}_seeds.csv` has every run pair). p: two-sided paired permutation test, {n_perm} random "
    "swaps of the two settings' predictions within each (draw, seed, test sample): it asks whether these "
    "trained runs differ, so with few seeds it can be small while the CI, which also covers training "
    "noise, contains 0; read the CI for the effect of the setting. p (BH): Benjamini–Hochberg "
    "adjusted across this table's rows. Variance of Δ: the shares of the variance of one run's Δ due "
    "to the data draw, the training seed and the test samples (ANOVA estimator of a nested "
    "random-effects model, the test-sample part from each run's bootstrap; a negative estimate counts "
    'as 0; — where the design cannot estimate it: one draw, or one seed per draw). "draws disagree in '
    "sign\": one draw's Δ is above 0 and another's below. Majority F1: the F1 of answering the most "
    "frequent gold answer for every test text; a run collapsed when it gave one answer to at least "
    "{share:.0%} of the test texts or its dev F1 never rose above the dev majority baseline by more "
    "than {margin} (⚠ k/n: k of the n compared runs); a row whose runs all collapsed on both sides is "
    'not compared ("both collapsed"). F1 is recomputed from each run\'s `predictions.jsonl` ({metric}).'
)
FEW_POINTS = "too few points: the interval says little (a resample of n points holds at most n distinct)"


def _metric_text(kind: Direction) -> str:
    return "micro-F1 over (type, span) pairs" if kind is Direction.wli else "macro-F1 over the text labels"


def known_answer_markdown(ke: KnownAnswer) -> str:
    s = STUDIES[ke.study]
    lines = [
        f"### Known-answer check ({ke.study}): planted mutual reinforcement",
        "",
        "The synthetic generator plants the effect with a tunable strength; the gain of "
        f"*{s.label_b}* over *{s.label_a}* should be indistinguishable from 0 at strength 0 (the "
        "anchor then carries no information) and should grow with the strength. Intervals and p-values are "
        f"seed-aware (at least {ke.min_seeds} seeds per level are required).",
        "",
        "| "
        + " | ".join(_label_header(k) for k in ke.keys)
        + f" | {s.label_a} | {s.label_b} | gain Δ F1 | 95% CI | p | p (BH) | seeds "
        + "| mean S_pq | mean S_pq / mean S_ww |",
        "|" + "---|" * (len(ke.keys) + 9),
    ]
    for lv in ke.levels:
        lines.append(
            "| "
            + " | ".join(f"{v:g}" for v in lv.level)
            + f" | {lv.f1_a:.4f} | {lv.f1_b:.4f} | {lv.diff:+.4f} | [{lv.lo:+.4f}, {lv.hi:+.4f}] "
            + f"| {p_text(lv.p, lv.n_perm)} | {p_text(lv.p_bh, lv.n_perm)} | {lv.n_seeds} | {_sig(lv.s_pq)} "
            + f"| {_sig(lv.s_pq_ratio)} |"
        )
    lines += [
        "",
        "S_pq: the with-anchor runs' anchor → target flow averaged over layers and seeds; the ratio to S_ww "
        "(all other pairs) removes the loss scale (saliency shrinks as the model grows confident).",
    ]
    lines += ["", "Checks:", ""]
    lines += [f"- {'✅' if ok else '❌'} {name}" for name, ok in ke.checks.items()]
    verdict = "**PASS**: the planted effect is recovered" if ke.recovered else "**FAIL**: not recovered"
    lines += ["", f"Verdict: {verdict} by this sweep."]
    if ke.s_pq_trend:
        lines.append(
            f"From no to strong reinforcement, mean S_pq is {ke.s_pq_trend} and S_pq / S_ww is "
            f"{ke.s_pq_ratio_trend or 'n/a'}."
        )
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def flow_gain_markdown(fg: FlowGain) -> str:
    lines = [
        "Per data set and direction, one point per with-anchor run (gold or control anchor) and seed: "
        "flow strength = mean over layers of S_pq / mean over layers of S_ww of that run, gain = its F1 "
        "minus the F1 of the same seed's run without the anchor. Spearman's ρ with a 95% bootstrap "
        f"interval (points resampled) once a group has {MIN_POINTS} points; few points make ρ coarse "
        f"(3 points: ρ ∈ {{−1, −0.5, 0.5, 1}}). Points: [{POINTS}]({POINTS}).",
        "",
        "| data set | direction | points | Spearman ρ | 95% CI | resamples left out (ties) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, group in zip(fg.correlations, fg.groups().values(), strict=True):
        ci = "—" if c.lo is None else f"[{c.lo:+.2f}, {c.hi:+.2f}]"
        left = "" if c.rho is None and c.lo is None else f"{c.degenerate} of {c.n_boot}"
        notes = [FEW_POINTS] if MIN_POINTS <= c.n < MIN_INFORMATIVE else []
        sources = [p.source for p in group]
        if len(set(sources)) > 1:
            notes.append(f"flow files differ: {describe_sources(sources)}")
        note = "; ".join(notes)
        lines.append(f"| {c.dataset} | {c.direction} | {c.n} | {_fmt(c.rho)} | {ci} | {left} | {note} |")
    return "\n".join(lines)


def _short(name: str, n: int = 32) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def collapsed_runs(res: SweepResult) -> set[str]:
    """The names of the runs that some table found collapsed."""
    return {
        name
        for t in res.tables.values()
        for row in t.rows
        for x in row.seeds
        for name, flag in ((x.run_a, x.collapsed_a), (x.run_b, x.collapsed_b))
        if flag
    }


def _ending_text(r: Run) -> str:
    """`early stopping, step 120`, `budget, step 240`: why and where its training stopped."""
    e = r.ending
    return "—" if e is None else f"{e.reason.value.replace('_', ' ')}, step {e.global_step}"


def _runs_md(runs: list[Run], collapsed: set[str]) -> str:
    lines = [
        "| # | run | status | training ended | data set | direction | setting | model | test/f1 | flow "
        "| config |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        status = "finished" if r.finished else f"**{_cell(r.problem)}**"
        src = r.flow_file
        flow = f"[{src}](<../{r.name}/{src}>)" if src else "—"
        overrides = " ".join(r.overrides) or "—"
        mark = " (⚠ collapsed)" if r.name in collapsed else ""
        lines.append(
            f"| {r.index} | [{_cell(_short(r.name))}](<../{r.name}/>) | {status} | {_ending_text(r)} "
            f"| {r.get('dataset.name', '—')} "
            f"| {r.get('direction.name', '—') if r.get('task') != 'fewshot' else 'tli (few-shot)'} "
            f"| {r.setting} | {r.get('model.name', '—')} | {_num(r.f1)}{mark} | {flow} "
            f"| [config](<../{r.name}/.hydra/config.yaml>) `{_cell(overrides)}` |"
        )
    return "\n".join(lines)


def _shared_config(runs: list[Run]) -> str:
    readable = [r for r in runs if r.flat]
    if not readable:
        return ""
    keys = sorted(set.intersection(*(set(r.flat) for r in readable)))
    shared = [k for k in keys if len({repr(r.flat[k]) for r in readable}) == 1 and not k.startswith("paths.")]
    nested: dict[str, Any] = {}
    for k in shared:
        *heads, last = k.split(".")
        node = nested
        for h in heads:
            node = node.setdefault(h, {})
        v = readable[0].flat[k]
        node[last] = list(v) if isinstance(v, tuple) else v
    body = OmegaConf.to_yaml(OmegaConf.create(nested)).strip()
    return (
        "<details><summary>Settings shared by every run (flattened; each run's full config is linked above)"
        f"</summary>\n\n```yaml\n{body}\n```\n\n</details>"
    )


def report_markdown(res: SweepResult, figures: dict[str, Path], gain_png: Path | None) -> str:
    """report.md: missing runs, the studies' tables (and known-answer checks), flow against gain, the
    flow grids (`figures`: file stem -> drawn figure) and the runs."""
    runs, missing, unfinished = res.runs, res.missing, res.unfinished
    finished = len(runs) - len(unfinished)
    md = [
        "# MRE sweep report",
        "",
        f"Sweep directory: `{res.sweep_dir}` — {len(runs)} runs found, {finished} finished, "
        f"{len(unfinished)} not finished, {len(missing)} never started. "
        f"Generated {datetime.now():%Y-%m-%d %H:%M} by `python analyze.py sweep_dir={res.sweep_dir}`.",
        "",
    ]
    if unfinished or missing:
        md += ["## Missing runs", "", "Left out of the tables below.", ""]
        for r in unfinished:
            md.append(f"- [#{r.index} `{r.name}`](<../{r.name}/>): {r.problem}")
        for m in missing:
            md.append(f"- never started: `{m}`")
        md.append("")
    if not res.tables:
        md += ["No run of this sweep belongs to one of the paper's comparisons (Tables 2–4).", ""]
    for key, t in res.tables.items():
        s = STUDIES[key]
        md += [f"## {s.title}", "", table_markdown(res, t), ""]
        md += [
            STATS_NOTE.format(
                a=s.label_a,
                b=s.label_b,
                key=key,
                n_boot=res.n_boot,
                n_perm=res.n_perm,
                share=res.collapse_share,
                margin=LEARNING_MARGIN,
                metric=_metric_text(s.kind),
            ),
            "Files: "
            + ", ".join(f"[{f}]({f})" for f in (f"{key}.md", f"{key}.csv", f"{key}_seeds.csv"))
            + ".",
            "",
        ]
        if any(r.refused for r in t.rows):
            md += ["Rows marked **refused** compared runs evaluated on different test samples.", ""]
        if key in res.known:
            md += [known_answer_markdown(res.known[key]), ""]
        if key in res.curves:
            md += [
                f"### Learning curve ({key})",
                "",
                "F1 of both settings and Δ against the number of training texts (`dataset.n_train`); bands "
                "and intervals are the three-level bootstrap's (data draws, seeds, test samples), the dashed "
                "line the majority baseline; collapsed: runs of each side that collapsed. "
                f"Points: [learning_curve_{key}.csv](learning_curve_{key}.csv).",
                "",
                curve_markdown(res.curves[key]),
                "",
                f"![learning curve {key}]({curve_png(key)})",
                "",
            ]
    if res.dev is not None:
        md += [
            "## Training: dev F1 at each check",
            "",
            "Every finished run that validated at least twice, from its own log (`csv/metrics.csv`): its "
            "dev F1 at each check against the global step, one colour per setting, the dev majority "
            "baseline dashed (one line per dev split). Above majority from: the first check whose dev F1 "
            f"beat that baseline by more than {LEARNING_MARGIN} (never: the run did not learn beyond "
            "answering the most frequent label; the margin is the early stopper's, a few right answers, so "
            f"that one lucky answer is not learning); {NEAR_BEST:.0%} of best from: the first check at "
            "that share of the run's best dev F1, when it had learned most of what it would (— for a run "
            "that never learned); best: the first check at the highest dev F1, the checkpoint "
            f"that a run trained with early stopping is tested at. Points: [{DEV_CSV}]({DEV_CSV}).",
            "",
            dev_markdown(res, res.dev),
            "",
            f"![dev F1 at each check]({DEV_PNG})",
            "",
        ]
    if res.depth is not None:
        md += [
            "## Knockout against relative depth",
            "",
            "Each layer window of every run's layer-resolved attention knockout "
            "(`<run>/analysis*/knockout.csv`) placed at its relative depth (first layer / depth to last "
            "layer + 1 / depth), so models of different depth compare. Effects against the unablated "
            "baseline: the runs' mean, in brackets the lowest lower and highest upper bound of the runs' "
            "own 95% intervals (over test samples). random: as many random edges in the same layers; "
            "receiver: as many edges into the same rows from other sources. Points: "
            f"[{DEPTH_CSV}]({DEPTH_CSV}).",
            "",
            depth_markdown(res.depth),
            "",
        ]
        if res.depth.flow:
            md += [
                "The same models' flow at relative depth ((layer + 1/2) / depth): S_pq / S_ww per layer, the "
                "mean over the finished runs with an anchor (tuned: each run's flow file; base: the training "
                "callback's measurement before training, `flow/epoch_-1.csv`); the figure's bars span the "
                f"lowest to the highest run. Points: [{DEPTH_FLOW_CSV}]({DEPTH_FLOW_CSV}).",
                "",
                flow_depth_markdown(res.depth),
                "",
            ]
        md += [f"![knockout against relative depth]({DEPTH_PNG})", ""]
    if res.flow_gain is not None and gain_png is not None:
        md += ["## Flow and gain across settings", "", flow_gain_markdown(res.flow_gain), ""]
        md += [f"![flow and gain]({gain_png.name})", ""]
    if figures:
        md += ["## Information flow", ""]
        md += [
            "One panel per data set (and per other varying setting): the with-anchor run's per-layer "
            "S_wp (text → anchor), S_pq (anchor → target) and S_ww (other pairs) with 95% bands, as in the "
            "paper's Figures 4 and 5. Source per run: `analysis/flow.csv` (`analyze.py run_dir=...`, "
            "over many test samples) when present, else the training callback's `flow/epoch_<last>.csv` "
            "(its held-out sample); bands are 95% bootstrap intervals of the mean.",
            "",
        ]
        for key, path in figures.items():
            md += [f"### {key}", "", f"![{key}]({path.name})", ""]
    md += ["## Runs", "", _runs_md(runs, collapsed_runs(res)), "", _shared_config(runs), ""]
    return "\n".join(md)


def render_sweep(res: SweepResult, out_dir: Path) -> Path:
    """Each table's `<key>.md`, the flow grids, flow_gain.png and report.md into out_dir; report.md's
    path."""
    figures = {}
    for key, t in res.tables.items():
        s = STUDIES[key]
        (out_dir / f"{key}.md").write_text(f"# {s.title}\n\n{table_markdown(res, t)}\n", encoding="utf-8")
        if s.figure and (fig := plot_flow_grid(res, t, out_dir / f"{s.figure}.png")) is not None:
            figures[s.figure] = fig
    for key, curve in res.curves.items():
        plot_curve(curve, out_dir / curve_png(key))
    if res.depth is not None:
        plot_depth(res.depth, out_dir / DEPTH_PNG)
    if res.dev is not None:
        plot_dev(res.dev, out_dir / DEV_PNG)
    gain_png = None if res.flow_gain is None else plot_gain(res.flow_gain, out_dir / "flow_gain.png")
    path = out_dir / "report.md"
    path.write_text(report_markdown(res, figures, gain_png), encoding="utf-8")
    return path
