"""Flow by group (`analyze.py run_dir=... flow.by_group=true`): which kind of word-level information
carries the flow.

Over the same test samples as the flow analysis, from each sample's saliency maps I_l (raw, text
sources; `FlowEngine(keep_maps="layer")`):

* direction tli (the anchor is the WLI pairs): per pair of the anchor, P_g = the pair's tokens
  (`PromptBuilder.anchor_pairs`), grouped by its WLI type (`wli_type`) and by its entity (`entity`;
  a type shown twice in one prompt is one group of both pairs' tokens):
  S_wp(g) = mean of I_l(i, j) over i in P_g, j in T; S_pq(g) = mean of I_l(q, i) over i in P_g;
  pq_share(g) = the sum of I_l(q, i) over P_g / that sum over the whole anchor P;
* direction wli (the anchor is the text label): the samples grouped by the WLI types of their gold
  answer (`answer_type`, `none` for an empty one), with the whole anchor's S_wp and S_pq (pq_share 1).

Files: `flow_groups.csv` (one row per sample, group and layer; streamed per chunk, a rerun keeps the
complete samples; removed with flow_samples.csv when the flow analysis restarts),
`flow_groups_summary.csv` (per group with at least MIN_SAMPLES samples: n and, per metric, the mean
over layers of the per-layer means with a 95% bootstrap interval over samples) and
`flow_groups.png` (S_pq per layer of the largest groups).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mre.data.batches import Collator
from mre.data.prompts import Encoded
from mre.flow.callback import flow_batch, label_token_ids
from mre.flow.engine import FlowEngine
from mre.flow.options import Backend, FlowAnalysisConfig, Normalize, Sources
from mre.flow.plots import plot_group_curves
from mre.results import append_stream_csv, read_stream_csv
from mre.stats import bootstrap_layer_means

GROUPS_FILE = "flow_groups.csv"
SUMMARY_FILE = "flow_groups_summary.csv"
COLUMNS = ["sample", "id", "layer", "kind", "group", "S_wp", "S_pq", "pq_share"]
METRICS = ("S_wp", "S_pq", "pq_share")
MIN_SAMPLES = 3  # groups seen in fewer samples are left out of the summary (no interval)
PLOT_GROUPS = 8


def sample_groups(builder, e: Encoded) -> dict[tuple[str, str], list[int]]:
    """(kind, group) -> anchor token positions (unpadded) of one encoded sample (see the docstring)."""
    if builder.setting.is_tli:
        out: dict[tuple[str, str], list[int]] = {}
        for kind, span, (t0, t1) in builder.anchor_pairs(e.record):
            for key in (("wli_type", kind), ("entity", span)):
                out.setdefault(key, [])
                out[key] += [i for i in range(t0, t1) if i not in out[key]]
        return {k: v for k, v in out.items() if v}
    a0, a1 = e.anchor_range
    types = sorted({p.type for p in e.record.wli}) or [builder.wli_format.empty]
    return {("answer_type", t): list(range(a0, a1)) for t in types}


def _rows(maps: torch.Tensor, e: Encoded, record_id: str, groups: dict, pad: int) -> list[dict[str, Any]]:
    """maps [n_layers, L, L] of one padded sample -> its rows."""
    t0, t1 = e.text_range[0] + pad, e.text_range[1] + pad
    a0, a1 = e.anchor_range[0] + pad, e.anchor_range[1] + pad
    q = e.q + pad
    whole = maps[:, q, a0:a1].sum(-1)
    rows = []
    for (kind, group), positions in sorted(groups.items()):
        idx = torch.tensor(positions) + pad
        s_wp = maps[:, idx, t0:t1].mean((-1, -2))
        to_q = maps[:, q, idx]
        share = torch.where(whole > 0, to_q.sum(-1) / whole.clamp(min=torch.finfo(whole.dtype).tiny), 0.0)
        for layer in range(maps.shape[0]):
            values = [repr(float(v)) for v in (s_wp[layer], to_q[layer].mean(), share[layer])]
            rows.append(dict(zip(COLUMNS, (e.index, record_id, layer, kind, group, *values), strict=True)))
    return rows


def compute_groups(subject, chosen: list[Encoded], out_dir: Path, opts: FlowAnalysisConfig) -> Path:
    """Stream the group rows of the chosen samples into flow_groups.csv (resumable)."""
    ctx = subject.context
    records = ctx.records("test")
    groups = {e.index: sample_groups(ctx.builder, e) for e in chosen}
    path = out_dir / GROUPS_FILE
    old = read_stream_csv(path)
    n_layers = len({r["layer"] for r in old}) or None
    per_sample: dict[int, list[dict[str, str]]] = {}
    for r in old:
        per_sample.setdefault(int(r["sample"]), []).append(r)
    done = {
        s: rows
        for s, rows in per_sample.items()
        if s in groups and n_layers and len(rows) == n_layers * len(groups[s])
    }
    append_stream_csv(path, COLUMNS, [r for s in sorted(done) for r in done[s]], new=True)
    # the maps need the eager backend (blockwise never holds them), whatever the flow pass used
    raw = FlowAnalysisConfig(
        **{**vars(opts), "normalize": Normalize.none, "sources": Sources.text, "backend": Backend.eager}
    )
    engine = FlowEngine(subject.model, raw, keep_maps="layer", bos_token_id=ctx.tokenizer.bos_token_id)
    collate = Collator(ctx.tokenizer.pad_token_id)
    label_ids = label_token_ids(ctx, opts.loss)  # the loss the flow is taken on, as in the flow pass
    device = next(subject.model.parameters()).device
    for k in range(0, len(chosen), opts.batch_size):  # the flow pass's chunks: the same padding
        chunk = chosen[k : k + opts.batch_size]
        if all(e.index in done or not groups[e.index] for e in chunk):
            continue
        batch = {key: v.to(device) for key, v in flow_batch(collate(chunk), label_ids).items()}
        maps = engine.compute(batch).maps.double().cpu()
        width = maps.shape[-1]
        rows = []
        for b, e in enumerate(chunk):
            if e.index not in done:
                pad = width - len(e.prompt_ids)
                rows += _rows(maps[b], e, records[e.index].id, groups[e.index], pad)
        append_stream_csv(path, COLUMNS, rows, new=False)
    final = read_stream_csv(path)
    final.sort(key=lambda r: (int(r["sample"]), r["kind"], r["group"], int(r["layer"])))
    append_stream_csv(path, COLUMNS, final, new=True)
    return path


def summarize_groups(path: Path, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per (kind, group) seen in at least MIN_SAMPLES samples: n and per metric the mean over layers
    with a bootstrap interval (samples resampled), sorted by kind, then S_pq (largest first)."""
    by_group: dict[tuple[str, str], dict[int, dict[int, dict[str, float]]]] = {}
    for r in read_stream_csv(path):
        cell = by_group.setdefault((r["kind"], r["group"]), {}).setdefault(int(r["sample"]), {})
        cell[int(r["layer"])] = {m: float(r[m]) for m in METRICS}
    out = []
    for (kind, group), samples in by_group.items():
        if len(samples) < MIN_SAMPLES:
            continue
        layers = sorted(next(iter(samples.values())))
        entry: dict[str, Any] = {"kind": kind, "group": group, "n": len(samples)}
        for m in METRICS:
            values = np.array([[s[layer][m] for layer in layers] for s in samples.values()])
            curve = bootstrap_layer_means(values, n_boot=n_boot, seed=seed)
            over_layers = bootstrap_layer_means(values.mean(1, keepdims=True), n_boot=n_boot, seed=seed)
            entry[m] = float(over_layers.mean[0])
            entry[f"{m}_lo"], entry[f"{m}_hi"] = float(over_layers.lo[0]), float(over_layers.hi[0])
            entry[f"{m}_curve"] = curve
        out.append(entry)
    out.sort(key=lambda e: (e["kind"], -e["S_pq"]))
    return out


def write_summary(items: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        keys = [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
        w.writerow(["kind", "group", "n", *keys])
        for e in items:
            w.writerow([e["kind"], e["group"], e["n"], *(e[k] for k in keys)])
    return path


def markdown(items: list[dict[str, Any]], top: int = 10) -> str:
    lines = [
        "| kind | group | samples | S_wp | S_pq | 95% CI | share of anchor -> q |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in dict.fromkeys(e["kind"] for e in items):
        for e in [x for x in items if x["kind"] == kind][:top]:
            lines.append(
                f"| {kind} | {e['group']} | {e['n']} | {e['S_wp']:.3g} | {e['S_pq']:.3g} "
                f"| [{e['S_pq_lo']:.3g}, {e['S_pq_hi']:.3g}] | {e['pq_share']:.2f} |"
            )
    return "\n".join(lines)


def analyze_groups(
    subject, chosen: list[Encoded], out_dir: Path, opts: FlowAnalysisConfig, seed: int
) -> dict[str, Any]:
    """flow_groups.csv -> flow_groups_summary.csv, flow_groups.png; returns the summary and paths."""
    path = compute_groups(subject, chosen, out_dir, opts)
    items = summarize_groups(path, opts.n_boot, seed)
    summary = write_summary(items, out_dir / SUMMARY_FILE)
    kind = "wli_type" if subject.context.setting.is_tli else "answer_type"
    largest = sorted((e for e in items if e["kind"] == kind), key=lambda e: -e["n"])[:PLOT_GROUPS]
    png = plot_group_curves(
        [(f"{e['group']} (n={e['n']})", e["S_pq_curve"]) for e in largest],
        out_dir / "flow_groups.png",
        f"S_pq per layer by {kind.replace('_', ' ')}, {subject.name}",
    )
    return {"groups_csv": path, "groups_summary": summary, "groups_png": png, "groups": items}
