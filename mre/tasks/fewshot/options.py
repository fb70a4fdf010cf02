"""The few-shot task's options, owned here and nowhere else: the `verbalizer:` and `fewshot:` groups
(`mre.config` only assembles them). Each choice is one enum; the verbalizer code receives its members."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mre.setting import StrEnum


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
