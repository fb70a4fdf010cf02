"""The configuration schema, assembled from the options each layer owns: every default lives once, in
the layer that reads it (`mre.data.options`, `mre.model_options`, `mre.flow.options`,
`mre.tasks.fewshot.options`, the task registry in `mre.tasks`); this module adds the top-level run and
analysis options, the Hydra resolvers and composition.

Hydra validates every option name and type against these dataclasses at start-up, so a typo
(`dataset.n_trian`), a wrong type or an unknown choice (`model.kind=tinyy`) fails before any work,
listing the valid keys or values. The YAML files in conf/ only *select* (a group file holds what
makes that choice different from these defaults: a data set's source and path, a model's
architecture). Groups whose content is library keyword arguments (trainer, logger, callbacks) stay
free-form dicts instantiated with `_target_`.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mre.data.hub_data import prompt_language
from mre.data.options import DataConfig, DatasetConfig, DirectionConfig, PromptConfig
from mre.errors import UserError
from mre.flow.options import FlowAnalysisConfig, FlowTrainConfig, KnockoutConfig
from mre.jobdirs import job_dir
from mre.model_options import ModelConfig
from mre.rundir import ANALYSIS, CONFIG, RunDirError, resolve_run_dir
from mre.setting import AnchorKind, StrEnum
from mre.tasks import TaskName
from mre.tasks.fewshot.options import FewShotConfig, VerbalizerConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# --------------------------------------------------------------------------------------------------
# choices
# --------------------------------------------------------------------------------------------------


class OnMismatch(StrEnum):
    error = "error"
    skip = "skip"


# --------------------------------------------------------------------------------------------------
# train.py
# --------------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and decay; these defaults are the paper's (LLaMA-2-7B-chat)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 100
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class EvalConfig:
    max_new_tokens: int = 64  # WLI generation budget (answers are cut here, then parsed)


@dataclass
class PathsConfig:
    """`root_dir` anchors the default data paths, `outputs/`, `multirun/` and `.cache/` (MRE_ROOT, else
    the repository that holds conf/, else the working directory at start), so a run started from any
    directory reads and writes the same places; `output_dir` is the run directory Hydra made;
    `cache_dir` holds trained tiny tokenizers, tiny models and converted weights."""

    root_dir: str = "${mre_root:}"
    output_dir: str = "${hydra:runtime.output_dir}"
    cache_dir: str = "${oc.env:MRE_CACHE,${paths.root_dir}/.cache}"


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    verbalizer: VerbalizerConfig = field(default_factory=VerbalizerConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    flow: FlowTrainConfig = field(default_factory=FlowTrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    with_anchor: bool = True
    anchor_kind: AnchorKind = AnchorKind.gold  # gold | shuffled | random (controls; mre.data.anchors)
    seed: int = 42
    task: TaskName = TaskName.generative  # type: ignore[valid-type]
    ckpt_path: str | None = None  # a checkpoint to start from, or `last` (the run directory's newest)
    resume: str | None = None  # a run directory: continue that run in place, with its own configuration
    fit: bool = True  # false: only test the model of ckpt_path (e.g. a checkpoint under another strategy)
    # a directory that already holds this configuration's run: skip it if finished, else continue it
    # from its newest checkpoint (false: refuse it); a study launched again continues (mre.prior_run)
    continue_existing: bool = False


# --------------------------------------------------------------------------------------------------
# analyze.py
# --------------------------------------------------------------------------------------------------

DEFAULT_IGNORE = [
    "paths",
    "hydra",
    "logger",
    "callbacks",
    "flow",
    "ckpt_path",
    "fit",
    "trainer.default_root_dir",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.eval_batch_size",
]


@dataclass
class SweepOptions:
    """`sweep:` of analyze.py: how a multirun's runs are compared."""

    n_boot: int = 1000  # hierarchical bootstrap resamples (seeds, then test samples) of each F1 difference
    n_perm: int = 2000  # permutations of the paired test over seeds x samples
    on_mismatch: OnMismatch = OnMismatch.error  # skip: a pair on different test ids is marked refused
    compute_flow: bool = False  # run the flow analysis (flow: options) on with-anchor runs lacking one
    # a run whose most frequent test answer goes to at least this share of the texts collapsed
    collapse_share: float = 0.95  # = mre.stats.COLLAPSE_SHARE (not imported: it would import torch)
    # config keys that do not make two runs different settings (prefixes match sub-keys)
    ignore_keys: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))


@dataclass
class AnalyzeConfig:
    """Schema of conf/analyze.yaml."""

    run_dir: str | None = None  # a train.py run (a sweep's job also by number: <sweep dir>/3)
    sweep_dir: str | None = None
    output_dir: str | None = None  # null: <run_dir>/analysis, <sweep_dir>/analysis, or a new directory
    # model-config mode (neither run_dir nor sweep_dir): the setting and the base model to analyse
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    with_anchor: bool = True
    anchor_kind: AnchorKind = AnchorKind.gold
    seed: int = 42  # sample selection and bootstrap seeds (and the base model's init in model mode)
    flow: FlowAnalysisConfig = field(default_factory=FlowAnalysisConfig)
    sweep: SweepOptions = field(default_factory=SweepOptions)
    knockout: KnockoutConfig = field(default_factory=KnockoutConfig)


# --------------------------------------------------------------------------------------------------
# registration and composition
# --------------------------------------------------------------------------------------------------


class RunConfigError(UserError, ValueError):
    """A run directory's saved config cannot be used with this version."""


def analysis_dir(output_dir: str | None, run_dir: str | None, sweep_dir: str | None, default: str) -> str:
    """Where analyze.py writes: output_dir, else <run_dir>/analysis or <sweep_dir>/analysis, else default.

    A sweep job given by number (`<sweep dir>/3`) is resolved later, by `mre.rundir.resolve_run_dir`;
    this resolver only has to name a directory, and Hydra must not create `<sweep dir>/3` itself.
    """
    if output_dir:
        return str(output_dir)
    if run_dir and sweep_dir:
        return default  # analyze() refuses the pair with a clear message
    if run_dir:
        return str(resolve_run_dir(run_dir) / ANALYSIS)
    if sweep_dir:
        return str(Path(sweep_dir) / "analysis")
    return default


def project_root() -> str:
    """MRE_ROOT, else the repository holding conf/ (where train.py lives), else the working directory;
    always absolute."""
    if os.environ.get("MRE_ROOT"):
        return str(Path(os.environ["MRE_ROOT"]).expanduser().resolve())
    return str(CONF_DIR.parent if CONF_DIR.is_dir() else Path.cwd().resolve())


def run_id() -> str:
    """A short id of this process's run: two runs started in the same second get different directories."""
    return _RUN_ID


_RUN_ID = uuid.uuid4().hex[:6]


def run_dir(resume: str | None, new: str) -> str:
    """Hydra's run directory: the resumed run's own, else a new one."""
    return str(resolve_run_dir(resume).resolve()) if resume else new


@functools.cache
def output_subdir(resume: str | None, stamp: str, output_dir: str) -> str:
    """Where Hydra writes its copy of the config: `.hydra`, or beside the saved one when the directory
    already holds a run's config (a resume, or a job launched again into the same sweep directory: the
    saved `.hydra/config.yaml` is what a resume reads and what `continue_existing` compares).
    Cached: the answer is taken before Hydra writes `.hydra/config.yaml` and must not change after."""
    if resume:
        return f".hydra/resumed-{stamp}"
    return f".hydra/rerun-{stamp}" if (Path(output_dir) / CONFIG).exists() else ".hydra"


def env_file(variable: str, name: str) -> str | None:
    """`name` in the folder an environment variable names (e.g. MRE_PAPER_DATA), None when it is not set:
    the paper's data set configs read a local copy where one is given, else the MMM collection's."""
    folder = os.environ.get(variable)
    return str(Path(folder) / name) if folder else None


def register_configs() -> None:
    """The schemas (`base_config`, `analyze_base`) and the resolvers the YAML files use."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="analyze_base", node=AnalyzeConfig)
    resolvers = {
        "mre_job_dir": job_dir,
        "mre_analysis_dir": analysis_dir,
        "mre_root": project_root,
        "mre_run_id": run_id,
        "mre_run_dir": run_dir,
        "mre_output_subdir": output_subdir,
        "mre_env_file": env_file,
        "mre_prompt_language": prompt_language,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose conf/ with command-line style overrides, outside a Hydra run (no run directory)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The composed config of a train.py run (`.hydra/config.yaml`), checked against the schema,
    with `paths.output_dir` set to the run directory (it is `${hydra:...}` in the file)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.exists():
        raise RunDirError(
            f"{run_dir} is not a train.py run directory: {path} does not exist "
            "(give run_dir=<the directory a train.py run wrote>, or sweep_dir=<a multirun directory>)"
        )
    raw = OmegaConf.load(path)
    raw.paths.output_dir = str(run_dir)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), raw)
    except OmegaConfBaseException as e:
        raise RunConfigError(
            f"{path} does not match this version's config schema ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); it was written by another version of mre-flow"
        ) from e
    OmegaConf.set_struct(cfg, True)
    return cfg
