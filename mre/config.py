"""Structured config schema: Hydra validates every option name and type against these dataclasses
at start-up, so a typo (`dataset.n_trian`) or a wrong type fails before any work with the valid
keys or choices listed. Groups whose content is library kwargs (trainer, logger, callbacks) stay
free-form dicts instantiated with `_target_`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore


class _StrEnum(str, Enum):
    """An enum that prints as its value, so `${direction.name}` interpolates to `wli`."""

    def __str__(self) -> str:
        return str(self.value)


class Source(_StrEnum):
    synthetic = "synthetic"
    records = "records"
    bio = "bio"
    ner_json = "ner_json"
    mmm = "mmm"
    giellm = "giellm"
    csv_pairs = "csv_pairs"


class Language(_StrEnum):
    en = "en"
    ja = "ja"


class Direction(_StrEnum):
    wli = "wli"
    tli = "tli"


class OnBadRow(_StrEnum):
    error = "error"
    skip = "skip"


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic MRE generator (see mre/data/synthetic.py)."""

    n: int = 3000
    n_classes: int = 4
    wli_helps_tli: float = 0.8
    tli_helps_wli: float = 0.8
    seed: int = 0


@dataclass
class DatasetConfig:
    name: str = "synthetic_en"
    source: Source = Source.synthetic
    path: str | None = None
    expected: str = ""  # what file `path` must point at, quoted in the error when it is missing
    language: Language = Language.en
    n_train: int = 1000
    n_test: int = 1000
    n_dev: int = 200
    split_seed: int = 42
    on_bad_row: OnBadRow = OnBadRow.error
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class DirectionConfig:
    name: Direction = Direction.wli
    instruction: dict[str, str] = field(default_factory=dict)  # per language


@dataclass
class FieldsConfig:
    text: str = "Text:"
    tli: str = "Label:"
    wli: str = "Entities:"
    answer: str = "Answer:"


@dataclass
class PromptConfig:
    fields: dict[str, FieldsConfig] = field(default_factory=dict)  # per language
    code_scheme: str = "letters"
    pair_sep: str = ";"
    kv_sep: str = ":"
    empty: str = "none"
    max_length: int = 256


@dataclass
class TokenizerConfig:
    kind: str = "llama"  # tiny tokenizers: bpe | llama; ignored for pretrained models
    vocab_size: int = 2000


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    name: str = "tiny_llama"
    kind: str = "tiny"  # tiny | pretrained
    arch: str = "llama"  # a transformers model_type for tiny models (llama, qwen2, gpt2, mistral, t5)
    tiny: dict[str, Any] = field(default_factory=dict)  # config kwargs of the tiny architecture
    pretrained_path: str | None = None
    dtype: str = "float32"
    quantization: str | None = None  # null | 4bit | 8bit
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class DataConfig:
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    group_by_length: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 100
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class EvalConfig:
    max_new_tokens: int = 64  # WLI generation budget (answers are cut here, then parsed)


@dataclass
class VerbalizerConfig:
    """Few-shot verbalizer (mre/fewshot): which words stand for each class and how their scores
    become class scores. Written to `<run dir>/verbalizer.txt` (one line per class,
    `label: word, word, ...`), which `path` reads back after a user edited it.

    - kind: `manual` (the label names, or `words` per class) | `knowledgeable` (KPT-style: the top-K
      most frequent WLI words of each class).
    - source (knowledgeable): `train` = WLI of the whole training split (knowledge from outside the
      labelled few-shot sample; only the WLI spans and their class are used) | `fewshot` = only
      the sampled records.
    - unit (knowledgeable): `word` = spans split into lowercased words | `span` = whole lowercased spans.
    - multi_token: how the first-step scores of a word's sub-word pieces become one score.
    - aggregate: `mean_logprob` = one softmax over all label words, then the mean log-probability of
      a class's words (OpenPrompt's KPT behaviour) | `sum_prob` = the sum of the class's word
      probabilities (the paper's text).
    - calibrate: contextual calibration; every word probability is divided by its mean probability
      over `n_calibration` unlabeled training texts, then renormalized over all label words.
    - learn_weights: learnable per-word weights (softmax over a class's words; KPT's few-shot variant).
    """

    kind: str = "knowledgeable"  # manual | knowledgeable
    path: str | None = None  # read the verbalizer from this file instead of building it
    words: dict[str, list[str]] = field(default_factory=dict)  # manual: label -> words; {}: label names
    label_form: str = "words"  # a label as a word: words (PlayMusic -> "play music") | raw (as is)
    source: str = "train"  # knowledgeable: train | fewshot
    unit: str = "word"  # knowledgeable: word | span
    top_k: int = 100  # knowledgeable: words kept per class (most frequent first)
    min_count: int = 1  # knowledgeable: a word must occur this often in the class's WLI
    drop_shared: bool = False  # knowledgeable: drop words that pass min_count in two or more classes
    max_pieces: int | None = None  # drop words with more sub-word pieces than this (null: no limit)
    strip_space_piece: bool = True  # drop a leading bare word-boundary piece ("▁") from a word's pieces
    multi_token: str = "mean"  # first | mean | max over a word's pieces
    aggregate: str = "mean_logprob"  # mean_logprob | sum_prob
    calibrate: bool = False
    n_calibration: int = 200  # unlabeled training texts for calibration
    learn_weights: bool = False


@dataclass
class FewShotConfig:
    """Few-shot protocol of the T5 prompt classifier (mre/fewshot): N samples in total (the paper:
    100) or K per class, seeded; the prompt template per language, with `{text}` and `{mask}` (the
    mask is T5's first sentinel `<extra_id_0>`); label-word scores are read from the decoder logits
    at the first decoding step (`sentinel_first=true`: after feeding `<extra_id_0>`, the span-filling
    position a pretrained T5 expects)."""

    n_total: int | None = 100  # N samples in total (the paper: 100) ...
    k_per_class: int | None = None  # ... or K per class when set (takes precedence)
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
    root_dir: str = "."
    output_dir: str = "."
    cache_dir: str = ".cache"


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
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    with_anchor: bool = True
    seed: int = 42
    task: str = "generative"  # generative | fewshot
    ckpt_path: str | None = None
    fit: bool = True  # false: only test the model of ckpt_path (e.g. a checkpoint under another strategy)


def register_configs() -> None:
    """Register the schema as `base_config` (config.yaml lists it first in its defaults)."""
    ConfigStore.instance().store(name="base_config", node=Config)
