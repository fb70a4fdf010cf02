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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mre.analysis.flow_groups import GROUPS_FILE, FlowGroups, analyze_groups
from mre.analysis.stream import AnalysisError, Identity, SampleStream, choose, samples_sha1
from mre.config import RunConfigError, load_run_config
from mre.data.batches import Collator
from mre.data.context import TaskContext, build_context
from mre.data.prompts import Encoded
from mre.flow.engine import FlowEngine
from mre.flow.files import (
    SAMPLE_COLUMNS,
    SAMPLE_QUOTING,
    read_layers,
    read_samples,
    sample_rows,
    sample_values,
    summarize,
    write_layers,
)
from mre.flow.options import Backend, FlowAnalysisConfig, FlowLoss, Normalize
from mre.flow.plots import plot_flow, plot_token_example
from mre.flow.samples import flow_batch, label_token_ids, measurable
from mre.rundir import ANALYSIS, MODEL, RunDirError, resolve_run_dir
from mre.stats import LayerStats

log = logging.getLogger(__name__)

SAMPLES_FILE = "flow_samples.csv"
META_FILE = "flow_meta.json"
FLOW_FILE = "flow.csv"


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


def _meta(subject: Subject, opts: FlowAnalysisConfig, ids: list[str], seed: int) -> dict[str, Any]:
    cfg, s = subject.cfg, subject.context.setting
    return {
        "subject": subject.source,
        "dataset": subject.context.dataset_name,
        "direction": str(s.direction),
        "with_anchor": s.with_anchor,
        "model": str(cfg.model.name),
        "n_samples": len(ids),
        "samples_sha1": samples_sha1(ids),
        "seed": seed,
        "batch_size": opts.batch_size,
        "engine": opts.measurement(),
    }


def _label_ids(subject: Subject, opts: FlowAnalysisConfig) -> list[int] | None:
    if str(opts.loss) == FlowLoss.label_restricted and not subject.context.setting.is_tli:
        raise AnalysisError("flow.loss=label_restricted needs direction=tli (a C-way loss over the codes)")
    return label_token_ids(subject.context, opts.loss)


def chosen_samples(subject: Subject, opts: FlowAnalysisConfig, seed: int) -> list[Encoded]:
    """The test samples the analysis measures: a seeded subset of those the loss is defined for."""
    ctx = subject.context
    chosen = choose(measurable(ctx.items("test"), _label_ids(subject, opts)), opts.n_samples, seed)
    if not chosen:
        raise AnalysisError(f"{ctx.dataset_name}: the test split has no encoded samples")
    return chosen


def compute_flow_samples(subject: Subject, out_dir: Path, opts: FlowAnalysisConfig, seed: int) -> Path:
    """Stream the flow of the selected test samples into `flow_samples.csv` (resumable,
    `mre.analysis.stream`); the rows end sorted by sample and layer."""
    ctx = subject.context
    label_ids = _label_ids(subject, opts)
    records = ctx.records("test")
    chosen = chosen_samples(subject, opts, seed)
    ids = [records[e.index].id for e in chosen]
    if not ctx.setting.with_anchor:
        log.warning("the setting has no anchor: S_wp and S_pq are undefined (NaN); only S_ww is measured")
    spath = out_dir / SAMPLES_FILE
    meta = _meta(subject, opts, ids, seed)
    identity = Identity(
        out_dir / META_FILE, meta, opts.restart, "flow.restart=true", (out_dir / GROUPS_FILE,)
    )

    def complete(sample: Any, rows: list[dict[str, str]]) -> bool:
        return sorted(int(r["layer"]) for r in rows) == list(range(meta.get("n_layers") or 0))

    stream = SampleStream(
        spath,
        SAMPLE_COLUMNS,
        lambda r: int(r["sample"]),
        lambda e: e.index,
        complete,
        SAMPLE_QUOTING,
        identity,
    )
    old = stream.previous()
    if old is not None:
        meta["n_layers"] = old.get("n_layers")
    engine = FlowEngine(subject.model, opts, bos_token_id=ctx.tokenizer.bos_token_id)
    collate = Collator(ctx.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device

    def per_chunk(k: int, chunk: list[Encoded], todo: set) -> list[dict[str, Any]]:
        batch = {key: v.to(device) for key, v in flow_batch(collate(chunk), label_ids).items()}
        res = engine.compute(batch)
        meta["n_layers"] = res.n_layers
        return sample_rows(
            res, [(b, e.index, records[e.index].id) for b, e in enumerate(chunk) if e.index in todo]
        )

    stream.run(chosen, opts.batch_size, per_chunk, opts.progress, f"flow {subject.name}")
    rows = stream.sort(lambda r: (int(r["sample"]), int(r["layer"])))
    done = {int(r["sample"]) for r in rows}
    missing = {e.index for e in chosen} - done
    if missing or len(rows) != len(done) * (meta["n_layers"] or 0):
        raise AnalysisError(f"{spath}: {len(missing)} samples incomplete after the pass (rerun to resume)")
    return spath


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
        chosen = choose(items, opts.n_samples, seed)[: opts.n_examples]
    paths = []
    for k, ex in enumerate(token_flows(subject, chosen, opts)):
        path = out_dir / "examples" / f"{k}_{_safe(ex['id'])}.png"
        paths.append(plot_token_example(ex, path, subject.name))
    return paths


# --------------------------------------------------------------------------------------------------
# the whole analysis of one subject
# --------------------------------------------------------------------------------------------------


def _stats_equal(a: dict[str, LayerStats], b: dict[str, LayerStats]) -> bool:
    fields_ = ("mean", "std", "lo", "hi", "n")
    return a.keys() == b.keys() and all(
        np.array_equal(getattr(a[m], f), getattr(b[m], f), equal_nan=True) for m in a for f in fields_
    )


@dataclass(eq=False)
class FlowAnalysis:
    """The flow of one model over a test set, as its files hold it: the settings (`flow_meta.json`)
    and per metric and layer the mean, std, 95% interval and n (`flow.csv`; a metric undefined at every
    layer, S_wp and S_pq without an anchor, is left out). The flow by group, when measured, rides
    along (`flow_groups_summary.csv`)."""

    meta: dict[str, Any]
    stats: dict[str, LayerStats]
    groups: FlowGroups | None = field(default=None)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FlowAnalysis)
            and self.meta == other.meta
            and _stats_equal(self.stats, other.stats)
            and self.groups == other.groups
        )

    @property
    def name(self) -> str:
        """The subject as the titles name it (`Subject.name`)."""
        m = self.meta
        base = " (base)" if str(m["subject"]).startswith("model config ") else ""
        return f"{m['dataset']} | {m['direction']} | anchor={m['with_anchor']} | {m['model']}{base}"

    @property
    def n(self) -> int:
        """The most samples any metric is defined on."""
        return int(max(s.n.max() for s in self.stats.values()))

    def write(self, out_dir: str | Path) -> Path:
        """`flow.csv` and `flow_meta.json` (and the groups' summary) into `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / META_FILE).write_text(json.dumps(self.meta, indent=2))
        if self.groups is not None:
            self.groups.write(out_dir)
        return write_layers(self.stats, out_dir / FLOW_FILE)

    @classmethod
    def read(cls, out_dir: str | Path) -> FlowAnalysis:
        out_dir = Path(out_dir)
        groups = FlowGroups.read(out_dir) if FlowGroups.exists(out_dir) else None
        return cls(json.loads((out_dir / META_FILE).read_text()), read_layers(out_dir / FLOW_FILE), groups)

    def figure(self, out_dir: str | Path) -> Path:
        """`flow.png`: the curves with their intervals."""
        return plot_flow(
            self.stats, Path(out_dir) / "flow.png", f"information flow, {self.name} (n={self.n})"
        )

    def markdown(self) -> str:
        """Per layer, each metric's mean with its 95% interval (and the groups' table)."""
        lines = [
            f"# Information flow: {self.name}",
            "",
            "| layer | " + " | ".join(f"{m} [95% CI]" for m in self.stats) + " |",
        ]
        lines.append("|---" * (1 + len(self.stats)) + "|")
        for layer in range(len(next(iter(self.stats.values())).mean)):
            lines.append(f"| {layer} | " + " | ".join(_cell(s, layer) for s in self.stats.values()) + " |")
        if self.groups is not None:
            lines += ["", "## Flow by group (flow_groups_summary.csv)", "", self.groups.markdown()]
        return "\n".join(lines) + "\n"


def _cell(s: LayerStats, layer: int) -> str:
    return "n/a" if np.isnan(s.mean[layer]) else f"{s.mean[layer]:.3g} [{s.lo[layer]:.3g}, {s.hi[layer]:.3g}]"


def analyze_subject(
    subject: Subject, out_dir: str | Path, opts: FlowAnalysisConfig, seed: int = 42
) -> FlowAnalysis:
    """flow_samples.csv -> flow.csv, flow.png, examples/ (and the flow by group); returns the result."""
    out_dir = Path(out_dir)
    spath = compute_flow_samples(subject, out_dir, opts, seed)
    _, values = sample_values(read_samples(spath))
    stats = summarize(values, opts.n_boot, seed, opts.normalize)
    with_anchor = subject.context.setting.with_anchor
    groups = None
    if opts.by_group and with_anchor:
        groups = analyze_groups(subject, chosen_samples(subject, opts, seed), out_dir, opts, seed)
    elif opts.by_group:
        log.info("no anchor in this setting: no flow by group")
    write_layers(stats, out_dir / FLOW_FILE)
    # what the files hold (the meta as the stream wrote it), so a read-back result is equal
    result = FlowAnalysis(
        json.loads((out_dir / META_FILE).read_text()), read_layers(out_dir / FLOW_FILE), groups
    )
    result.figure(out_dir)
    if with_anchor and (opts.n_examples > 0 or opts.example_ids):
        _examples(subject, out_dir, opts, seed)
    elif not with_anchor:
        log.info("no anchor in this setting: no token-level example pictures")
    _print_summary(result, out_dir)
    return result


def analyze_run(
    run_dir: str | Path, opts: FlowAnalysisConfig, seed: int, cache_dir: str | None
) -> FlowAnalysis:
    """The flow analysis of a finished train.py run, into `<run dir>/analysis/`."""
    subject = load_run(run_dir, cache_dir=cache_dir, device=opts.device)
    return analyze_subject(subject, Path(subject.source) / ANALYSIS, opts, seed=seed)


def _print_summary(result: FlowAnalysis, out_dir: Path) -> None:
    from rich.console import Console

    console = Console()
    console.print(result.markdown(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"analysis directory: {out_dir}", markup=False, soft_wrap=True)
