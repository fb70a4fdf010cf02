"""The task context: everything a generative run knows about its data, built once from the config.

`build_context(cfg)` loads the splits, makes the tokenizer (a real one from the model's folder, or a
tiny one trained on the run's own texts), the prompt builder of the run's `Setting` and the encoded
samples. The DataModule, the LightningModule, the flow callback and the analysis all receive this
one object; none of them reads another's attributes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from mre.data.anchors import control_anchors
from mre.data.dataset import load_splits
from mre.data.options import ChatTemplate, DatasetConfig, DirectionConfig, PromptConfig
from mre.data.prompts import Encoded, Fields, PromptBuilder, PromptError, has_chat_template
from mre.data.record import DataFormatError, OnBadRow, Record
from mre.data.splits import Splits
from mre.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from mre.data.wli_format import WLIFormat
from mre.hub import model_folder
from mre.model_options import ModelConfig, ModelKind
from mre.setting import AnchorKind, Setting

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
STAGE_SPLIT = {"train": "train", "val": "dev", "test": "test"}  # Lightning stage -> split


class RunOptions(Protocol):
    """What the data layer reads of a run's options: `mre.config.Config` or `AnalyzeConfig` (their
    dataclasses, or the structured DictConfig Hydra composed, which holds the same typed values)."""

    dataset: DatasetConfig
    direction: DirectionConfig
    prompt: PromptConfig
    model: ModelConfig
    paths: Any  # `paths.cache_dir`: trained tiny tokenizers and converted weights
    with_anchor: bool
    anchor_kind: AnchorKind


@dataclass(frozen=True)
class TaskContext:
    """The setting, splits, tokenizer, prompt builder and encoded samples of one run."""

    setting: Setting
    language: str
    dataset_name: str
    splits: Splits
    tokenizer: PreTrainedTokenizerBase
    builder: PromptBuilder
    encoded: dict[str, list[Encoded]]

    @property
    def labels(self) -> list[str]:
        """The text labels of the training split, sorted (code i stands for labels[i])."""
        return self.builder.labels

    @cached_property
    def wli_types(self) -> list[str]:
        """The WLI types of the training split, sorted (per-type F1 is reported for these)."""
        return sorted({p.type for r in self.splits.train for p in r.wli})

    def records(self, split: str) -> list[Record]:
        """Records of a split (`train`, `dev`, `test`) or a Lightning stage (`val`)."""
        return getattr(self.splits, STAGE_SPLIT.get(split, split))

    def items(self, split: str) -> list[Encoded]:
        """Encoded samples of a split; `Encoded.index` points into `records(split)`."""
        return self.encoded[STAGE_SPLIT.get(split, split)]

    @cached_property
    def _by_index(self) -> dict[str, dict[int, Encoded]]:
        return {name: {e.index: e for e in items} for name, items in self.encoded.items()}

    def item(self, split: str, index: int) -> Encoded:
        """The encoded sample of `records(split)[index]`: evaluation reads its gold answer and prompt
        here, as encoded (a shortened text keeps only the WLI pairs inside it), not from the record."""
        return self._by_index[STAGE_SPLIT.get(split, split)][index]


def wli_format_of(cfg: RunOptions) -> WLIFormat:
    """The WLI serialization of `prompt.pair_sep`, `kv_sep` and `empty`."""
    p = cfg.prompt
    return WLIFormat(p.pair_sep, p.kv_sep, p.empty)


def tokenizer_corpus(records: list[Record], cfg: RunOptions, lang: str) -> list[str]:
    """Training texts for a tiny tokenizer: every field a prompt of either direction can hold."""
    f = cfg.prompt.fields[lang]
    fmt = wli_format_of(cfg)
    lines = [str(v) for v in cfg.direction.instruction.values()] + [f.text, f.tli, f.wli, f.answer]
    for i, r in enumerate(records):
        code = chr(ord("A") + i % 26)
        lines.append(
            f"{f.text} {r.text}\n{f.tli} {r.tli or ''}\n{f.wli} {fmt.serialize(r.wli)}\n{f.answer} {code}"
        )
    return lines


def make_tokenizer(
    cfg: RunOptions, splits: Splits, language: str, path: str | Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer at `path` (e.g. a run's saved model), the pretrained model's, or a tiny one
    trained on the training split (the dev/test characters join its alphabet, never its merges)."""
    if path is None and cfg.model.kind is ModelKind.pretrained:
        path = model_folder(cfg.model, cfg.paths.cache_dir)
    if path is not None:
        return load_tokenizer(path)
    held_out_chars = "".join(r.text + "".join(p.span for p in r.wli) for r in splits.dev + splits.test)
    return train_tiny_tokenizer(
        tokenizer_corpus(splits.train, cfg, language),
        kind=cfg.model.tokenizer.kind,
        vocab_size=cfg.model.tokenizer.vocab_size,
        cache_dir=cfg.paths.cache_dir,
        extra_alphabet=held_out_chars,
    )


def use_chat_template(choice: ChatTemplate, tokenizer: PreTrainedTokenizerBase) -> bool:
    """`prompt.chat_template`: on, off, or auto (on when the tokenizer has a template)."""
    if choice is ChatTemplate.on and not has_chat_template(tokenizer):
        raise PromptError(
            f"prompt.chat_template=on, but tokenizer {type(tokenizer).__name__} has no chat template; use "
            "prompt.chat_template=auto (or off) for plain prompts"
        )
    return choice is ChatTemplate.on or (choice is ChatTemplate.auto and has_chat_template(tokenizer))


def make_builder(
    cfg: RunOptions, setting: Setting, tokenizer: PreTrainedTokenizerBase, labels: list[str], language: str
) -> PromptBuilder:
    """The prompt builder of a setting, with the config's fields, instruction and serialization."""
    p = cfg.prompt
    f = p.fields[language]
    return PromptBuilder(
        tokenizer=tokenizer,
        setting=setting,
        instruction=cfg.direction.instruction[language],
        fields=Fields(f.text, f.tli, f.wli, f.answer),
        labels=labels,
        wli_format=wli_format_of(cfg),
        code_scheme=p.code_scheme,
        max_length=p.max_length,
        chat=use_chat_template(p.chat_template, tokenizer),
    )


def require_text_labels(splits: Splits, setting: Setting, on_bad_row: OnBadRow) -> Splits:
    """Records without a text label in a setting that needs one (TLI output or a TLI anchor) are bad
    rows: an error naming where the first was read, or skipped and counted (`on_bad_row=skip`)."""
    if not (setting.is_tli or setting.with_anchor):
        return splits
    records = [r for name in SPLITS for r in getattr(splits, name)]
    missing = [r for r in records if r.tli is None]
    if not missing or len(missing) == len(records):  # all: the builder says what the data set offers
        return splits
    need = f"{setting.describe()} needs one"
    if on_bad_row is not OnBadRow.skip:
        raise DataFormatError(
            f"{missing[0].where()}: no text label, but {need} ({len(missing)} such rows; "
            "set dataset.on_bad_row=skip to skip them)"
        )
    log.warning("skipped %d rows without a text label (%s), e.g. %s", len(missing), need, missing[0].where())
    keep = {name: [r for r in getattr(splits, name) if r.tli is not None] for name in SPLITS}
    return Splits(**keep)


def _controls(setting: Setting, builder: PromptBuilder, splits: dict[str, list[Record]]) -> dict[str, str]:
    """Record id -> control anchor over the given splits (empty unless a control anchor is on)."""
    if not setting.with_anchor:
        return {}
    return {
        rid: anchor
        for name, records in splits.items()
        for rid, anchor in control_anchors(
            setting.anchor, records, builder.gold_anchor, builder.tokenizer, name
        ).items()
    }


def _comparable_drops(
    cfg: RunOptions, setting: Setting, tokenizer, labels, language, test: list[Record]
) -> set[int]:
    """Test samples whose prompt fits in this setting but not with another anchor (none, gold,
    shuffled, random): every setting of a direction drops them, so any two can be compared on the
    same test ids."""
    if setting.is_wli and any(r.tli is None for r in test):
        return set()  # no anchor is possible: nothing to compare against
    drops: set[int] = set()
    for kind in AnchorKind:
        other = Setting(setting.direction, True, kind)
        if other == setting:
            continue
        builder = make_builder(cfg, other, tokenizer, labels, language)
        builder.control = _controls(other, builder, {"test": test})
        drops |= {i for i, r in enumerate(test) if builder.encode(r, i) is None}
    return drops


def build_context(
    cfg: RunOptions, setting: Setting | None = None, tokenizer_path: str | Path | None = None
) -> TaskContext:
    """The context of a composed config (its own setting unless `setting` is given)."""
    setting = setting or Setting.from_config(cfg)
    language = str(cfg.dataset.language)
    splits = load_splits(cfg.dataset, wli_format_of(cfg))  # pairs the answer format cannot hold: bad rows
    splits = require_text_labels(splits, setting, cfg.dataset.on_bad_row)
    tokenizer = make_tokenizer(cfg, splits, language, tokenizer_path)
    labels = sorted({r.tli for r in splits.train if r.tli is not None})
    builder = make_builder(cfg, setting, tokenizer, labels, language)
    builder.control = _controls(setting, builder, {name: getattr(splits, name) for name in SPLITS})
    encoded = {name: builder.encode_all(getattr(splits, name), name) for name in SPLITS}
    drop = _comparable_drops(cfg, setting, tokenizer, labels, language, splits.test)
    kept = [e for e in encoded["test"] if e.index not in drop]
    if len(kept) < len(encoded["test"]):
        builder.dropped["fits only without another anchor (comparability)"] += len(encoded["test"]) - len(
            kept
        )
        log.warning(
            "dropped %d test samples whose prompt with another anchor (gold, shuffled or random) does not "
            "fit prompt.max_length=%d: that setting drops them, so this run does too (every setting of a "
            "direction sees the same test ids)",
            len(encoded["test"]) - len(kept),
            builder.max_length,
        )
        encoded["test"] = kept
    for name in SPLITS:
        if getattr(splits, name) and not encoded[name] and name != "dev":
            raise PromptError(
                f"no {name} sample fits prompt.max_length={builder.max_length} "
                f"({dict(builder.dropped)}); raise prompt.max_length"
            )
    unseen = sum(1 for r in splits.test if r.tli is not None and r.tli not in labels)
    if unseen and setting.is_tli:
        log.warning("%d test samples have a text label never seen in training: scored as wrong", unseen)
    return TaskContext(setting, language, str(cfg.dataset.name), splits, tokenizer, builder, encoded)
