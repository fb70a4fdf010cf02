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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mre.analysis.stream import SampleStream
from mre.data.batches import Collator
from mre.data.prompts import Encoded
from mre.flow.engine import FlowEngine
from mre.flow.options import Backend, FlowAnalysisConfig, Normalize, Sources
from mre.flow.plots import plot_group_curves
from mre.flow.samples import flow_batch, label_token_ids
from mre.results import read_stream_csv
from mre.stats import LayerStats, bootstrap_layer_means

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
    """Stream the group rows of the chosen samples into flow_groups.csv (resumable, in the flow pass's
    chunks: the same padding); the rows end sorted by sample, kind, group and layer."""
    ctx = subject.context
    records = ctx.records("test")
    groups = {e.index: sample_groups(ctx.builder, e) for e in chosen}
    path = out_dir / GROUPS_FILE
    n_layers = len({r["layer"] for r in read_stream_csv(path, COLUMNS)})
    stream = SampleStream(
        path,
        COLUMNS,
        row_key=lambda r: int(r["sample"]),
        sample_key=lambda e: e.index,
        complete=lambda s, rows: s in groups and len(rows) == n_layers * len(groups[s]),
    )
    # the maps need the eager backend (blockwise never holds them), whatever the flow pass used
    raw = FlowAnalysisConfig(
        **{**vars(opts), "normalize": Normalize.none, "sources": Sources.text, "backend": Backend.eager}
    )
    engine = FlowEngine(subject.model, raw, keep_maps="layer", bos_token_id=ctx.tokenizer.bos_token_id)
    collate = Collator(ctx.tokenizer.pad_token_id)
    label_ids = label_token_ids(ctx, opts.loss)  # the loss the flow is taken on, as in the flow pass
    device = next(subject.model.parameters()).device

    def per_chunk(k: int, chunk: list[Encoded], todo: set) -> list[dict[str, Any]]:
        if not any(groups[s] for s in todo):
            return []
        batch = {key: v.to(device) for key, v in flow_batch(collate(chunk), label_ids).items()}
        maps = engine.compute(batch).maps.double().cpu()
        rows = []
        for b, e in enumerate(chunk):
            if e.index in todo:
                pad = maps.shape[-1] - len(e.prompt_ids)
                rows += _rows(maps[b], e, records[e.index].id, groups[e.index], pad)
        return rows

    stream.run(chosen, opts.batch_size, per_chunk, opts.progress, f"flow by group {subject.name}")
    stream.sort(lambda r: (int(r["sample"]), r["kind"], r["group"], int(r["layer"])))
    return path


SUMMARY_KEYS = [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]


@dataclass(frozen=True)
class GroupFlow:
    """One (kind, group) of the summary: n samples and, per metric, the mean over layers with its
    95% bootstrap interval (`values`, keyed by `SUMMARY_KEYS`)."""

    kind: str
    group: str
    n: int
    values: dict[str, float]

    def __getitem__(self, key: str) -> float:
        return self.values[key]


@dataclass(frozen=True)
class FlowGroups:
    """The flow by group as `flow_groups_summary.csv` holds it: the groups seen in at least
    MIN_SAMPLES samples, by kind, then S_pq (largest first). (The figure of the per-layer curves is
    drawn by `analyze_groups` from the samples file.)"""

    groups: tuple[GroupFlow, ...]

    @staticmethod
    def exists(out_dir: Path) -> bool:
        return (Path(out_dir) / SUMMARY_FILE).exists()

    def write(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / SUMMARY_FILE
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["kind", "group", "n", *SUMMARY_KEYS])
            for g in self.groups:
                w.writerow([g.kind, g.group, g.n, *(g.values[k] for k in SUMMARY_KEYS)])
        return path

    @classmethod
    def read(cls, out_dir: str | Path) -> FlowGroups:
        with open(Path(out_dir) / SUMMARY_FILE, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return cls(
            tuple(
                GroupFlow(r["kind"], r["group"], int(r["n"]), {k: float(r[k]) for k in SUMMARY_KEYS})
                for r in rows
            )
        )

    def markdown(self, top: int = 10) -> str:
        """The `top` groups of each kind: samples, S_wp, S_pq with its interval, share of anchor -> q."""
        lines = [
            "| kind | group | samples | S_wp | S_pq | 95% CI | share of anchor -> q |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind in dict.fromkeys(g.kind for g in self.groups):
            for g in [x for x in self.groups if x.kind == kind][:top]:
                lines.append(
                    f"| {kind} | {g.group} | {g.n} | {g['S_wp']:.3g} | {g['S_pq']:.3g} "
                    f"| [{g['S_pq_lo']:.3g}, {g['S_pq_hi']:.3g}] | {g['pq_share']:.2f} |"
                )
        return "\n".join(lines)


def summarize_groups(
    path: Path, n_boot: int, seed: int
) -> tuple[FlowGroups, dict[tuple[str, str], LayerStats]]:
    """Per (kind, group) seen in at least MIN_SAMPLES samples: n and per metric the mean over layers
    with a bootstrap interval (samples resampled), sorted by kind, then S_pq (largest first); and each
    group's S_pq per layer (for the figure)."""
    by_group: dict[tuple[str, str], dict[int, dict[int, dict[str, float]]]] = {}
    for r in read_stream_csv(path, COLUMNS):
        cell = by_group.setdefault((r["kind"], r["group"]), {}).setdefault(int(r["sample"]), {})
        cell[int(r["layer"])] = {m: float(r[m]) for m in METRICS}
    out, curves = [], {}
    for (kind, group), samples in by_group.items():
        if len(samples) < MIN_SAMPLES:
            continue
        layers = sorted(next(iter(samples.values())))
        values: dict[str, float] = {}
        for m in METRICS:
            per_layer = np.array([[s[layer][m] for layer in layers] for s in samples.values()])
            over_layers = bootstrap_layer_means(per_layer.mean(1, keepdims=True), n_boot=n_boot, seed=seed)
            values[m] = float(over_layers.mean[0])
            values[f"{m}_lo"], values[f"{m}_hi"] = float(over_layers.lo[0]), float(over_layers.hi[0])
            if m == "S_pq":
                curves[(kind, group)] = bootstrap_layer_means(per_layer, n_boot=n_boot, seed=seed)
        out.append(GroupFlow(kind, group, len(samples), values))
    out.sort(key=lambda g: (g.kind, -g["S_pq"]))
    return FlowGroups(tuple(out)), curves


def analyze_groups(
    subject, chosen: list[Encoded], out_dir: Path, opts: FlowAnalysisConfig, seed: int
) -> FlowGroups:
    """flow_groups.csv -> flow_groups_summary.csv, flow_groups.png; returns the summary as its file
    holds it."""
    path = compute_groups(subject, chosen, out_dir, opts)
    groups, curves = summarize_groups(path, opts.n_boot, seed)
    groups.write(out_dir)
    kind = "wli_type" if subject.context.setting.is_tli else "answer_type"
    largest = sorted((g for g in groups.groups if g.kind == kind), key=lambda g: -g.n)[:PLOT_GROUPS]
    plot_group_curves(
        [(f"{g.group} (n={g.n})", curves[(g.kind, g.group)]) for g in largest],
        out_dir / "flow_groups.png",
        f"S_pq per layer by {kind.replace('_', ' ')}, {subject.name}",
    )
    return FlowGroups.read(out_dir)
