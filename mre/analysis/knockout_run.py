"""Attention knockout of one model: `python analyze.py run_dir=<run> knockout.layers=first:5`.

For N test samples (a seeded subset) the model answers once unchanged (the baseline) and once per
condition: for every edge set in `knockout.edges` and every layer spec in `knockout.layers`, with
those edges blocked in those layers, and with as many random edges blocked in the same layers (the
control; `mre.flow.knockout`). Per sample it records the prediction (TLI: the arg-max code at q; WLI:
greedy generation, the prompt pass knocked out) and the log-probability of the gold target token at q
(the token the flow's loss is taken on).

Files in the analysis directory:

* `knockout_samples.csv`: one row per (sample, condition), appended chunk by chunk, so a killed
  analysis resumes where it stopped (`knockout_meta.json` holds the settings; another setting is
  refused, `knockout.restart=true` starts over);
* `knockout.csv`: per condition, ΔF1 against the baseline with its paired bootstrap interval and
  permutation p-value, and the mean Δ log-probability with its bootstrap interval; for each knockout,
  the same against its random control (Benjamini-Hochberg adjusted across the knockouts);
* `knockout.png` (ΔF1 and Δ log p, knockout vs random, per edge set and layers) and `knockout.md`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from mre.analysis.flow_run import AnalysisError, Subject, _progress, refuse_other_settings, select_samples
from mre.config import EdgeSet, EvalConfig, KnockoutConfig
from mre.data.batches import Collator
from mre.flow.engine import _hf_model
from mre.flow.knockout import KnockoutError, edge_masks, knockout, parse_layers, random_edges
from mre.flow.plots import plot_knockout
from mre.results import append_stream_csv, read_stream_csv
from mre.stats import Comparison, adjust_bh, bootstrap_layer_means, compare, pair_counts
from mre.tasks.generative import generate_answers

log = logging.getLogger(__name__)

SAMPLES_FILE = "knockout_samples.csv"
META_FILE = "knockout_meta.json"
RESULT_FILE = "knockout.csv"
SAMPLE_COLUMNS = ["id", "condition", "gold", "prediction", "logp", "blocked"]


@dataclass(frozen=True)
class Condition:
    """The baseline (edges None) or a knockout of an edge set in some layers (random: the control)."""

    edges: EdgeSet | None = None
    spec: str = ""
    layers: tuple[int, ...] = ()
    random: bool = False

    @property
    def name(self) -> str:
        if self.edges is None:
            return "baseline"
        return f"{'random:' if self.random else ''}{self.edges}@{self.spec}"


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
            e = EdgeSet(str(edges))
            out += [Condition(e, text, layers), Condition(e, text, layers, random=True)]
    return out


# --------------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------------


def _n_layers(model: torch.nn.Module) -> int:
    cfg = _hf_model(model).config
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
            codes = torch.tensor(ctx.builder.code_ids, device=logits.device)
            preds = [ctx.builder.labels[k] for k in logits[:, codes].argmax(-1).tolist()]
        else:
            preds = generate_answers(
                model, ctx.tokenizer, ctx.builder, batch["prompt_ids"], batch["prompt_mask"], budget
            )
    return preds, logp.double().cpu().numpy()


def _blocks(batch: dict[str, torch.Tensor], conds: list[Condition], gen: torch.Generator) -> list:
    """The blocked-edge mask [B, L, L] of each condition (None for the baseline)."""
    mask = batch["prompt_mask"] != 0
    sets, pool = edge_masks(mask, batch["q"], batch["text_range"], batch["anchor_range"])
    out = []
    for c in conds:
        if c.edges is None:
            out.append(None)
        elif c.random:
            out.append(random_edges(pool, sets[c.edges].flatten(1).sum(1), gen))
        else:
            out.append(sets[c.edges])
    return out


def _golds(subject: Subject, indices: list[int]) -> list[str]:
    ctx = subject.context
    records = ctx.records("test")
    if ctx.setting.is_tli:
        return [str(records[i].tli) for i in indices]
    return [ctx.builder.answer_of(records[i]) for i in indices]


def _check_meta(out_dir: Path, meta: dict[str, Any], restart: bool) -> None:
    mpath = out_dir / META_FILE
    if not restart and mpath.exists():
        refuse_other_settings(
            out_dir / SAMPLES_FILE, json.loads(mpath.read_text()), meta, "knockout.restart=true"
        )
    elif (out_dir / SAMPLES_FILE).exists():
        (out_dir / SAMPLES_FILE).unlink()
    mpath.write_text(json.dumps(meta, indent=2))


def _run_budget(subject: Subject) -> int:
    """The run's own WLI generation budget (a base model in model-config mode has none: the default)."""
    return int(OmegaConf.select(subject.cfg, "eval.max_new_tokens", default=EvalConfig.max_new_tokens))


def compute_samples(subject: Subject, out_dir: Path, opts: KnockoutConfig, seed: int) -> list[Condition]:
    """Stream every (sample, condition) row into knockout_samples.csv (resumable)."""
    ctx = subject.context
    if not ctx.setting.with_anchor:
        raise AnalysisError("the attention knockout blocks edges of the anchor: the run has no anchor")
    out_dir.mkdir(parents=True, exist_ok=True)
    conds = conditions(opts, _n_layers(subject.model))
    items = ctx.items("test")
    chosen = [items[i] for i in select_samples(len(items), opts.n_samples, seed)]
    records = ctx.records("test")
    ids = [records[e.index].id for e in chosen]
    budget = int(opts.max_new_tokens or _run_budget(subject))
    meta = {
        "subject": subject.source,
        "samples_sha1": hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest(),
        "conditions": [c.name for c in conds],
        "seed": seed,
        "batch_size": opts.batch_size,
        "max_new_tokens": budget,
    }
    _check_meta(out_dir, meta, opts.restart)
    spath = out_dir / SAMPLES_FILE
    rows = read_stream_csv(spath)
    per_id: dict[str, int] = {}
    for r in rows:
        per_id[r["id"]] = per_id.get(r["id"], 0) + 1
    done = {i for i, n in per_id.items() if n == len(conds)}
    append_stream_csv(spath, SAMPLE_COLUMNS, [r for r in rows if r["id"] in done], new=True)
    collate = Collator(ctx.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device
    chunks = [chosen[i : i + opts.batch_size] for i in range(0, len(chosen), opts.batch_size)]
    with _progress(opts.progress, len(chosen), len(done), f"knockout: {subject.name}") as advance:
        for k, chunk in enumerate(chunks):
            chunk_ids = [records[e.index].id for e in chunk]
            if all(i in done for i in chunk_ids):
                continue
            gen = torch.Generator().manual_seed(seed * 1_000_003 + k)  # the same edges on a resume
            batch = {key: v.to(device) for key, v in collate(chunk).items()}
            golds = _golds(subject, [e.index for e in chunk])
            new = []
            for cond, block in zip(conds, _blocks(batch, conds, gen), strict=True):
                preds, logp = _answer(subject, batch, block, cond, budget)
                blocked = [0] * len(chunk) if block is None else block.flatten(1).sum(1).tolist()
                values = zip(chunk_ids, golds, preds, logp, blocked, strict=True)
                new += [
                    dict(zip(SAMPLE_COLUMNS, (i, cond.name, g, p, repr(float(lp)), n), strict=True))
                    for i, g, p, lp, n in values
                    if i not in done
                ]
            append_stream_csv(spath, SAMPLE_COLUMNS, new, new=False)
            advance(sum(i not in done for i in chunk_ids))
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
    """Every condition against the baseline, then every knockout against its random control."""
    rows = _by_condition(read_stream_csv(out_dir / SAMPLES_FILE))
    vs_base = [_effect(c, "baseline", rows, subject, opts, seed) for c in conds if c.edges is not None]
    vs_random = [
        _effect(c, Condition(c.edges, c.spec, c.layers, True).name, rows, subject, opts, seed)
        for c in conds
        if c.edges is not None and not c.random
    ]
    adjust_bh([e.f1 for e in vs_random])
    return vs_base + vs_random


RESULT_COLUMNS = [
    "edges", "layers", "layer_ids", "condition", "reference", "n", "blocked_per_sample", "f1_reference",
    "f1", "d_f1", "d_f1_lo", "d_f1_hi", "p", "p_bh", "d_logp", "d_logp_lo", "d_logp_hi",
]  # fmt: skip


def write_effects(items: list[Effect], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(RESULT_COLUMNS)
        for e in items:
            c = e.condition
            w.writerow(
                [c.edges, c.spec, " ".join(map(str, c.layers)), "random" if c.random else "knockout",
                 e.reference, e.f1.n, e.blocked, e.f1.f1_a, e.f1.f1_b, e.f1.diff, e.f1.lo, e.f1.hi,
                 e.f1.p, "" if e.f1.p_adj is None else e.f1.p_adj, e.d_logp, e.d_logp_lo, e.d_logp_hi]
            )  # fmt: skip
    return path


def effects_markdown(items: list[Effect], title: str) -> str:
    lines = [
        f"# Attention knockout: {title}",
        "",
        "ΔF1 and Δ log p (the gold target token's log-probability at q, mean over samples) of each "
        "condition against its reference, with 95% bootstrap intervals over the test samples and a "
        "paired permutation p-value for ΔF1 (p (BH): Benjamini–Hochberg across the knockout-vs-random "
        "rows). `random:` blocks as many random edges per sample in the same layers.",
        "",
        "| edges | layers | condition | vs | edges blocked / sample | F1 (vs) | F1 | ΔF1 | 95% CI | p "
        "| p (BH) | Δ log p | 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in items:
        c = e.condition
        kind = "random" if c.random else "knockout"
        lines.append(
            f"| {c.edges} | {c.spec} | {kind} | {e.reference} | {e.blocked:.1f} "
            f"| {e.f1.f1_a:.4f} | {e.f1.f1_b:.4f} | {e.f1.diff:+.4f} | [{e.f1.lo:+.4f}, {e.f1.hi:+.4f}] "
            f"| {e.f1.p_text()} | {e.f1.p_text(adjusted=True)} | {e.d_logp:+.4f} "
            f"| [{e.d_logp_lo:+.4f}, {e.d_logp_hi:+.4f}] |"
        )
    return "\n".join(lines) + "\n"


def _plot_rows(items: list[Effect]) -> list[dict[str, Any]]:
    return [
        {"group": f"{e.condition.edges}\n{e.condition.spec}", "kind": "random" if e.condition.random
         else "knockout", "d_f1": e.f1.diff, "d_f1_lo": e.f1.lo, "d_f1_hi": e.f1.hi,
         "d_logp": e.d_logp, "d_logp_lo": e.d_logp_lo, "d_logp_hi": e.d_logp_hi}
        for e in items
        if e.reference == "baseline"
    ]  # fmt: skip


def analyze_knockout(
    subject: Subject, out_dir: str | Path, opts: KnockoutConfig, seed: int = 42
) -> dict[str, Any]:
    """knockout_samples.csv -> knockout.csv, knockout.png, knockout.md; returns the effects and paths."""
    out_dir = Path(out_dir)
    conds = compute_samples(subject, out_dir, opts, seed)
    items = effects(subject, conds, out_dir, opts, seed)
    csv_path = write_effects(items, out_dir / RESULT_FILE)
    md = out_dir / "knockout.md"
    md.write_text(effects_markdown(items, subject.name), encoding="utf-8")
    png = plot_knockout(_plot_rows(items), out_dir / "knockout.png", f"attention knockout, {subject.name}")
    from rich.console import Console

    Console().print(effects_markdown(items, subject.name), markup=False, highlight=False, soft_wrap=True)
    return {"effects": items, "knockout_csv": csv_path, "knockout_md": md, "knockout_png": png}
