"""Attention knockout of one model: `python analyze.py run_dir=<run> knockout.layers=first:5`.

For N test samples (a seeded subset) the model answers once unchanged (the baseline) and once per
condition: for every edge set in `knockout.edges` and every layer spec in `knockout.layers`, with
those edges blocked in those layers, and with two controls in the same layers (`mre.flow.knockout`):
as many random edges of the whole prompt (`random:`), and as many edges into the same rows from
sources outside the set's span (`receiver:`, receiver-matched). Per sample it records the
prediction (TLI: the arg-max code at q; WLI: greedy generation, the prompt pass knocked out) and the
log-probability of the gold target token at q (the token the flow's loss is taken on).

Files in the analysis directory:

* `knockout_samples.csv`: one row per (sample, condition), appended chunk by chunk, so a killed
  analysis resumes where it stopped (`knockout_meta.json` holds the settings; another setting is
  refused, `knockout.restart=true` starts over);
* `knockout.csv`: per condition, ΔF1 against the baseline with its paired bootstrap interval and
  permutation p-value, and the mean Δ log-probability with its bootstrap interval; for each knockout,
  the same against each of its two controls (Benjamini-Hochberg adjusted across these rows);
* `knockout.png` (ΔF1 and Δ log p, knockout vs both controls, per edge set and layers) and
  `knockout.md`.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from mre.analysis.flow_run import Subject
from mre.analysis.stream import AnalysisError, Identity, SampleStream, choose, samples_sha1
from mre.config import EvalConfig
from mre.data.batches import Collator
from mre.data.prompts import Encoded
from mre.flow.attention import hf_model
from mre.flow.knockout import (
    KnockoutError,
    edge_masks,
    knockout,
    parse_layers,
    random_edges,
    receiver_matched_edges,
    receiver_pools,
)
from mre.flow.options import EdgeSet, KnockoutConfig
from mre.flow.plots import plot_knockout
from mre.results import read_stream_csv, write_stream_csv
from mre.setting import StrEnum
from mre.stats import Comparison, adjust_bh, bootstrap_layer_means, compare, pair_counts
from mre.tasks.answers import code_predictions, generate_answers

log = logging.getLogger(__name__)

SAMPLES_FILE = "knockout_samples.csv"
META_FILE = "knockout_meta.json"
RESULT_FILE = "knockout.csv"
SAMPLE_COLUMNS = ["id", "condition", "gold", "prediction", "logp", "blocked"]


class Control(StrEnum):
    """The two controls of a knockout: as many edges blocked in the same layers, drawn from"""

    random = "random"  # the prompt's other causal pairs, uniformly (rarely q's row for anchor_q)
    receiver = "receiver"  # the same rows' other sources (not the anchor, resp. not the text)


@dataclass(frozen=True)
class Condition:
    """The baseline (edges None), a knockout of an edge set in some layers, or one of its controls."""

    edges: EdgeSet | None = None
    spec: str = ""
    layers: tuple[int, ...] = ()
    control: Control | None = None

    @property
    def name(self) -> str:
        if self.edges is None:
            return "baseline"
        return f"{f'{self.control}:' if self.control else ''}{self.edges}@{self.spec}"

    @property
    def kind(self) -> str:
        """`knockout`, or the control's name (the `condition` column of knockout.csv)."""
        return str(self.control) if self.control else "knockout"

    def controlled(self, control: Control) -> Condition:
        return Condition(self.edges, self.spec, self.layers, control)


def layer_specs(layers: Any) -> list[Any]:
    """`first:5` -> [first:5]; [first:5, last:5] -> both; [0, 1] (indices only) -> one spec."""
    if isinstance(layers, str | int):
        return [layers]
    items = list(layers)
    return [items] if items and all(isinstance(x, int) for x in items) else items


def conditions(opts: KnockoutConfig, n_layers: int) -> list[Condition]:
    out = [Condition()]
    for spec in layer_specs(opts.layers):
        try:
            layers = tuple(parse_layers(spec, n_layers))
        except KnockoutError as e:
            raise AnalysisError(str(e)) from e
        text = spec if isinstance(spec, str) else ",".join(str(x) for x in layers)
        for edges in opts.edges:
            cond = Condition(EdgeSet(str(edges)), text, layers)
            out += [cond, *(cond.controlled(c) for c in Control)]
    return out


# --------------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------------


def _n_layers(model: torch.nn.Module) -> int:
    cfg = hf_model(model).config
    return int(cfg.get_text_config().num_hidden_layers)


@torch.no_grad()
def _answer(
    subject: Subject, batch: dict[str, torch.Tensor], block: torch.Tensor | None, cond: Condition, budget: int
) -> tuple[list[str], np.ndarray]:
    """Predictions and the gold target's log-probability at q under one condition."""
    ctx, model = subject.context, subject.model
    with knockout(model, block, list(cond.layers)):
        logits = (
            model(
                input_ids=batch["prompt_ids"],
                attention_mask=batch["prompt_mask"],
                position_ids=batch["prompt_position_ids"],
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        logp = torch.log_softmax(logits, -1).gather(1, batch["target"].view(-1, 1)).squeeze(1)
        if ctx.setting.is_tli:
            preds = [ctx.builder.labels[k] for k in code_predictions(logits, ctx.builder.code_ids).tolist()]
        else:
            preds = generate_answers(
                model, ctx.tokenizer, ctx.builder, batch["prompt_ids"], batch["prompt_mask"], budget
            )
    return preds, logp.double().cpu().numpy()


def _blocks(batch: dict[str, torch.Tensor], conds: list[Condition], gen: torch.Generator) -> list:
    """The blocked-edge mask [B, L, L] of each condition (None for the baseline)."""
    mask = batch["prompt_mask"] != 0
    spans = (batch["q"], batch["text_range"], batch["anchor_range"])
    sets, pool = edge_masks(mask, *spans)
    rows = receiver_pools(sets, mask, *spans)
    out = []
    for c in conds:
        if c.edges is None:
            out.append(None)
        elif c.control is Control.random:
            out.append(random_edges(pool, sets[c.edges].flatten(1).sum(1), gen))
        elif c.control is Control.receiver:
            out.append(receiver_matched_edges(sets[c.edges], rows[c.edges], gen))
        else:
            out.append(sets[c.edges])
    return out


def _golds(subject: Subject, indices: list[int]) -> list[str]:
    ctx = subject.context
    records = ctx.records("test")
    if ctx.setting.is_tli:
        return [str(records[i].tli) for i in indices]
    return [ctx.builder.answer_of(records[i]) for i in indices]


def _run_budget(subject: Subject) -> int:
    """The run's own WLI generation budget (a base model in model-config mode has none: the default)."""
    return int(OmegaConf.select(subject.cfg, "eval.max_new_tokens", default=EvalConfig.max_new_tokens))


def compute_samples(subject: Subject, out_dir: Path, opts: KnockoutConfig, seed: int) -> list[Condition]:
    """Stream every (sample, condition) row into knockout_samples.csv (resumable, `mre.analysis.stream`)."""
    ctx = subject.context
    if not ctx.setting.with_anchor:
        raise AnalysisError("the attention knockout blocks edges of the anchor: the run has no anchor")
    conds = conditions(opts, _n_layers(subject.model))
    chosen = choose(ctx.items("test"), opts.n_samples, seed)
    records = ctx.records("test")
    budget = int(opts.max_new_tokens or _run_budget(subject))
    meta = {
        "subject": subject.source,
        "samples_sha1": samples_sha1([records[e.index].id for e in chosen]),
        "conditions": [c.name for c in conds],
        "seed": seed,
        "batch_size": opts.batch_size,
        "max_new_tokens": budget,
    }
    stream = SampleStream(
        out_dir / SAMPLES_FILE,
        SAMPLE_COLUMNS,
        row_key=lambda r: r["id"],
        sample_key=lambda e: records[e.index].id,
        complete=lambda i, rows: len(rows) == len(conds),
        identity=Identity(out_dir / META_FILE, meta, opts.restart, "knockout.restart=true"),
    )
    stream.previous()
    collate = Collator(ctx.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device

    def per_chunk(k: int, chunk: list[Encoded], todo: set) -> list[dict[str, Any]]:
        chunk_ids = [records[e.index].id for e in chunk]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k)  # the same edges on a resume
        batch = {key: v.to(device) for key, v in collate(chunk).items()}
        golds = _golds(subject, [e.index for e in chunk])
        rows = []
        for cond, block in zip(conds, _blocks(batch, conds, gen), strict=True):
            preds, logp = _answer(subject, batch, block, cond, budget)
            blocked = [0] * len(chunk) if block is None else block.flatten(1).sum(1).tolist()
            values = zip(chunk_ids, golds, preds, logp, blocked, strict=True)
            rows += [
                dict(zip(SAMPLE_COLUMNS, (i, cond.name, g, p, repr(float(lp)), n), strict=True))
                for i, g, p, lp, n in values
                if i in todo
            ]
        return rows

    stream.run(chosen, opts.batch_size, per_chunk, opts.progress, f"knockout {subject.name}")
    return conds


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------


@dataclass
class Effect:
    """One condition against a reference (the baseline, or its random control)."""

    condition: Condition
    reference: str
    f1: Comparison
    d_logp: float
    d_logp_lo: float
    d_logp_hi: float
    blocked: float  # mean blocked edges per sample


def _by_condition(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault(r["condition"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["id"])
    return out


def _effect(
    cond: Condition, ref_name: str, rows: dict, subject: Subject, opts: KnockoutConfig, seed: int
) -> Effect:
    a, b = rows[ref_name], rows[cond.name]
    counts = pair_counts(a, b, subject.context.setting.direction, subject.context.builder.wli_format)
    f1 = compare([counts], n_boot=opts.n_boot, n_perm=opts.n_perm, seed=seed)
    diff = np.array([float(y["logp"]) - float(x["logp"]) for x, y in zip(a, b, strict=True)])
    ls = bootstrap_layer_means(diff[:, None], n_boot=opts.n_boot, seed=seed)
    blocked = float(np.mean([int(r["blocked"]) for r in b]))
    return Effect(cond, ref_name, f1, float(ls.mean[0]), float(ls.lo[0]), float(ls.hi[0]), blocked)


def effects(
    subject: Subject, conds: list[Condition], out_dir: Path, opts: KnockoutConfig, seed: int
) -> list[Effect]:
    """Every condition against the baseline, then every knockout against each of its controls."""
    rows = _by_condition(read_stream_csv(out_dir / SAMPLES_FILE, SAMPLE_COLUMNS))
    vs_base = [_effect(c, "baseline", rows, subject, opts, seed) for c in conds if c.edges is not None]
    vs_control = [
        _effect(c, c.controlled(control).name, rows, subject, opts, seed)
        for c in conds
        if c.edges is not None and c.control is None
        for control in Control
    ]
    adjust_bh([e.f1 for e in vs_control])
    return vs_base + vs_control


RESULT_COLUMNS = [
    "edges", "layers", "layer_ids", "condition", "reference", "n", "blocked_per_sample", "f1_reference",
    "f1", "d_f1", "d_f1_lo", "d_f1_hi", "p", "p_bh", "d_logp", "d_logp_lo", "d_logp_hi",
]  # fmt: skip
MD_FILE = "knockout.md"


def _effect_row(e: Effect) -> list[Any]:
    c = e.condition
    return [c.edges, c.spec, " ".join(map(str, c.layers)), c.kind,
            e.reference, e.f1.n, e.blocked, e.f1.f1_a, e.f1.f1_b, e.f1.diff, e.f1.lo, e.f1.hi,
            e.f1.p, "" if e.f1.p_adj is None else e.f1.p_adj, e.d_logp, e.d_logp_lo, e.d_logp_hi]  # fmt: skip


def _read_effect(r: dict[str, str], n_boot: int, n_perm: int) -> Effect:
    layers = tuple(int(x) for x in r["layer_ids"].split())
    control = None if r["condition"] == "knockout" else Control(r["condition"])
    cond = Condition(EdgeSet(r["edges"]), r["layers"], layers, control)
    f1_a, f1_b = float(r["f1_reference"]), float(r["f1"])
    f1 = Comparison(
        f1_a, f1_b, float(r["d_f1"]), float(r["d_f1_lo"]), float(r["d_f1_hi"]), float(r["p"]), n_seeds=1,
        n=int(r["n"]), n_boot=n_boot, n_perm=n_perm, per_seed=[(f1_a, f1_b)],
        p_adj=None if r["p_bh"] == "" else float(r["p_bh"]),
    )  # fmt: skip
    d = (float(r["d_logp"]), float(r["d_logp_lo"]), float(r["d_logp_hi"]))
    return Effect(cond, r["reference"], f1, *d, blocked=float(r["blocked_per_sample"]))


@dataclass
class KnockoutEffects:
    """The knockout of one model as its files hold it: the settings (`knockout_meta.json`: the samples'
    identity, plus the title and the resample counts of the statistics) and every condition's effect
    against its reference (`knockout.csv`; one seed, so each F1 comparison is the paired one)."""

    meta: dict[str, Any]
    effects: list[Effect]

    def write(self, out_dir: str | Path) -> Path:
        """`knockout.csv`, `knockout_meta.json` and `knockout.md` into `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / META_FILE).write_text(json.dumps(self.meta, indent=2))
        (out_dir / MD_FILE).write_text(self.markdown(), encoding="utf-8")
        rows = (dict(zip(RESULT_COLUMNS, _effect_row(e), strict=True)) for e in self.effects)
        return write_stream_csv(out_dir / RESULT_FILE, RESULT_COLUMNS, rows, quoting=csv.QUOTE_MINIMAL)

    @classmethod
    def read(cls, out_dir: str | Path) -> KnockoutEffects:
        out_dir = Path(out_dir)
        meta = json.loads((out_dir / META_FILE).read_text())
        with open(out_dir / RESULT_FILE, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return cls(meta, [_read_effect(r, meta["n_boot"], meta["n_perm"]) for r in rows])

    def markdown(self) -> str:
        return effects_markdown(self.effects, self.meta["title"])

    def figure(self, out_dir: str | Path) -> Path:
        """`knockout.png`: ΔF1 and Δ log p, knockout vs both controls, per edge set and layers."""
        title = f"attention knockout, {self.meta['title']}"
        return plot_knockout(_plot_rows(self.effects), Path(out_dir) / "knockout.png", title)


def effects_markdown(items: list[Effect], title: str) -> str:
    lines = [
        f"# Attention knockout: {title}",
        "",
        "ΔF1 and Δ log p (the gold target token's log-probability at q, mean over samples) of each "
        "condition against its reference, with 95% bootstrap intervals over the test samples and a "
        "paired permutation p-value for ΔF1 (p (BH): Benjamini–Hochberg across the knockout-vs-random "
        "rows). `random:` blocks as many random edges per sample in the same layers; `receiver:` as many "
        "edges into the same rows from sources outside the set's span (not the anchor, resp. the text).",
        "",
        "| edges | layers | condition | vs | edges blocked / sample | F1 (vs) | F1 | ΔF1 | 95% CI | p "
        "| p (BH) | Δ log p | 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in items:
        c = e.condition
        lines.append(
            f"| {c.edges} | {c.spec} | {c.kind} | {e.reference} | {e.blocked:.1f} "
            f"| {e.f1.f1_a:.4f} | {e.f1.f1_b:.4f} | {e.f1.diff:+.4f} | [{e.f1.lo:+.4f}, {e.f1.hi:+.4f}] "
            f"| {e.f1.p_text()} | {e.f1.p_text(adjusted=True)} | {e.d_logp:+.4f} "
            f"| [{e.d_logp_lo:+.4f}, {e.d_logp_hi:+.4f}] |"
        )
    return "\n".join(lines) + "\n"


def _plot_rows(items: list[Effect]) -> list[dict[str, Any]]:
    return [
        {"group": f"{e.condition.edges}\n{e.condition.spec}", "kind": e.condition.kind, "d_f1": e.f1.diff,
         "d_f1_lo": e.f1.lo, "d_f1_hi": e.f1.hi, "d_logp": e.d_logp, "d_logp_lo": e.d_logp_lo,
         "d_logp_hi": e.d_logp_hi}
        for e in items
        if e.reference == "baseline"
    ]  # fmt: skip


def analyze_knockout(
    subject: Subject, out_dir: str | Path, opts: KnockoutConfig, seed: int = 42
) -> KnockoutEffects:
    """knockout_samples.csv -> knockout.csv, knockout.png, knockout.md; returns the effects as the
    files hold them."""
    out_dir = Path(out_dir)
    conds = compute_samples(subject, out_dir, opts, seed)
    meta = json.loads((out_dir / META_FILE).read_text())
    # the statistics' own settings beside the samples' identity (not compared on a resume)
    meta.update(
        title=subject.name, n_boot=opts.n_boot, n_perm=opts.n_perm, n_layers=_n_layers(subject.model)
    )  # the depth places its windows across models
    KnockoutEffects(meta, effects(subject, conds, out_dir, opts, seed)).write(out_dir)
    result = KnockoutEffects.read(out_dir)
    result.figure(out_dir)
    from rich.console import Console

    Console().print(result.markdown(), markup=False, highlight=False, soft_wrap=True)
    return result
