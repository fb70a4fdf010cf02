"""The sweep analysis: tables (Markdown + CSV), flow grids and `analysis/report.md` of a multirun.

``analyze_sweep`` reads the runs (``mre.analysis.sweep``), builds the paper's tables with seed-aware
intervals and adjusted p-values (``mre.stats``), draws one flow panel per data set (and per other
varying setting) for each direction, as the paper's Figures 4 and 5, and writes ``report.md`` with
relative links to every run's directory and config, so the report reads on GitHub next to the runs.
"""

from __future__ import annotations

import csv
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mre.analysis.flow_gain import flow_gain
from mre.analysis.sweep import (
    STUDIES,
    Row,
    Run,
    SweepOptions,
    Table,
    attach_flow,
    build_table,
    compute_missing_flow,
    discover_runs,
    flow_source,
    known_effect,
    never_started,
    pair_rows,
    run_flow,
)
from mre.flow.options import FlowAnalysisConfig
from mre.flow.plots import plot_grid
from mre.setting import Direction

log = logging.getLogger(__name__)


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


def _link(run: Run | None, prefix: str | None = "..") -> str:
    if run is None:
        return "—"
    return f"#{run.index}" if prefix is None else f"[#{run.index}](<{prefix}/{run.name}/>)"


def _label_header(key: str) -> str:
    return "data set" if key == "dataset.name" else key.removeprefix("dataset.synthetic.")


def table_columns(t: Table) -> list[str]:
    s = t.study
    cols = [_label_header(k) for k in t.label_keys]
    cols += [s.label_a, s.label_b, "Δ", "95% CI", "p", "p (BH)", "seeds", "n"]
    if s.anchored:
        cols.append(f"S_pq ({s.label_b})")
    return [*cols, "runs", "note"]


def _pairs_links(row: Row, prefix: str | None) -> str:
    return ", ".join(f"{_link(p.a, prefix)} vs {_link(p.b, prefix)}" for p in row.pairs)


def _row_cells(t: Table, row: Row, link_prefix: str | None) -> list[str]:
    cells = [_cell(row.labels[k]) for k in t.label_keys]
    c = row.comparison
    cells += [_num(row.f1_a), _num(row.f1_b), _signed(row.diff)]
    if c is not None:
        cells += [
            f"[{c.lo:+.4f}, {c.hi:+.4f}]",
            c.p_text(),
            c.p_text(adjusted=True),
            str(c.n_seeds),
            str(c.n),
        ]
    else:
        cells += ["—"] * 5
    if t.study.anchored:
        cells.append(_sig(row.s_pq))
    cells.append(_pairs_links(row, link_prefix))
    note = row.note
    if row.refused:
        note = f"**refused**: {row.refused}" + (f"; {note}" if note else "")
    cells.append(_cell(note))
    return cells


def table_markdown(t: Table, link_prefix: str | None = "..") -> str:
    """The table in Markdown; runs link to their directories (relative to link_prefix; None: no links)."""
    cols = table_columns(t)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in t.rows:
        lines.append("| " + " | ".join(_row_cells(t, row, link_prefix)) + " |")
    return "\n".join(lines)


def _blank(x: Any) -> Any:
    return "" if x is None else x


def write_table_csv(t: Table, path: Path) -> Path:
    """One line per row: means over seeds, Δ, interval, p, BH-adjusted p, seeds, flow strength."""
    s = t.study
    cols = [*t.label_keys, "f1_a", "f1_b", "diff", "ci_lo", "ci_hi", "p", "p_bh", "n_seeds", "n"]
    cols += ["n_boot", "n_perm", "s_pq_b", "s_pq_ww_b", "setting_a", "setting_b", "runs_a", "runs_b"]
    cols += ["flow_source_b", "note"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for row in t.rows:
            c = row.comparison
            stats = [c.lo, c.hi, c.p, _blank(c.p_adj), c.n_seeds, c.n, c.n_boot, c.n_perm] if c else [""] * 8
            w.writerow(
                [
                    *[row.labels[k] for k in t.label_keys],
                    _blank(row.f1_a),
                    _blank(row.f1_b),
                    _blank(row.diff),
                    *stats,
                    _blank(row.s_pq),
                    _blank(row.s_pq_ratio),
                    s.label_a,
                    s.label_b,
                    " ".join(r.name for r in row.runs("a")),
                    " ".join(r.name for r in row.runs("b")),
                    row.flow_source or "",
                    (f"refused: {row.refused}; " if row.refused else "") + row.note,
                ]
            )
    return path


def write_seeds_csv(t: Table, path: Path) -> Path:
    """One line per row and training seed: that seed's two runs and their `test/f1` (metrics.json), so
    the seed-to-seed spread behind a row's interval can be read off."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*t.label_keys, "seed", "f1_a", "f1_b", "diff", "run_a", "run_b"])
        for row in t.rows:
            for p in row.pairs:
                fa = p.a.f1 if p.a is not None and p.a.finished else None
                fb = p.b.f1 if p.b is not None and p.b.finished else None
                diff = fb - fa if fa is not None and fb is not None else None
                w.writerow(
                    [*[row.labels[k] for k in t.label_keys], p.seed, _blank(fa), _blank(fb), _blank(diff),
                     p.a.name if p.a else "", p.b.name if p.b else ""]
                )  # fmt: skip
    return path


def _row_title(t: Table, row: Row) -> str:
    parts = [str(row.labels["dataset.name"])]
    parts += [f"{_label_header(k)}={row.labels[k]}" for k in t.label_keys[1:]]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------


def plot_flow_grid(t: Table, path: Path) -> Path | None:
    """One panel per row (data set and varying settings): the flow curves of the row's first seed
    whose with-anchor run has flow (the other seeds' curves are in their own run directories)."""
    panels = []
    for row in t.rows:
        found = next(
            ((p, f) for p in row.pairs if p.b is not None and p.b.finished and (f := run_flow(p.b)) and f[1]),
            None,
        )
        if found is None:
            continue
        pair, (_, stats) = found
        f1 = f", F1 {pair.b.f1:.3f}" if pair.b.f1 is not None else ""
        seed = f" (seed {pair.seed}{f1})" if len(row.pairs) > 1 else f1.replace(", ", " ")
        panels.append((f"{_row_title(t, row)}\n{t.study.label_b}{seed}", stats))
    if not panels:
        return None
    return plot_grid(panels, path, f"information flow, {t.study.label_b} ({t.study.kind.upper()} output)")


# --------------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------------

STATS_NOTE = (
    "{a} and {b}: F1 averaged over the training seeds (runs that differ only in `seed`); Δ = F1({b}) − "
    "F1({a}) on the same test samples. 95% CI: hierarchical bootstrap, {n_boot} resamples: the seeds are "
    "resampled, then each drawn seed's test samples (the same resample scores both settings), percentile "
    "interval; with one seed it covers test-sample noise only, which is often smaller than the "
    "seed-to-seed spread (`{key}_seeds.csv`). p: two-sided paired permutation test, {n_perm} random "
    "swaps of the two settings' predictions within each (seed, test sample): it asks whether these "
    "trained runs differ, so with few seeds it can be small while the CI, which also covers training "
    "noise, contains 0; read the CI for the effect of the setting. p (BH): Benjamini–Hochberg "
    "adjusted across this table's rows. F1 is recomputed from each run's `predictions.jsonl` ({metric})."
)


def _metric_text(kind: Direction) -> str:
    return "micro-F1 over (type, span) pairs" if kind is Direction.wli else "macro-F1 over the text labels"


def _known_effect_md(ke: dict[str, Any], t: Table) -> str:
    keys = ke["keys"]
    lines = [
        f"### Known-answer check ({t.study.key}): planted mutual reinforcement",
        "",
        "The synthetic generator plants the effect with a tunable strength; the gain of "
        f"*{t.study.label_b}* over *{t.study.label_a}* should be indistinguishable from 0 at strength 0 (the "
        "anchor then carries no information) and should grow with the strength. Intervals and p-values are "
        f"seed-aware (at least {ke['min_seeds']} seeds per level are required).",
        "",
        "| "
        + " | ".join(_label_header(k) for k in keys)
        + f" | {t.study.label_a} | {t.study.label_b} | gain Δ F1 | 95% CI | p | p (BH) | seeds "
        + "| mean S_pq | mean S_pq / mean S_ww |",
        "|" + "---|" * (len(keys) + 9),
    ]
    for level, row in ke["levels"]:
        c = row.comparison
        lines.append(
            "| "
            + " | ".join(f"{v:g}" for v in level)
            + f" | {c.f1_a:.4f} | {c.f1_b:.4f} | {c.diff:+.4f} | [{c.lo:+.4f}, {c.hi:+.4f}] | {c.p_text()} "
            + f"| {c.p_text(adjusted=True)} | {c.n_seeds} | {_sig(row.s_pq)} | {_sig(row.s_pq_ratio)} |"
        )
    lines += [
        "",
        "S_pq: the with-anchor runs' anchor → target flow averaged over layers and seeds; the ratio to S_ww "
        "(all other pairs) removes the loss scale (saliency shrinks as the model grows confident).",
    ]
    lines += ["", "Checks:", ""]
    lines += [f"- {'✅' if ok else '❌'} {name}" for name, ok in ke["checks"].items()]
    verdict = "**PASS**: the planted effect is recovered" if ke["recovered"] else "**FAIL**: not recovered"
    lines += ["", f"Verdict: {verdict} by this sweep."]
    if ke["s_pq_trend"]:
        lines.append(
            f"From no to strong reinforcement, mean S_pq is {ke['s_pq_trend']} and S_pq / S_ww is "
            f"{ke['s_pq_ratio_trend'] or 'n/a'}."
        )
    return "\n".join(lines)


def _short(name: str, n: int = 32) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _anchor_text(r: Run) -> str:
    kind = r.get("anchor_kind", "gold")
    return f"anchor={r.get('with_anchor')}" + (
        f" ({kind})" if r.get("with_anchor") and kind != "gold" else ""
    )


def _runs_md(runs: list[Run]) -> str:
    lines = [
        "| # | run | status | data set | direction | setting | model | test/f1 | flow | config |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        status = "finished" if r.finished else f"**{_cell(r.problem)}**"
        setting = f"verbalizer={r.get('verbalizer.kind')}" if r.get("task") == "fewshot" else _anchor_text(r)
        src = flow_source(r)
        flow = f"[{src.relative_to(r.path)}](<../{r.name}/{src.relative_to(r.path)}>)" if src else "—"
        overrides = " ".join(r.overrides) or "—"
        lines.append(
            f"| {r.index} | [{_cell(_short(r.name))}](<../{r.name}/>) | {status} | {r.get('dataset.name')} "
            f"| {r.get('direction.name') if r.get('task') != 'fewshot' else 'tli (few-shot)'} | {setting} "
            f"| {r.get('model.name')} | {_num(r.f1)} | {flow} "
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


def write_report(
    sweep_dir: Path,
    out_dir: Path,
    runs: list[Run],
    missing: list[str],
    tables: list[Table],
    figures: dict[str, Path],
    known: dict[str, dict[str, Any]],
    opts: SweepOptions,
    flow_gain: dict[str, Any] | None = None,
) -> Path:
    finished = [r for r in runs if r.finished]
    unfinished = [r for r in runs if not r.finished]
    md = [
        "# MRE sweep report",
        "",
        f"Sweep directory: `{sweep_dir}` — {len(runs)} runs found, {len(finished)} finished, "
        f"{len(unfinished)} not finished, {len(missing)} never started. "
        f"Generated {datetime.now():%Y-%m-%d %H:%M} by `python analyze.py sweep_dir={sweep_dir}`.",
        "",
    ]
    if unfinished or missing:
        md += ["## Missing runs", "", "Left out of the tables below.", ""]
        for r in unfinished:
            md.append(f"- [#{r.index} `{r.name}`](<../{r.name}/>): {r.problem}")
        for m in missing:
            md.append(f"- never started: `{m}`")
        md.append("")
    if not tables:
        md += ["No run of this sweep belongs to one of the paper's comparisons (Tables 2–4).", ""]
    for t in tables:
        s = t.study
        md += [f"## {s.title}", "", table_markdown(t), ""]
        md += [
            STATS_NOTE.format(
                a=s.label_a,
                b=s.label_b,
                key=s.key,
                n_boot=opts.n_boot,
                n_perm=opts.n_perm,
                metric=_metric_text(s.kind),
            ),
            "Files: "
            + ", ".join(f"[{f}]({f})" for f in (f"{s.key}.md", f"{s.key}.csv", f"{s.key}_seeds.csv"))
            + ".",
            "",
        ]
        if any(r.refused for r in t.rows):
            md += ["Rows marked **refused** compared runs evaluated on different test samples.", ""]
        if s.key in known:
            md += [_known_effect_md(known[s.key], t), ""]
    if flow_gain is not None:
        md += ["## Flow and gain across settings", "", flow_gain["markdown"], ""]
        md += [f"![flow and gain]({flow_gain['png'].name})", ""]
    flow_figs = {k: v for k, v in figures.items() if v is not None}
    if flow_figs:
        md += ["## Information flow", ""]
        md += [
            "One panel per data set (and per other varying setting): the with-anchor run's per-layer "
            "S_wp (text → anchor), S_pq (anchor → target) and S_ww (other pairs) with 95% bands, as in the "
            "paper's Figures 4 and 5. Source per run: `analysis/flow.csv` (`analyze.py run_dir=...`, "
            "over many test samples) when present, else the training callback's `flow/epoch_<last>.csv` "
            "(its held-out sample); bands are 95% bootstrap intervals of the mean.",
            "",
        ]
        for key, path in flow_figs.items():
            md += [f"### {key}", "", f"![{key}]({path.name})", ""]
    md += ["## Runs", "", _runs_md(runs), "", _shared_config(runs), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# the whole sweep analysis
# --------------------------------------------------------------------------------------------------


def analyze_sweep(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    opts: SweepOptions | None = None,
    flow_opts=None,
    seed: int = 42,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Tables, figures and report.md of a multirun directory; see the module docstring."""
    from rich.console import Console

    opts = opts or SweepOptions()
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console()
    runs = discover_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs (directories with .hydra/config.yaml) below {sweep_dir}")
    missing = never_started(sweep_dir, runs)
    for r in runs:
        if not r.finished:
            console.print(f"run #{r.index} {r.name}: {r.problem}", style="yellow", markup=False)
    for m in missing:
        console.print(f"never started: {m}", style="yellow", markup=False)
    if opts.compute_flow:
        compute_missing_flow(runs, flow_opts or FlowAnalysisConfig(), seed, cache_dir)
    tables, figures, known, files = [], {}, {}, []
    for study in STUDIES:
        t = build_table(study, runs, opts)
        if t is None:
            continue
        pair_rows(t, opts, seed)
        attach_flow(t)
        tables.append(t)
        (out_dir / f"{study.key}.md").write_text(
            f"# {study.title}\n\n{table_markdown(t)}\n", encoding="utf-8"
        )
        files += [
            out_dir / f"{study.key}.md",
            write_table_csv(t, out_dir / f"{study.key}.csv"),
            write_seeds_csv(t, out_dir / f"{study.key}_seeds.csv"),
        ]
        if study.figure:
            fig = plot_flow_grid(t, out_dir / f"{study.figure}.png")
            if fig is not None:
                figures[study.figure] = fig
        ke = known_effect(t)
        if ke is not None:
            known[study.key] = ke
            verdict = "PASS" if ke["recovered"] else "FAIL"
            console.print(f"known-answer check ({study.key}): {verdict}", style="bold", markup=False)
        console.print(f"\n{study.title}", style="bold", markup=False)
        console.print(table_markdown(t, link_prefix=None), markup=False, highlight=False, soft_wrap=True)
    fg = flow_gain(tables, out_dir, opts.n_boot, seed)
    if fg is not None:
        files += [fg["csv"], fg["png"]]
        console.print("\nFlow and gain across settings", style="bold", markup=False)
        console.print(fg["markdown"], markup=False, highlight=False, soft_wrap=True)
    report = write_report(sweep_dir, out_dir, runs, missing, tables, figures, known, opts, fg)
    console.print(f"\nreport: {report}", markup=False)
    return {
        "runs": runs,
        "missing": missing,
        "unfinished": [r for r in runs if not r.finished],
        "tables": {t.study.key: t for t in tables},
        "figures": figures,
        "known_effect": known,
        "flow_gain": fg,
        "files": [*files, report],
        "report": report,
    }
