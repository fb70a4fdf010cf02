"""The data options, owned here and nowhere else: the `dataset:`, `direction:`, `prompt:` and `data:`
groups of train.py and analyze.py (`mre.config` only assembles them).

`mre.data` receives these objects (`build_context`, `load_splits`, `MREDataModule`); a new data option
is one field here and reaches both entry points' schemas, their validation and their `--help` at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mre.data.readers import FORMATS, SLURP_TLI_FIELDS
from mre.data.record import OnBadRow
from mre.setting import Direction, StrEnum

# the embedded generator, then every reader format of mre/data/readers.py (a new reader is a new choice)
Source = StrEnum("Source", {name: name for name in ("synthetic", *FORMATS)})


# which SLURP field is the text label: the scenario (18), the intent (`scenario_action`, 71-77) or the action
TLIField = StrEnum("TLIField", {name: name for name in SLURP_TLI_FIELDS})


class Language(StrEnum):
    en = "en"
    ja = "ja"


class MMMLanguage(StrEnum):
    """The languages of the MMM collection (`dataset=mmm`)."""

    ja = "ja"
    en = "en"
    zh = "zh"


class MMMTask(StrEnum):
    """The MRE mix sets of the MMM collection, in the paper's order (their files carry the index 0-5),
    and `oie`: the collection's open-domain set (text label + NER pairs)."""

    scnm = "scnm"
    scpos_rw = "scpos_rw"
    scpos_adj_n = "scpos_adj_n"
    scpos_n = "scpos_n"
    scpos_adj = "scpos_adj"
    tcree = "tcree"
    oie = "oie"


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
    # dataset=mmm: the set of the MMM collection on the Hugging Face hub, fetched when `path` is not given
    lang: MMMLanguage | None = None
    task: MMMTask | None = None
    tli_field: TLIField = TLIField.scenario  # type: ignore[valid-type]  # source slurp: the text label's field
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


def default_fields() -> dict[str, FieldsConfig]:
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

    fields: dict[str, FieldsConfig] = field(default_factory=default_fields)
    code_scheme: CodeScheme = CodeScheme.auto
    chat_template: ChatTemplate = ChatTemplate.auto
    pair_sep: str = ";"
    kv_sep: str = ":"
    empty: str = "none"
    max_length: int = 256


@dataclass
class DataConfig:
    batch_size: int = 16
    eval_batch_size: int = 32
    num_workers: int = 0
    group_by_length: bool = False  # sort batches by length inside seeded mega-batches: less padding
