"""Information flow of one model over N test samples (`python analyze.py run_dir=<run>` or a model
config), streamed, resumable and summarized with bootstrap intervals.

What is analysed (a ``Subject``): the fine-tuned model of a train.py run directory (``model/`` in
``save_pretrained`` format; LoRA adapters are loaded onto the base model the run's model config
builds, with the run's seed, so a tiny random base is the same one the adapters were trained on), or
the untrained base model of a model config. The prompts are rebuilt from the run's own config with
the tokenizer saved beside the model, so the token ids are the ones the model was trained on.

Files written to the analysis directory:

* ``flow_samples.csv``: one row per (sample, layer): ``sample`` (index in the test split), ``id``,
  ``layer``, ``S_wp``, ``S_pq``, ``S_ww`` and the pair counts ``n_wp``, ``n_pq``, ``n_ww``. Rows are
  appended chunk by chunk and flushed, so memory stays flat in N and a killed analysis keeps what it
  computed. Floats are written with ``repr`` (exact round trip).
* ``flow_meta.json``: the settings behind ``flow_samples.csv``; a rerun with other settings is
  refused (``flow.restart=true`` starts over) instead of mixing two analyses in one file.
* ``flow.csv``: per layer, for each metric m: ``m`` (mean), ``m_std``, ``m_lo``/``m_hi`` (95%
  percentile bootstrap interval of the mean, samples resampled jointly over layers, seeded) and
  ``m_n`` (samples where m is defined). Computed only from ``flow_samples.csv`` sorted by sample, so
  a resumed analysis gives exactly the file an uninterrupted one gives.
* ``flow.png``: the three curves with their intervals.
* ``examples/<k>_<id>.png`` (+ ``.csv``): for a few samples, token by token, the flow from each text
  token into the anchor (sum over anchor positions p of I[p, j]) and from each anchor token into q
  (I[q, p]), with I summed over layers (or one layer: ``flow.example_layer``).

Resuming: the selected samples are processed in a fixed order, in fixed chunks of
``flow.batch_size``; a rerun skips complete samples, drops a torn last line, and recomputes an
unfinished chunk with the same composition (same padding, so the same numbers) writing only the
samples still missing. "The same numbers" holds on the same hardware and torch thread count: float32
sums taken in another order (other threads, another GPU) differ in the last bits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mre.analysis.stats import LayerStats, bootstrap_layer_means
from mre.cli import make_datamodule
from mre.config import Config
from mre.data.datamodule import Collator, MREDataModule
from mre.flow.callback import flow_batch
from mre.flow.engine import FlowEngine
from mre.flow.plots import METRICS, plot_flow

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["sample", "id", "layer", *METRICS, "n_wp", "n_pq", "n_ww"]
SAMPLES_FILE = "flow_samples.csv"
META_FILE = "flow_meta.json"
FLOW_FILE = "flow.csv"


class AnalysisError(RuntimeError):
    """The analysis cannot run with this input (with what to do instead)."""


@dataclass
class FlowOptions:
    """Options of the flow analysis (the `flow:` node of conf/analyze.yaml)."""

    n_samples: int | None = 1000  # test samples (a seeded subset when the test split is larger; null: all)
    batch_size: int = 8  # samples per engine pass (= resume chunk)
    sources: str = "text"  # text | all_prior (engine option, DESIGN.md)
    loss: str = "full_vocab"  # full_vocab | label_restricted (tli only)
    normalize: str = "none"  # none | per_layer
    exclude_bos: bool = False
    n_boot: int = 1000  # bootstrap resamples of the per-layer intervals
    n_examples: int = 3  # token-level pictures (the first selected samples)
    example_ids: list[str] = field(default_factory=list)  # or these test ids
    example_layer: int | None = None  # null: I summed over layers
    restart: bool = False  # discard a partial flow_samples.csv made with other settings
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    progress: bool = True


@dataclass
class Subject:
    """A (training) config, its set-up data module and the model whose flow is measured."""

    cfg: DictConfig
    dm: MREDataModule
    model: nn.Module
    name: str
    source: str


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------


def resolve_run_dir(run_dir: str | Path) -> Path:
    """A run directory, or ``<sweep dir>/<job number>`` for the sweep's job of that number.

    Multirun job directories are named ``<num>_<overrides>`` and hold ``=`` and ``,``, which Hydra's
    command line only takes quoted (``'run_dir="multirun/x/1_a=b,c=d"'``); the job number is enough.
    """
    path = Path(run_dir)
    if path.exists() or not path.name.isdigit() or not path.parent.is_dir():
        return path
    hits = [p for p in path.parent.iterdir() if p.is_dir() and p.name.split("_", 1)[0] == path.name]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise AnalysisError(f"{path.parent} has no job {path.name} (no directory named {path.name}_...)")
    raise AnalysisError(f"{path.parent} has several directories of job {path.name}: {[h.name for h in hits]}")


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The composed config of a train.py run (``.hydra/config.yaml``), checked against the schema,
    with ``paths.output_dir`` set to the run directory (it is ``${hydra:...}`` in the file)."""
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise AnalysisError(
            f"{run_dir} is not a train.py run directory: {path} does not exist "
            "(give run_dir=<the directory a train.py run wrote>, or sweep_dir=<a multirun directory>)"
        )
    raw = OmegaConf.load(path)
    raw.paths.output_dir = str(run_dir)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), raw)
    except Exception as e:  # a config of another code version: use it as it is
        log.warning("%s does not match the current config schema (%s); using it unvalidated", path, e)
        cfg = raw
    return cfg


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _place(model: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    if cfg.model.quantization:  # bitsandbytes weights cannot be moved after loading
        return model
    return model.to(device)


def load_run(run_dir: str | Path, cache_dir: str | None = None, device: str = "auto") -> Subject:
    """The fine-tuned model of a train.py run directory, with the data module of its config."""
    from mre.models import DTYPES, build_model

    run_dir = resolve_run_dir(run_dir)
    cfg = load_run_config(run_dir)
    if cfg.task != "generative":
        raise AnalysisError(
            f"{run_dir} is a {cfg.task!r} run; the attention-saliency flow applies to generative causal-LM "
            "runs (task: generative)"
        )
    if cache_dir is not None:
        cfg.paths.cache_dir = str(cache_dir)
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise AnalysisError(
            f"{run_dir} has no model/ directory: the run did not finish. Finish it first (resume it with "
            f"python train.py hydra.run.dir={run_dir} ckpt_path=last and the overrides in "
            f"{run_dir / '.hydra' / 'overrides.yaml'})"
        )
    dm = make_datamodule(cfg)
    dm.pretrained_path = str(model_dir)  # the tokenizer saved with the model: the ids it was trained on
    dm.setup()
    dtype = DTYPES[cfg.model.dtype]
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base_cfg = OmegaConf.merge(cfg.model, {"lora": None})
        base = build_model(base_cfg, dm.tokenizer, seed=cfg.seed, cache_dir=cfg.paths.cache_dir)
        model = PeftModel.from_pretrained(base, str(model_dir))
    elif (model_dir / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    else:
        raise AnalysisError(f"{model_dir} holds neither a model (config.json) nor LoRA adapters")
    model = _place(model, cfg, _device(device))
    name = f"{cfg.dataset.name} | {cfg.direction.name} | anchor={cfg.with_anchor} | {cfg.model.name}"
    return Subject(cfg, dm, model, name, str(run_dir))


def load_base(cfg: DictConfig, device: str = "auto") -> Subject:
    """The untrained model of a model config (``python analyze.py model=... dataset=...``)."""
    from mre.models import build_model

    dm = make_datamodule(cfg)
    dm.setup()
    model = build_model(cfg.model, dm.tokenizer, seed=cfg.seed, cache_dir=cfg.paths.cache_dir)
    model = _place(model, cfg, _device(device))
    name = f"{cfg.dataset.name} | {cfg.direction.name} | anchor={cfg.with_anchor} | {cfg.model.name} (base)"
    return Subject(cfg, dm, model, name, f"model config {cfg.model.name}")


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


def _fmt(x: float) -> str:
    return repr(float(x))


def _read_samples(path: Path) -> tuple[list[dict[str, str]], bool]:
    """Rows of a (possibly torn) flow_samples.csv, and whether anything had to be dropped."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    torn = bool(text) and not text.endswith("\n")
    if torn:
        text = text[: text.rfind("\n") + 1]
    rows = []
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return [], torn
    if header != SAMPLE_COLUMNS:
        raise AnalysisError(f"{path} is not a flow_samples.csv of this version (columns {header})")
    for rec in reader:
        if len(rec) != len(SAMPLE_COLUMNS):
            torn = True
            break
        rows.append(dict(zip(SAMPLE_COLUMNS, rec, strict=True)))
    return rows, torn


def _complete(rows: list[dict[str, str]], n_layers: int | None) -> dict[int, list[dict[str, str]]]:
    """Samples whose rows cover every layer exactly once."""
    by: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(int(r["sample"]), []).append(r)
    if n_layers is None:
        return {}
    return {s: rs for s, rs in by.items() if sorted(int(r["layer"]) for r in rs) == list(range(n_layers))}


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SAMPLE_COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in SAMPLE_COLUMNS])
    os.replace(tmp, path)


def _meta(subject: Subject, opts: FlowOptions, ids: list[str], seed: int) -> dict[str, Any]:
    cfg = subject.cfg
    return {
        "subject": subject.source,
        "dataset": str(cfg.dataset.name),
        "direction": str(cfg.direction.name),
        "with_anchor": bool(cfg.with_anchor),
        "model": str(cfg.model.name),
        "n_samples": len(ids),
        "samples_sha1": hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest(),
        "seed": seed,
        "batch_size": opts.batch_size,
        "engine": {
            "sources": opts.sources,
            "loss": opts.loss,
            "normalize": opts.normalize,
            "exclude_bos": opts.exclude_bos,
        },
    }


def _check_meta(out_dir: Path, meta: dict[str, Any], restart: bool) -> int | None:
    """n_layers of a compatible partial analysis (None when starting fresh)."""
    mpath, spath = out_dir / META_FILE, out_dir / SAMPLES_FILE
    if restart or not mpath.exists() or not spath.exists():
        for p in (mpath, spath):
            p.unlink(missing_ok=True)
        return None
    old = json.loads(mpath.read_text())
    diff = [k for k in meta if k not in ("subject",) and old.get(k) != meta[k]]
    if diff:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {meta[k]!r} now" for k in diff)
        raise AnalysisError(
            f"{spath} was made with other settings ({detail}). Resuming would mix two analyses: "
            "rerun with the same settings, or with flow.restart=true to start over."
        )
    return old.get("n_layers")


def compute_flow_samples(subject: Subject, out_dir: Path, opts: FlowOptions, seed: int) -> Path:
    """Stream the flow of the selected test samples into ``flow_samples.csv`` (resumable)."""
    dm, cfg = subject.dm, subject.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    items = dm.encoded["test"]
    records = dm.records("test")
    chosen = [items[i] for i in select_samples(len(items), opts.n_samples, seed)]
    if not chosen:
        raise AnalysisError(f"{cfg.dataset.name}: the test split has no encoded samples")
    ids = [records[e.index].id for e in chosen]
    label_ids = None
    if opts.loss == "label_restricted":
        if str(cfg.direction.name) != "tli":
            raise AnalysisError(
                "flow.loss=label_restricted needs direction=tli (a C-way loss over the codes)"
            )
        label_ids = dm.builder.code_ids
    if not cfg.with_anchor:
        log.warning("the setting has no anchor: S_wp and S_pq are undefined (NaN); only S_ww is measured")

    meta = _meta(subject, opts, ids, seed)
    n_layers = _check_meta(out_dir, meta, opts.restart)
    spath = out_dir / SAMPLES_FILE
    rows, torn = _read_samples(spath)
    done = _complete(rows, n_layers)
    kept = [r for s in sorted(done) for r in done[s]]
    if torn or len(kept) != len(rows) or not spath.exists():
        _write_rows(spath, kept)  # header only, or the file cut back to its complete samples
    if done:
        log.info("resuming: %d of %d samples already in %s", len(done), len(chosen), spath)

    engine = FlowEngine(
        subject.model,
        sources=opts.sources,
        loss=opts.loss,
        normalize=opts.normalize,
        exclude_bos=opts.exclude_bos,
    )
    collate = Collator(dm.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device
    chunks = [chosen[i : i + opts.batch_size] for i in range(0, len(chosen), opts.batch_size)]
    with (
        _progress(opts.progress, len(chosen), len(done), subject.name) as advance,
        open(spath, "a", newline="", encoding="utf-8") as f,
    ):
        for chunk in chunks:
            todo = [e for e in chunk if e.index not in done]
            if not todo:
                continue
            batch = {k: v.to(device) for k, v in flow_batch(collate(chunk), label_ids).items()}
            res = engine.compute(batch)
            if n_layers is None:
                n_layers = res.n_layers
                meta["n_layers"] = n_layers
                (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            for b, e in enumerate(chunk):
                if e.index in done:
                    continue
                for layer in range(res.n_layers):
                    w.writerow(
                        [
                            e.index,
                            records[e.index].id,
                            layer,
                            _fmt(res.s_wp[b, layer]),
                            _fmt(res.s_pq[b, layer]),
                            _fmt(res.s_ww[b, layer]),
                            int(res.n_wp[b]),
                            int(res.n_pq[b]),
                            int(res.n_ww[b]),
                        ]
                    )
            f.write(buf.getvalue())  # one write per chunk: a kill tears at most this chunk
            f.flush()
            advance(len(todo))
    if not (out_dir / META_FILE).exists():  # every sample was already there
        meta["n_layers"] = n_layers
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    _sort_samples(spath, n_layers, {e.index for e in chosen})
    return spath


def _sort_samples(path: Path, n_layers: int | None, expected: set[int]) -> None:
    """Check completeness and put the rows in sample order (a resumed file = an uninterrupted one)."""
    rows, torn = _read_samples(path)
    done = _complete(rows, n_layers)
    missing = expected - set(done)
    if torn or missing:
        raise AnalysisError(f"{path}: {len(missing)} samples incomplete after the pass (rerun to resume)")
    ordered = [r for s in sorted(done) for r in sorted(done[s], key=lambda r: int(r["layer"]))]
    if ordered != rows:
        _write_rows(path, ordered)


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
# summary and figures
# --------------------------------------------------------------------------------------------------


def read_sample_values(path: Path) -> tuple[list[int], dict[str, np.ndarray]]:
    """Sample indices (sorted) and metric -> [n_samples, n_layers] from flow_samples.csv."""
    rows, _ = _read_samples(path)
    samples = sorted({int(r["sample"]) for r in rows})
    pos = {s: i for i, s in enumerate(samples)}
    n_layers = 1 + max(int(r["layer"]) for r in rows)
    vals = {m: np.full((len(samples), n_layers), np.nan) for m in METRICS}
    for r in rows:
        i, layer = pos[int(r["sample"])], int(r["layer"])
        for m in METRICS:
            vals[m][i, layer] = float(r[m])
    return samples, vals


def summarize(samples_path: Path, n_boot: int, seed: int) -> dict[str, LayerStats]:
    _, vals = read_sample_values(samples_path)
    return {m: bootstrap_layer_means(v, n_boot=n_boot, seed=seed) for m, v in vals.items()}


def write_flow_csv(stats: dict[str, LayerStats], path: Path) -> Path:
    n_layers = len(next(iter(stats.values())).mean)
    cols = ["layer"]
    for m in METRICS:
        cols += [m, f"{m}_std", f"{m}_lo", f"{m}_hi", f"{m}_n"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for layer in range(n_layers):
            row: list[Any] = [layer]
            for m in METRICS:
                s = stats[m]
                row += [_fmt(s.mean[layer]), _fmt(s.std[layer]), _fmt(s.lo[layer]), _fmt(s.hi[layer])]
                row.append(int(s.n[layer]))
            w.writerow(row)
    return path


def read_flow_csv(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """metric -> (mean, lo, hi) per layer from an analysis flow.csv or a callback flow/epoch_<k>.csv."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for m in METRICS:
        if not rows or m not in rows[0]:
            continue
        vals = [
            [float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]
            for k in (m, f"{m}_lo", f"{m}_hi")
        ]
        mean = np.array(vals[0])
        if np.all(np.isnan(mean)):
            continue
        out[m] = (mean, np.array(vals[1]), np.array(vals[2]))
    return out


# --------------------------------------------------------------------------------------------------
# token-level example pictures
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


def token_flows(subject: Subject, chosen: list, opts: FlowOptions) -> list[dict[str, Any]]:
    """Per example: text tokens with their flow into the anchor, anchor tokens with their flow into q."""
    dm = subject.dm
    records = dm.records("test")
    engine = FlowEngine(
        subject.model,
        sources=opts.sources,
        loss=opts.loss,
        normalize="none",
        exclude_bos=opts.exclude_bos,
        keep_maps="layer",
    )
    collate = Collator(dm.tokenizer.pad_token_id)
    device = next(subject.model.parameters()).device
    label_ids = dm.builder.code_ids if opts.loss == "label_restricted" else None
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
        q = e.q
        labels = _token_labels(dm.tokenizer, e.prompt_ids)
        into_anchor = sal[a0:a1, t0:t1].sum(0).numpy()  # sum over p in P of I[p, j], j in T
        into_q = sal[q, a0:a1].numpy()  # I[q, p], p in P
        out.append(
            {
                "id": records[e.index].id,
                "sample": e.index,
                "text_tokens": labels[t0:t1],
                "text_flow": into_anchor,
                "anchor_tokens": labels[a0:a1],
                "anchor_flow": into_q,
                "target": _token_labels(dm.tokenizer, [e.target])[0],
                "which": which,
            }
        )
    return out


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60]


def plot_token_example(ex: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    from mre.analysis.report import use_cjk_font

    original, note = ex, ""
    if not use_cjk_font(ex["text_tokens"] + ex["anchor_tokens"]):  # boxes otherwise: number the tokens
        ex = {
            **ex,
            "text_tokens": [f"t{i}" for i in range(len(ex["text_tokens"]))],
            "anchor_tokens": [f"a{i}" for i in range(len(ex["anchor_tokens"]))],
        }
        note = "\n(no CJK font installed: the token texts are in the .csv beside this figure)"
    n_t, n_a = len(ex["text_tokens"]), len(ex["anchor_tokens"])
    width = min(40.0, max(6.0, 0.28 * max(n_t, n_a) + 2))
    fig, axes = plt.subplots(2, 1, figsize=(width, 5.2), gridspec_kw={"height_ratios": [1, 1]})
    for ax, toks, vals, color, what in (
        (axes[0], ex["text_tokens"], ex["text_flow"], "tab:blue", "text token j → anchor: Σ_p I[p, j]"),
        (axes[1], ex["anchor_tokens"], ex["anchor_flow"], "tab:orange", "anchor token p → q: I[q, p]"),
    ):
        x = np.arange(len(toks))
        ax.bar(x, vals, color=color)
        ax.set_xticks(x, [t if len(t) <= 14 else t[:13] + "…" for t in toks], rotation=90, fontsize=7)
        ax.set_xlim(-0.6, max(len(toks), 1) - 0.4)
        ax.set_ylabel("flow")
        ax.set_title(what, fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title}\nsample {ex['id']} (target {ex['target']!r}), I {ex['which']}{note}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    ex = original
    with open(path.with_suffix(".csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["part", "position", "token", "flow"])
        for part, toks, vals in (
            ("text->anchor", ex["text_tokens"], ex["text_flow"]),
            ("anchor->q", ex["anchor_tokens"], ex["anchor_flow"]),
        ):
            for i, (t, v) in enumerate(zip(toks, vals, strict=True)):
                w.writerow([part, i, t, _fmt(v)])
    return path


# --------------------------------------------------------------------------------------------------
# the whole analysis of one subject
# --------------------------------------------------------------------------------------------------


def analyze_subject(
    subject: Subject, out_dir: str | Path, opts: FlowOptions, seed: int = 42
) -> dict[str, Any]:
    """flow_samples.csv -> flow.csv, flow.png, examples/; returns paths and per-layer means."""
    out_dir = Path(out_dir)
    spath = compute_flow_samples(subject, out_dir, opts, seed)
    stats = summarize(spath, opts.n_boot, seed)
    fpath = write_flow_csv(stats, out_dir / FLOW_FILE)
    n = int(max(s.n.max() for s in stats.values()))
    layers = np.arange(len(stats["S_ww"].mean))
    curves = {m: (s.mean, s.lo, s.hi) for m, s in stats.items() if not np.all(np.isnan(s.mean))}
    png = plot_flow(layers, curves, out_dir / "flow.png", f"information flow, {subject.name} (n={n})")
    examples: list[Path] = []
    if subject.cfg.with_anchor and (opts.n_examples > 0 or opts.example_ids):
        examples = _examples(subject, out_dir, opts, seed)
    elif not subject.cfg.with_anchor:
        log.info("no anchor in this setting: no token-level example pictures")
    _print_summary(stats, subject.name, out_dir)
    return {
        "flow_samples": spath,
        "flow_csv": fpath,
        "flow_png": png,
        "examples": examples,
        "means": {m: s.mean for m, s in stats.items()},
        "stats": stats,
        "n": n,
    }


def _examples(subject: Subject, out_dir: Path, opts: FlowOptions, seed: int) -> list[Path]:
    dm = subject.dm
    items = dm.encoded["test"]
    records = dm.records("test")
    if opts.example_ids:
        by_id = {records[e.index].id: e for e in items}
        unknown = [i for i in opts.example_ids if i not in by_id]
        if unknown:
            raise AnalysisError(f"flow.example_ids: {unknown} are not test ids of {dm.ds.name}")
        chosen = [by_id[i] for i in opts.example_ids]
    else:
        chosen = [items[i] for i in select_samples(len(items), opts.n_samples, seed)[: opts.n_examples]]
    paths = []
    for k, ex in enumerate(token_flows(subject, chosen, opts)):
        path = out_dir / "examples" / f"{k}_{_safe(ex['id'])}.png"
        paths.append(plot_token_example(ex, path, subject.name))
    return paths


def _print_summary(stats: dict[str, LayerStats], title: str, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"information flow: {title}")
    t.add_column("layer", justify="right")
    for m in METRICS:
        t.add_column(f"{m} [95% CI]", justify="right")
    for layer in range(len(stats["S_ww"].mean)):
        cells = []
        for m in METRICS:
            s = stats[m]
            cells.append(
                "n/a"
                if np.isnan(s.mean[layer])
                else f"{s.mean[layer]:.3g} [{s.lo[layer]:.3g}, {s.hi[layer]:.3g}]"
            )
        t.add_row(str(layer), *cells)
    console = Console()
    console.print(t)
    console.print(f"analysis directory: {out_dir}", markup=False, soft_wrap=True)


__all__ = [
    "AnalysisError",
    "FlowOptions",
    "Subject",
    "analyze_subject",
    "load_base",
    "load_run",
    "load_run_config",
    "read_flow_csv",
    "select_samples",
]
