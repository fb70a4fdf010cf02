"""analyze.py: the flow analysis of one model and the paper's tables and figures of a sweep.

Four modes (conf/analyze.yaml, schema `mre.config.AnalyzeConfig`):

* `python analyze.py run_dir=<a train.py run>`: the fine-tuned model's flow over N test samples
  -> `<run_dir>/analysis/` (`mre.analysis.flow_run`);
* `python analyze.py model=tiny_llama dataset=... direction=... with_anchor=...`: the same for an
  untrained base model -> the Hydra run directory (`outputs/analysis/...`);
* `python analyze.py run_dir=<run> knockout.layers=first:5` (or a model config): the attention
  knockout of text -> anchor and anchor -> q edges against two controls (random edges; receiver-matched
  edges: the same rows, other sources) -> `<run_dir>/analysis/`
  (`mre.analysis.knockout_run`);
* `python analyze.py sweep_dir=<a multirun directory>`: Tables 2-4 with seed-aware
  intervals and adjusted p-values, flow grids and
  `report.md` -> `<sweep_dir>/analysis/` (`mre.analysis.sweep_run`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mre.analysis.flow_run import FlowAnalysis, Subject, analyze_subject, load_base, load_run
from mre.analysis.knockout_run import KnockoutEffects, analyze_knockout
from mre.analysis.stream import AnalysisError
from mre.analysis.sweep_result import SweepResult
from mre.analysis.sweep_run import analyze_sweep
from mre.flow.options import FlowAnalysisConfig, KnockoutConfig
from mre.rundir import ANALYSIS, resolve_run_dir
from mre.runlock import current_holder, run_dir_lock


def analyze(
    cfg: DictConfig, out_dir: str | Path | None = None
) -> FlowAnalysis | KnockoutEffects | SweepResult:
    """Run the mode the config asks for; `out_dir` defaults to the mode's analysis directory. Each mode
    gives its typed result (`FlowAnalysis`, `KnockoutEffects`, `SweepResult`), as written to disk."""
    if cfg.run_dir and cfg.sweep_dir:
        raise AnalysisError("give run_dir=... or sweep_dir=..., not both")
    flow_opts = OmegaConf.to_object(cfg.flow)
    if out_dir is None and cfg.get("output_dir"):
        out_dir = cfg.output_dir
    if cfg.sweep_dir:
        sweep_opts = OmegaConf.to_object(cfg.sweep)
        return analyze_sweep(
            cfg.sweep_dir, out_dir, sweep_opts, flow_opts, seed=cfg.seed, cache_dir=cfg.paths.cache_dir
        )
    knock = OmegaConf.to_object(cfg.knockout) if cfg.knockout.layers is not None else None
    device = knock.device if knock else flow_opts.device
    if cfg.run_dir:
        run_dir = resolve_run_dir(cfg.run_dir)
        refuse_run_in_use(run_dir)
        out = Path(out_dir) if out_dir is not None else run_dir / ANALYSIS
        writes_into_run = out.resolve().is_relative_to(run_dir.resolve())
        with run_dir_lock(run_dir) if writes_into_run else nullcontext():
            subject = load_run(run_dir, cache_dir=cfg.paths.cache_dir, device=device)
            return _measure(subject, out, flow_opts, knock, cfg.seed)
    subject = load_base(cfg, device=device)
    out = Path(out_dir) if out_dir is not None else Path(cfg.paths.output_dir)
    return _measure(subject, out, flow_opts, knock, cfg.seed)


def refuse_run_in_use(run_dir: Path) -> None:
    """A run still being written (its lock held) is not analysed: its model is not there yet, or
    is about to change."""
    holder = current_holder(run_dir)
    if holder is not None:
        raise AnalysisError(
            f"{run_dir} is still being written by {holder.describe()}",
            hint="analyse it once that process has ended (metrics.json appears when a run finishes)",
        )


def _measure(
    subject: Subject, out: Path, flow_opts: FlowAnalysisConfig, knock: KnockoutConfig | None, seed: int
) -> FlowAnalysis | KnockoutEffects:
    if knock is not None:
        return analyze_knockout(subject, out, knock, seed=seed)
    return analyze_subject(subject, out, flow_opts, seed=seed)
