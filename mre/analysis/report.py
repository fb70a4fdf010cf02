"""The sweep analysis: tables (Markdown + CSV), flow grids and `analysis/report.md` of a multirun.

``analyze_sweep`` reads the runs (``mre.analysis.sweep``), builds the paper's tables with paired
bootstrap intervals, draws one flow panel per data set (and per other varying setting) for each
direction, as the paper's Figures 4 and 5, and writes ``report.md`` with relative links to every
run's directory and config, so the report reads on GitHub next to the runs.
"""

from __future__ import annotations

import csv
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

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
    cols += [s.label_a, s.label_b, "Δ", "95% CI", "p", "n"]
    if s.key != "table4_kv":
        cols.append(f"S_pq ({s.label_b})")
    return [*cols, "runs", "note"]


def _row_cells(t: Table, row: Row, link_prefix: str | None) -> list[str]:
    cells = [_cell(row.labels[k]) for k in t.label_keys]
    p = row.paired
    cells += [_num(row.f1_a), _num(row.f1_b), _signed(row.diff)]
    if p is not None:
        cells += [f"[{p.lo:+.4f}, {p.hi:+.4f}]", p.p_text(), str(p.n)]
    else:
        cells += ["—", "—", "—"]
    if t.study.key != "table4_kv":
        cells.append(_sig(row.s_pq))
    cells.append(f"{_link(row.a, link_prefix)} vs {_link(row.b, link_prefix)}")
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


def write_table_csv(t: Table, path: Path) -> Path:
    s = t.study
    cols = [
        *t.label_keys,
        "f1_a",
        "f1_b",
        "diff",
        "ci_lo",
        "ci_hi",
        "p",
        "n",
        "n_boot",
        "s_pq_b",
        "s_pq_ww_b",
    ]
    cols += ["setting_a", "setting_b", "run_a", "run_b", "flow_source_b", "note"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for row in t.rows:
            p = row.paired
            w.writerow(
                [
                    *[row.labels[k] for k in t.label_keys],
                    row.f1_a,
                    row.f1_b,
                    row.diff,
                    p.lo if p else "",
                    p.hi if p else "",
                    p.p if p else "",
                    p.n if p else "",
                    p.n_boot if p else "",
                    "" if row.s_pq is None else row.s_pq,
                    "" if row.s_pq_ratio is None else row.s_pq_ratio,
                    s.label_a,
                    s.label_b,
                    row.a.name if row.a else "",
                    row.b.name if row.b else "",
                    row.flow_source or "",
                    (f"refused: {row.refused}; " if row.refused else "") + row.note,
                ]
            )
    return path


def _row_title(t: Table, row: Row) -> str:
    parts = [str(row.labels["dataset.name"])]
    parts += [f"{_label_header(k)}={row.labels[k]}" for k in t.label_keys[1:]]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------


def plot_flow_grid(t: Table, path: Path) -> Path | None:
    """One panel per row (data set and varying settings): the with-anchor run's flow curves."""
    panels = []
    for row in t.rows:
        if row.b is None or not row.b.finished:
            continue
        found = run_flow(row.b)
        if found is None or not found[1]:
            continue
        f1 = f"F1 {row.f1_b:.3f}" if row.f1_b is not None else ""
        panels.append((f"{_row_title(t, row)}\n{t.study.label_b} {f1}", found[1]))
    if not panels:
        return None
    return plot_grid(panels, path, f"information flow, {t.study.label_b} ({t.study.kind.upper()} output)")


# --------------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------------

BOOTSTRAP_NOTE = (
    "Δ = F1({b}) − F1({a}) on the same test samples. 95% CI: paired bootstrap, {n_boot} resamples of "
    "the test ids (the same resample scores both runs), percentile interval. p: two-sided bootstrap "
    "p-value, 2 · min(share of resampled Δ ≤ 0, share ≥ 0), capped at 1. F1 is recomputed from each "
    "run's `predictions.jsonl` ({metric})."
)


def _metric_text(kind: Direction) -> str:
    return "micro-F1 over (type, span) pairs" if kind is Direction.wli else "macro-F1 over the text labels"


def _known_effect_md(ke: dict[str, Any], t: Table) -> str:
    keys = ke["keys"]
    lines = [
        f"### Known-answer check ({t.study.key}): planted mutual reinforcement",
        "",
        "The synthetic generator plants the effect with a tunable strength; the gain of "
        f"*{t.study.label_b}* over *{t.study.label_a}* should not be positive at strength 0 (the anchor then "
        "carries no information) and should grow with the strength. The intervals cover test-sample noise, "
        "not training noise (add seeds for that).",
        "",
        "| "
        + " | ".join(_label_header(k) for k in keys)
        + f" | {t.study.label_a} | {t.study.label_b} | gain Δ F1 | 95% CI | p "
        + "| mean S_pq | mean S_pq / mean S_ww |",
        "|" + "---|" * (len(keys) + 7),
    ]
    for level, row in ke["levels"]:
        p = row.paired
        lines.append(
            "| "
            + " | ".join(f"{v:g}" for v in level)
            + f" | {p.f1_a:.4f} | {p.f1_b:.4f} | {p.diff:+.4f} | [{p.lo:+.4f}, {p.hi:+.4f}] | {p.p_text()} "
            + f"| {_sig(row.s_pq)} | {_sig(row.s_pq_ratio)} |"
        )
    lines += [
        "",
        "S_pq: the with-anchor run's anchor → target flow averaged over layers; the ratio to S_ww (all other "
        "pairs) removes the loss scale (saliency shrinks as the model grows confident).",
    ]
    lines += ["", "Checks:", ""]
    lines += [f"- {'✅' if ok else '❌'} {name}" for name, ok in ke["checks"].items()]
    verdict = "**recovered**" if ke["recovered"] else "**not recovered**"
    lines += ["", f"Verdict: the planted effect is {verdict} by this sweep."]
    if ke["s_pq_trend"]:
        lines.append(
            f"From no to strong reinforcement, mean S_pq is {ke['s_pq_trend']} and S_pq / S_ww is "
            f"{ke['s_pq_ratio_trend'] or 'n/a'}."
        )
    return "\n".join(lines)


def _short(name: str, n: int = 32) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _runs_md(runs: list[Run]) -> str:
    lines = [
        "| # | run | status | data set | direction | setting | model | test/f1 | flow | config |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        status = "finished" if r.finished else f"**{_cell(r.problem)}**"
        setting = (
            f"verbalizer={r.get('verbalizer.kind')}"
            if r.get("task") == "fewshot"
            else f"anchor={r.get('with_anchor')}"
        )
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
            BOOTSTRAP_NOTE.format(a=s.label_a, b=s.label_b, n_boot=opts.n_boot, metric=_metric_text(s.kind)),
            f"Files: [{s.key}.md]({s.key}.md), [{s.key}.csv]({s.key}.csv).",
            "",
        ]
        if any(r.refused for r in t.rows):
            md += ["Rows marked **refused** compared runs evaluated on different test samples.", ""]
        if s.key in known:
            md += [_known_effect_md(known[s.key], t), ""]
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
        files += [out_dir / f"{study.key}.md", write_table_csv(t, out_dir / f"{study.key}.csv")]
        if study.key != "table4_kv":
            fig = plot_flow_grid(t, out_dir / f"flow_grid_{study.kind}.png")
            if fig is not None:
                figures[f"flow_grid_{study.kind}"] = fig
        ke = known_effect(t)
        if ke is not None:
            known[study.key] = ke
        console.print(f"\n{study.title}", style="bold", markup=False)
        console.print(table_markdown(t, link_prefix=None), markup=False, highlight=False, soft_wrap=True)
    report = write_report(sweep_dir, out_dir, runs, missing, tables, figures, known, opts)
    console.print(f"\nreport: {report}", markup=False)
    return {
        "runs": runs,
        "missing": missing,
        "unfinished": [r for r in runs if not r.finished],
        "tables": {t.study.key: t for t in tables},
        "figures": figures,
        "known_effect": known,
        "files": [*files, report],
        "report": report,
    }
