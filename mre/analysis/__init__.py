"""analyze.py: the flow analysis of one model and the paper's tables and figures of a sweep.

Three modes (conf/analyze.yaml):

* ``python analyze.py run_dir=<a train.py run>``: the fine-tuned model's flow over N test samples
  -> ``<run_dir>/analysis/`` (``mre.analysis.flow_run``);
* ``python analyze.py model=tiny_llama dataset=... direction=... with_anchor=...``: the same for an
  untrained base model -> the Hydra run directory (``outputs/analysis/...``);
* ``python analyze.py sweep_dir=<a multirun directory>``: Tables 2-4 with paired bootstrap
  intervals, flow grids and ``report.md`` -> ``<sweep_dir>/analysis/`` (``mre.analysis.report``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mre.analysis.flow_run import AnalysisError, FlowOptions, resolve_run_dir
from mre.analysis.sweep import SweepOptions
from mre.config import (
    DataConfig,
    DatasetConfig,
    DirectionConfig,
    ModelConfig,
    PathsConfig,
    PromptConfig,
)

log = logging.getLogger(__name__)

__all__ = ["AnalysisError", "AnalyzeConfig", "FlowOptions", "SweepOptions", "analysis_dir", "analyze"]


@dataclass
class AnalyzeConfig:
    """Schema of conf/analyze.yaml (a misspelt option fails at start-up with the valid keys)."""

    run_dir: str | None = None
    sweep_dir: str | None = None
    output_dir: str | None = (
        None  # null: <run_dir>/analysis, <sweep_dir>/analysis, or a new outputs/analysis/...
    )
    # model-config mode (neither run_dir nor sweep_dir): the setting and the base model to analyse
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    with_anchor: bool = True
    seed: int = 42  # sample selection and bootstrap seeds (and the base model's init in model mode)
    flow: FlowOptions = field(default_factory=FlowOptions)
    sweep: SweepOptions = field(default_factory=SweepOptions)


def analysis_dir(output_dir: str | None, run_dir: str | None, sweep_dir: str | None, default: str) -> str:
    """Where to write: output_dir, else <run_dir>/analysis or <sweep_dir>/analysis, else the default."""
    if run_dir and sweep_dir:
        raise AnalysisError("give run_dir=... or sweep_dir=..., not both")
    if output_dir:
        return str(output_dir)
    if run_dir:
        return str(resolve_run_dir(run_dir) / "analysis")
    if sweep_dir:
        return str(Path(sweep_dir) / "analysis")
    return default


def register() -> None:
    """The `analyze_base` schema and the `mre_analysis_dir` resolver used by conf/analyze.yaml."""
    ConfigStore.instance().store(name="analyze_base", node=AnalyzeConfig)
    if not OmegaConf.has_resolver("mre_analysis_dir"):
        OmegaConf.register_new_resolver("mre_analysis_dir", analysis_dir)


def _options(node: Any, cls: type) -> Any:
    d = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def analyze(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the mode the config asks for; ``out_dir`` defaults to the mode's analysis directory."""
    from mre.analysis.flow_run import analyze_subject, load_base, load_run

    flow_opts = _options(cfg.flow, FlowOptions)
    if cfg.run_dir and cfg.sweep_dir:
        raise AnalysisError("give run_dir=... or sweep_dir=..., not both")
    if out_dir is None and cfg.get("output_dir"):
        out_dir = cfg.output_dir
    if cfg.sweep_dir:
        from mre.analysis.report import analyze_sweep

        return analyze_sweep(
            cfg.sweep_dir,
            out_dir,
            _options(cfg.sweep, SweepOptions),
            flow_opts,
            seed=cfg.seed,
            cache_dir=cfg.paths.cache_dir,
        )
    if cfg.run_dir:
        run_dir = resolve_run_dir(cfg.run_dir)
        subject = load_run(run_dir, cache_dir=cfg.paths.cache_dir, device=flow_opts.device)
        out = Path(out_dir) if out_dir is not None else run_dir / "analysis"
    else:
        subject = load_base(cfg, device=flow_opts.device)
        out = Path(out_dir) if out_dir is not None else Path(cfg.paths.output_dir)
    return analyze_subject(subject, out, flow_opts, seed=cfg.seed)
