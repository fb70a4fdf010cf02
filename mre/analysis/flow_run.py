"""Information flow of one model over N test samples (`python analyze.py run_dir=<run>` or a model
config), streamed, resumable and summarized with bootstrap intervals.

What is analysed (a `Subject`): the fine-tuned model of a train.py run directory (`model/` in
`save_pretrained` format; LoRA adapters are loaded onto the base model the run's model config
builds, with the run's seed, so a tiny random base is the same one the adapters were trained on), or
the untrained base model of a model config. The prompts are rebuilt from the run's own config with
the tokenizer saved beside the model, so the token ids are the ones the model was trained on.

Files written to the analysis directory (schemas: `mre.flow.files`):

* `flow_samples.csv`: one row per (sample, layer), appended chunk by chunk and flushed, so memory
  stays flat in N and a killed analysis keeps what it computed.
* `flow_meta.json`: the settings behind `flow_samples.csv`; a rerun with other settings is refused
  (`flow.restart=true` starts over) instead of mixing two analyses in one file.
* `flow.csv`: per layer, mean, std, 95% bootstrap interval and n of each metric, computed only from
  `flow_samples.csv` sorted by sample, so a resumed analysis gives exactly the file an
  uninterrupted one gives.
* `flow.png`: the three curves with their intervals.
* `examples/<k>_<id>.png` (+ `.csv`): for a few samples, token by token, the flow from each text
  token into the anchor (sum over anchor positions p of I[p, j]) and from each anchor token into q
  (I[q, p]), with I summed over layers (or one layer: `flow.example_layer`).

Resuming: the selected samples are processed in a fixed order, in fixed chunks of `flow.batch_size`;
a rerun skips complete samples, drops a torn last line, and recomputes an unfinished chunk with the
same composition (same padding, so the same numbers) writing only the samples still missing. "The
same numbers" holds on the same hardware and torch thread count: float32 sums taken in another order
(other threads, another GPU) differ in the last bits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mre.analysis.flow_groups import GROUPS_FILE, analyze_groups
from mre.analysis.flow_groups import markdown as groups_markdown
from mre.config import RunConfigError, load_run_config
from mre.data.batches import Collator
from mre.data.context import TaskContext, build_context
from mre.data.prompts import Encoded
from mre.flow.callback import flow_batch, label_token_ids, measurable
from mre.flow.engine import FlowEngine
from mre.flow.files import (
    complete_samples,
    read_samples,
    rows_text,
    sample_rows,
    sample_values,
    summarize,
    write_layers,
    write_samples,
)
from mre.flow.options import Backend, FlowAnalysisConfig, FlowLoss, Normalize
from mre.flow.plots import plot_flow, plot_token_example
from mre.rundir import ANALYSIS, MODEL, RunDirError, resolve_run_dir
from mre.stats import LayerStats

log = logging.getLogger(__name__)

SAMPLES_FILE = "flow_samples.csv"
META_FILE = "flow_meta.json"
FLOW_FILE = "flow.csv"


class AnalysisError(RuntimeError):
    """The analysis cannot run with this input (with what to do instead)."""


@dataclass
class Subject:
    """A (training) config, its task context and the model whose flow is measured."""

    cfg: DictConfig
    context: TaskContext
    model: nn.Module
    name: str
    source: str


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _place(model: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    if cfg.model.quantization:  # bitsandbytes weights cannot be moved after loading
        return model
    return model.to(device)


def _name(cfg: DictConfig, context: TaskContext, suffix: str = "") -> str:
    s = context.setting
    return f"{context.dataset_name} | {s.direction} | anchor={s.with_anchor} | {cfg.model.name}{suffix}"


def load_run(run_dir: str | Path, cache_dir: str | None = None, device: str = "auto") -> Subject:
    """The fine-tuned model of a train.py run directory, with the task context of its config."""
    from mre.models import DTYPES, build_model, quiet_bitsandbytes

    try:
        run_dir = resolve_run_dir(run_dir)
        cfg = load_run_config(run_dir)
    except (RunDirError, RunConfigError) as e:
        raise AnalysisError(str(e)) from e
    if str(cfg.task) != "generative":
        raise AnalysisError(
            f"{run_dir} is a {str(cfg.task)!r} run; the attention-saliency flow applies to generative "
            "causal-LM runs (task: generative)"
        )
    if cache_dir is not None:
        cfg.paths.cache_dir = str(cache_dir)
    model_dir = run_dir / MODEL
    if not model_dir.is_dir():
        raise AnalysisError(
            f"{run_dir} has no model/ directory: the run did not finish. Finish it first: "
            f"python train.py resume={run_dir}"
        )
    # the tokenizer saved with the model: the token ids it was trained on
    context = build_context(cfg, tokenizer_path=model_dir)
    dtype = DTYPES[str(cfg.model.dtype)]
    if (model_dir / "adapter_config.json").exists():
        if not cfg.model.quantization:
            quiet_bitsandbytes()
        from peft import PeftModel

        base_cfg = OmegaConf.merge(cfg.model, {"lora": None})
        base = build_model(base_cfg, context.tokenizer, seed=cfg.seed, cache_dir=cfg.paths.cache_dir)
        model = PeftModel.from_pretrained(base, str(model_dir))
    elif (model_dir / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    else:
        raise AnalysisError(f"{model_dir} holds neither a model (config.json) nor LoRA adapters")
    model = _place(model, cfg, _device(device))
    return Subject(cfg, context, model, _name(cfg, context), str(run_dir))


def load_base(cfg: DictConfig, device: str = "auto") -> Subject:
    """The untrained model of a model config (`python analyze.py model=... dataset=...`)."""
    from mre.models import build_model, check_model_config

    check_model_config(cfg.model)
    context = build_context(cfg)
    model = build_model(cfg.model, context.tokenizer, seed=cfg.seed, cache_dir=cfg.paths.cache_dir)
    model = _place(model, cfg, _device(device))
    return Subject(cfg, context, model, _name(cfg, context, " (base)"), f"model config {cfg.model.name}")


# --------------------------------------------------------------------------------------------------
# the streamed, resumable pass
# --------------------------------------------------------------------------------------------------


def select_samples(n_items: int, n: int | None, seed: int) -> list[int]:
    """Positions in the encoded test split: all of them, or a seeded subset of n in split order."""
    if n is None or n >= n_items:
        return list(range(n_items))
    if n <= 0:
        raise AnalysisError(f"flow.n_samples must be positive, got {n}")
    return sorted(random.Random(seed).sample(range(n_items), n))


def _meta(subject: Subject, opts: FlowAnalysisConfig, ids: list[str], seed: int) -> dict[str, Any]:
    cfg, s = subject.cfg, subject.context.setting
    return {
        "subject": subject.source,
        "dataset": subject.context.dataset_name,
        "direction": str(s.direction),
        "with_anchor": s.with_anchor,
        "model": str(cfg.model.name),
        "n_samples": len(ids),
        "samples_sha1": hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest(),
        "seed": seed,
        "batch_size": opts.batch_size,
        "engine": opts.measurement(),
    }


def _check_meta(out_dir: Path, meta: dict[str, Any], restart: bool) -> int | None:
    """n_layers of a compatible partial analysis (None when starting fresh)."""
    mpath, spath = out_dir / META_FILE, out_dir / SAMPLES_FILE
    if restart or not mpath.exists() or not spath.exists():
        for p in (mpath, spath, out_dir / GROUPS_FILE):  # the groups follow the samples' settings
            p.unlink(missing_ok=True)
        return None
    old = json.loads(mpath.read_text())
    refuse_other_settings(spath, old, meta, "flow.restart=true")
    return old.get("n_layers")


def refuse_other_settings(samples: Path, old: dict[str, Any], meta: dict[str, Any], restart: str) -> None:
    """A partial samples file made with other settings (`old`, from its meta file) is never resumed:
    the error names each differing setting and the `restart` override that starts over."""
    diff = [k for k in meta if k != "subject" and old.get(k) != meta[k]]
    if diff:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {meta[k]!r} now" for k in diff)
        raise AnalysisError(
            f"{samples} was made with other settings ({detail}). Resuming would mix two analyses: "
            f"rerun with the same settings, or with {restart} to start over."
        )


def _label_ids(subject: Subject, opts: FlowAnalysisConfig) -> list[int] | None:
    if str(opts.loss) == FlowLoss.label_restricted and not subject.context.setting.is_tli:
        raise AnalysisError("flow.loss=label_restricted needs direction=tli (a C-way loss over the codes)")
    return label_token_ids(subject.context, opts.loss)


def chosen_samples(subject: Subject, opts: FlowAnalysisConfig, seed: int) -> list[Encoded]:
    """The test samples the analysis measures: a seeded subset of those the loss is defined for."""
    ctx = subject.context
    items = measurable(ctx.items("test"), _label_ids(subject, opts))
    chosen = [items[i] for i in select_samples(len(items), opts.n_samples, seed)]
    if not chosen:
        raise AnalysisError(f"{ctx.dataset_name}: the test split has no encoded samples")
    return chosen


def compute_flow_samples(subject: Subject, out_dir: Path, opts: FlowAnalysisConfig, seed: int) -> Path:
    """Stream the flow of the selected test samples into `flow_samples.csv` (resumable)."""
    ctx = subject.context
    out_dir.mkdir(parents=True, exist_ok=True)
    label_ids = _label_ids(subject, opts)
    records = ctx.records("test")
    chosen = chosen_samples(subject, opts, seed)
    ids = [records[e.index].id for e in chosen]
    if not ctx.setting.with_anchor:
        log.warning("the setting has no anchor: S_wp and S_pq are undefined (NaN); only S_ww is measured")

    meta = _meta(subject, opts, ids, seed)
    n_layers = _check_meta(out_dir, meta, opts.restart)
    spath = out_dir / SAMPLES_FILE
    rows, torn = read_samples(spath)
    done = complete_samples(rows, n_layers)
    kept = [r for s in sorted(done) for r in done[s]]
    if torn or len(kept) != len(rows) or not spath.exists():
        write_samples(spath, kept)  # header only, or the file cut back to its complete samples
    if done:
        log.info("resuming: %d of %d samples already in %s", len(done), len(chosen), spath)

    engine = FlowEngine(subject.model, opts, bos_token_id=ctx.tokenizer.bos_token_id)
    collate = Collator(ctx.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device
    chunks = [chosen[i : i + opts.batch_size] for i in range(0, len(chosen), opts.batch_size)]
    with (
        _progress(opts.progress, len(chosen), len(done), subject.name) as advance,
        open(spath, "a", newline="", encoding="utf-8") as f,
    ):
        for chunk in chunks:
            todo = [(b, e.index, records[e.index].id) for b, e in enumerate(chunk) if e.index not in done]
            if not todo:
                continue
            batch = {k: v.to(device) for k, v in flow_batch(collate(chunk), label_ids).items()}
            res = engine.compute(batch)
            if n_layers is None:
                n_layers = res.n_layers
                meta["n_layers"] = n_layers
                (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
            f.write(rows_text(sample_rows(res, todo)))  # one write per chunk: a kill tears at most this chunk
            f.flush()
            advance(len(todo))
    if not (out_dir / META_FILE).exists():  # every sample was already there
        meta["n_layers"] = n_layers
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    _sort_samples(spath, n_layers, {e.index for e in chosen})
    return spath


def _sort_samples(path: Path, n_layers: int | None, expected: set[int]) -> None:
    """Check completeness and put the rows in sample order (a resumed file = an uninterrupted one)."""
    rows, torn = read_samples(path)
    done = complete_samples(rows, n_layers)
    missing = expected - set(done)
    if torn or missing:
        raise AnalysisError(f"{path}: {len(missing)} samples incomplete after the pass (rerun to resume)")
    ordered = [r for s in sorted(done) for r in sorted(done[s], key=lambda r: int(r["layer"]))]
    if ordered != rows:
        write_samples(path, ordered)


class _progress:
    """A rich progress bar over samples (or nothing), as a context manager yielding `advance(n)`."""

    def __init__(self, enabled: bool, total: int, completed: int, title: str) -> None:
        self.enabled, self.total, self.completed, self.title = enabled, total, completed, title

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("flow {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar.start()
        task = self.bar.add_task(self.title, total=self.total, completed=self.completed)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


# --------------------------------------------------------------------------------------------------
# token-level examples
# --------------------------------------------------------------------------------------------------


def _token_labels(tokenizer, ids: list[int]) -> list[str]:
    raw = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for i, r in zip(ids, raw, strict=True):
        s = tokenizer.decode([i])
        if not s.strip() or "\ufffd" in s:
            s = str(r)
        out.append(s.strip() or "·")
    return out


def token_flows(subject: Subject, chosen: list[Encoded], opts: FlowAnalysisConfig) -> list[dict[str, Any]]:
    """Per example: text tokens with their flow into the anchor, anchor tokens with their flow into q."""
    ctx = subject.context
    records = ctx.records("test")
    # token maps are never rescaled, and they are L x L maps, which only the eager backend keeps (one
    # sample at a time; the backends' numbers agree)
    raw = FlowAnalysisConfig(**{**vars(opts), "normalize": Normalize.none, "backend": Backend.eager})
    engine = FlowEngine(subject.model, raw, keep_maps="layer", bos_token_id=ctx.tokenizer.bos_token_id)
    collate = Collator(ctx.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device
    label_ids = _label_ids(subject, opts)
    out = []
    for e in chosen:
        batch = {k: v.to(device) for k, v in flow_batch(collate([e]), label_ids).items()}
        maps = engine.compute(batch).maps[0].double().cpu()  # [n_layers, L, L]
        if opts.example_layer is None:
            sal, which = maps.sum(0), "summed over layers"
        else:
            if not -maps.shape[0] <= opts.example_layer < maps.shape[0]:
                raise AnalysisError(
                    f"flow.example_layer={opts.example_layer}: the model has {maps.shape[0]} layers"
                )
            sal, which = maps[opts.example_layer], f"layer {opts.example_layer}"
        t0, t1 = e.text_range
        a0, a1 = e.anchor_range
        labels = _token_labels(ctx.tokenizer, e.prompt_ids)
        out.append(
            {
                "id": records[e.index].id,
                "sample": e.index,
                "text_tokens": labels[t0:t1],
                "text_flow": sal[a0:a1, t0:t1].sum(0).numpy(),  # sum over p in P of I[p, j], j in T
                "anchor_tokens": labels[a0:a1],
                "anchor_flow": sal[e.q, a0:a1].numpy(),  # I[q, p], p in P
                "target": _token_labels(ctx.tokenizer, [e.target])[0],
                "which": which,
            }
        )
    return out


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60]


def _examples(subject: Subject, out_dir: Path, opts: FlowAnalysisConfig, seed: int) -> list[Path]:
    ctx = subject.context
    items = measurable(ctx.items("test"), _label_ids(subject, opts))
    records = ctx.records("test")
    if opts.example_ids:
        by_id = {records[e.index].id: e for e in items}
        unknown = [i for i in opts.example_ids if i not in by_id]
        if unknown:
            raise AnalysisError(f"flow.example_ids: {unknown} are not test ids of {ctx.dataset_name}")
        chosen = [by_id[i] for i in opts.example_ids]
    else:
        chosen = [items[i] for i in select_samples(len(items), opts.n_samples, seed)[: opts.n_examples]]
    paths = []
    for k, ex in enumerate(token_flows(subject, chosen, opts)):
        path = out_dir / "examples" / f"{k}_{_safe(ex['id'])}.png"
        paths.append(plot_token_example(ex, path, subject.name))
    return paths


# --------------------------------------------------------------------------------------------------
# the whole analysis of one subject
# --------------------------------------------------------------------------------------------------


def analyze_subject(
    subject: Subject, out_dir: str | Path, opts: FlowAnalysisConfig, seed: int = 42
) -> dict[str, Any]:
    """flow_samples.csv -> flow.csv, flow.png, examples/; returns paths and per-layer means."""
    out_dir = Path(out_dir)
    spath = compute_flow_samples(subject, out_dir, opts, seed)
    _, values = sample_values(read_samples(spath)[0])
    stats = summarize(values, opts.n_boot, seed, opts.normalize)
    fpath = write_layers(stats, out_dir / FLOW_FILE)
    n = int(max(s.n.max() for s in stats.values()))
    png = plot_flow(stats, out_dir / "flow.png", f"information flow, {subject.name} (n={n})")
    examples: list[Path] = []
    with_anchor = subject.context.setting.with_anchor
    if with_anchor and (opts.n_examples > 0 or opts.example_ids):
        examples = _examples(subject, out_dir, opts, seed)
    elif not with_anchor:
        log.info("no anchor in this setting: no token-level example pictures")
    groups: dict[str, Any] = {}
    if opts.by_group and with_anchor:
        groups = analyze_groups(subject, chosen_samples(subject, opts, seed), out_dir, opts, seed)
    elif opts.by_group:
        log.info("no anchor in this setting: no flow by group")
    _print_summary(stats, subject.name, out_dir)
    if groups:
        _print_groups(groups["groups"])
    return {
        **groups,
        "flow_samples": spath,
        "flow_csv": fpath,
        "flow_png": png,
        "examples": examples,
        "means": {m: s.mean for m, s in stats.items()},
        "stats": stats,
        "n": n,
    }


def analyze_run(
    run_dir: str | Path, opts: FlowAnalysisConfig, seed: int, cache_dir: str | None
) -> dict[str, Any]:
    """The flow analysis of a finished train.py run, into `<run dir>/analysis/`."""
    subject = load_run(run_dir, cache_dir=cache_dir, device=opts.device)
    return analyze_subject(subject, Path(subject.source) / ANALYSIS, opts, seed=seed)


def _print_summary(stats: dict[str, LayerStats], title: str, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"information flow: {title}")
    t.add_column("layer", justify="right")
    for m in stats:
        t.add_column(f"{m} [95% CI]", justify="right")
    for layer in range(len(next(iter(stats.values())).mean)):
        cells = []
        for s in stats.values():
            cells.append(
                "n/a"
                if np.isnan(s.mean[layer])
                else f"{s.mean[layer]:.3g} [{s.lo[layer]:.3g}, {s.hi[layer]:.3g}]"
            )
        t.add_row(str(layer), *cells)
    console = Console()
    console.print(t)
    console.print(f"analysis directory: {out_dir}", markup=False, soft_wrap=True)


def _print_groups(items: list[dict[str, Any]]) -> None:
    from rich.console import Console

    Console().print("\nflow by group (flow_groups_summary.csv)\n" + groups_markdown(items), markup=False)
