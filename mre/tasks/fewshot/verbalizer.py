"""Verbalizers: which words stand for each class, the file users read and edit, and the head that
turns first-step decoder logits into class scores.

- `manual_verbalizer`: the label names (or words the user gives per class).
- `knowledgeable_verbalizer`: KPT (Hu et al. 2022) with word-level information as the knowledge
  base: the top-K most frequent WLI words (or whole spans) of each class, with a minimum count, an
  option to drop words shared by classes and a limit on sub-word pieces. A class left without
  words falls back to its label name, with a warning.
- `write_verbalizer` / `read_verbalizer`: a plain file, one line per class,
  `label: word, word, ...`; `#` lines are comments.
- `tokenize_verbalizer`: the pieces of every word; a word that tokenizes to nothing is dropped with
  a warning.
- `VerbalizerHead`: scores of the label words from the vocabulary logits of one decoder position,
  the multi-token reduction (first | mean | max, on logits), one softmax over all label words,
  optional contextual calibration, and the aggregation over a class's words (mean of
  log-probabilities, OpenPrompt's KPT behaviour; or the sum of probabilities, the paper's text),
  optionally with learnable per-word weights.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from mre.data.record import Record
from mre.errors import UserError
from mre.setting import StrEnum
from mre.tasks.fewshot.options import Aggregate, LabelForm, MultiToken, WordUnit

log = logging.getLogger(__name__)

EPS = 1e-15
Choice = TypeVar("Choice", bound=StrEnum)
PiecesOf = Callable[[str], list[int]]  # a label word -> the token ids it is scored by


class VerbalizerError(UserError, ValueError):
    """A verbalizer cannot be built, read or used."""


def check_choice(name: str, value: object, choices: type[Choice]) -> Choice:
    """The member of the option's enum (a plain value too, for callers outside a config); a value that is
    none of them fails naming the valid ones."""
    try:
        return choices(value)
    except ValueError:
        raise VerbalizerError(f"{name} must be one of {', '.join(choices)}; got {value!r}") from None


@dataclass(frozen=True)
class Verbalizer:
    """Label words per class: `words[i]` belongs to `labels[i]`, most important first."""

    labels: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.words):
            raise VerbalizerError(f"{len(self.labels)} labels but {len(self.words)} word lists")

    def of(self, label: str) -> tuple[str, ...]:
        return self.words[self.labels.index(label)]

    def as_dict(self) -> dict[str, list[str]]:
        return {lab: list(ws) for lab, ws in zip(self.labels, self.words, strict=True)}

    def all_words(self) -> list[str]:
        return [w for ws in self.words for w in ws]


# ---------- building ----------
def label_word(label: str, form: LabelForm = LabelForm.words) -> str:
    """A label as a label word: `words` splits CamelCase / snake_case and lowercases
    (`PlayMusic` -> `play music`, `Sports` -> `sports`); `raw` keeps it as it is."""
    if check_choice("verbalizer.label_form", form, LabelForm) is LabelForm.raw:
        return label
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", label)
    return " ".join(spaced.replace("_", " ").replace("-", " ").split()).lower()


def manual_verbalizer(
    labels: Sequence[str],
    words: Mapping[str, Sequence[str]] | None = None,
    label_form: LabelForm = LabelForm.words,
) -> Verbalizer:
    """The label names as label words, or the user's words for the classes that have some."""
    words = dict(words or {})
    unknown = sorted(set(words) - set(labels))
    if unknown:
        raise VerbalizerError(
            f"verbalizer.words names classes that are not labels of the data set: {unknown} "
            f"(labels: {list(labels)})"
        )
    out = []
    for lab in labels:
        given = [w.strip() for w in words.get(lab, []) if w.strip()]
        if words and not given:
            log.warning("verbalizer.words gives no words for class %r: using its label name", lab)
        out.append(tuple(given) if given else (label_word(lab, label_form),))
    return Verbalizer(tuple(labels), tuple(out))


_STRIP = string.punctuation + "「」『』（）【】、。・！？"


def wli_units(record: Record, unit: WordUnit = WordUnit.word) -> list[str]:
    """The knowledge units of a record: its WLI spans lowercased, split into words (`word`) or kept
    whole (`span`). Commas separate words too (they separate words in the verbalizer file);
    punctuation around a word is stripped."""
    whole = check_choice("verbalizer.unit", unit, WordUnit) is WordUnit.span
    out: list[str] = []
    for p in record.wli:
        text = p.span.lower().replace(",", " ")
        parts = [" ".join(text.split())] if whole else text.split()
        out += [w for w in (x.strip(_STRIP) for x in parts) if w]
    return out


def count_wli(
    records: Iterable[Record], labels: Sequence[str], unit: WordUnit = WordUnit.word
) -> dict[str, Counter]:
    """Occurrences of every WLI unit per class (records of other or no labels are ignored)."""
    counts: dict[str, Counter] = {lab: Counter() for lab in labels}
    for r in records:
        if r.tli in counts:
            counts[r.tli].update(wli_units(r, unit))
    return counts


def word_pieces(tokenizer: PreTrainedTokenizerBase, word: str, strip_space_piece: bool = True) -> list[int]:
    """Token ids of a label word as the decoder would produce it (no special tokens). With
    `strip_space_piece`, a leading piece that is only a word-boundary marker (SentencePiece `▁`,
    e.g. before Japanese text or digits) is dropped: it is shared by many words and says nothing."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if strip_space_piece:
        while ids and not tokenizer.convert_ids_to_tokens(ids[0]).replace("▁", "").replace("Ġ", "").strip():
            ids = ids[1:]
    return list(ids)


def knowledgeable_verbalizer(
    records: Iterable[Record],
    labels: Sequence[str],
    top_k: int = 100,
    min_count: int = 1,
    drop_shared: bool = False,
    unit: WordUnit = WordUnit.word,
    max_pieces: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    label_form: LabelForm = LabelForm.words,
    strip_space_piece: bool = True,
    source_name: str = "the training records",
    pieces_of: PiecesOf | None = None,
) -> Verbalizer:
    """The top-K most frequent WLI units of each class (ties: alphabetical), after the filters:

    1. `min_count`: a unit must occur at least this often in the class's WLI;
    2. `drop_shared`: a unit passing `min_count` in two or more classes is dropped from all of them;
    3. `max_pieces` (needs `tokenizer`, or `pieces_of` for pieces in the prompt's context): a unit with
       more sub-word pieces is dropped.

    A class left without units falls back to its label name (see `label_word`), with a warning.
    """
    if top_k < 1:
        raise VerbalizerError(f"verbalizer.top_k must be >= 1, got {top_k}")
    if max_pieces is not None and tokenizer is None and pieces_of is None:
        raise VerbalizerError("max_pieces needs the tokenizer")
    pieces_of = pieces_of or (lambda w: word_pieces(tokenizer, w, strip_space_piece))
    counts = count_wli(records, labels, unit)
    passing = {lab: {w for w, n in c.items() if n >= min_count} for lab, c in counts.items()}
    shared: set[str] = set()
    if drop_shared:
        seen: Counter = Counter(w for ws in passing.values() for w in ws)
        shared = {w for w, n in seen.items() if n > 1}
    out = []
    too_long: Counter = Counter()
    for lab in labels:
        cands = sorted((w for w in passing[lab] if w not in shared), key=lambda w: (-counts[lab][w], w))
        if max_pieces is not None:
            kept = [w for w in cands if len(pieces_of(w)) <= max_pieces]
            too_long[lab] = len(cands) - len(kept)
            cands = kept
        words = cands[:top_k]
        if not words:
            name = label_word(lab, label_form)
            log.warning(
                "knowledgeable verbalizer: class %r has no WLI words in %s (after min_count=%d%s%s): "
                "falling back to its label name %r",
                lab,
                source_name,
                min_count,
                ", drop_shared" if drop_shared else "",
                f", max_pieces={max_pieces}" if max_pieces is not None else "",
                name,
            )
            words = [name]
        out.append(tuple(words))
    if shared:
        log.info("knowledgeable verbalizer: dropped %d words shared by classes", len(shared))
    if sum(too_long.values()):
        log.info("knowledgeable verbalizer: dropped words over max_pieces=%s: %s", max_pieces, dict(too_long))
    return Verbalizer(tuple(labels), tuple(out))


# ---------- the file ----------
def write_verbalizer(verbalizer: Verbalizer, path: str | Path, header: str = "") -> Path:
    """One line per class, `label: word, word, ...`; `header` lines are written as `#` comments."""
    path = Path(path)
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    lines.append("# one class per line: label: word, word, ... (read back with verbalizer.path=<this file>)")
    for lab, words in zip(verbalizer.labels, verbalizer.words, strict=True):
        if ":" in lab or "\n" in lab or lab.startswith("#"):
            raise VerbalizerError(
                f"label {lab!r} cannot be written to a verbalizer file (':', '#' or newline)"
            )
        bad = [w for w in words if "," in w or "\n" in w]
        if bad:
            raise VerbalizerError(f"class {lab!r}: words with ',' or newline cannot be written: {bad}")
        lines.append(f"{lab}: {', '.join(words)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_verbalizer(path: str | Path, labels: Sequence[str]) -> Verbalizer:
    """Read a verbalizer file for the data set's `labels` (their order, not the file's). An empty
    file, a line without `label:`, an unknown or repeated class, a class missing from the file or a
    class without words is an error that names the file (and the class)."""
    path = Path(path)
    if not path.is_file():
        raise VerbalizerError(f"verbalizer file {path} does not exist")
    found: dict[str, tuple[str, ...]] = {}
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise VerbalizerError(f"{path}, line {no}: expected 'label: word, word, ...', got {line!r}")
        lab, _, rest = line.partition(":")
        lab = lab.strip()
        if lab not in labels:
            raise VerbalizerError(
                f"{path}, line {no}: class {lab!r} is not a label of the data set (labels: {list(labels)})"
            )
        if lab in found:
            raise VerbalizerError(f"{path}, line {no}: class {lab!r} appears twice")
        found[lab] = tuple(w.strip() for w in rest.split(",") if w.strip())
    if not found:
        raise VerbalizerError(
            f"verbalizer file {path} is empty: expected one line per class, 'label: word, word, ...' "
            f"for the classes {list(labels)}"
        )
    for lab in labels:
        if lab not in found:
            raise VerbalizerError(
                f"verbalizer file {path}: class {lab!r} is missing (add a line '{lab}: word, ...')"
            )
        if not found[lab]:
            raise VerbalizerError(f"verbalizer file {path}: class {lab!r} has no words")
    return Verbalizer(tuple(labels), tuple(found[lab] for lab in labels))


# ---------- tokens ----------
def tokenize_verbalizer(
    verbalizer: Verbalizer,
    tokenizer: PreTrainedTokenizerBase,
    strip_space_piece: bool = True,
    label_form: LabelForm = LabelForm.words,
    pieces_of: PiecesOf | None = None,
) -> tuple[Verbalizer, list[list[list[int]]]]:
    """The pieces of every word (`word_pieces`, or `pieces_of` for pieces in the prompt's context). A
    word that tokenizes to nothing is dropped with a warning; a class left without words falls back to
    its label name (warning), and fails when that is empty too."""
    pieces_of = pieces_of or (lambda w: word_pieces(tokenizer, w, strip_space_piece))
    labels, words, pieces = [], [], []
    for lab, ws in zip(verbalizer.labels, verbalizer.words, strict=True):
        kept_w, kept_p = [], []
        for w in ws:
            ids = pieces_of(w)
            if ids:
                kept_w.append(w)
                kept_p.append(ids)
            else:
                log.warning("label word %r of class %r tokenizes to nothing: dropped", w, lab)
        if not kept_w:
            name = label_word(lab, label_form)
            ids = pieces_of(name)
            if not ids:
                raise VerbalizerError(
                    f"class {lab!r}: no label word tokenizes to anything, not even {name!r}"
                )
            log.warning("class %r has no usable label words: falling back to its label name %r", lab, name)
            kept_w, kept_p = [name], [ids]
        labels.append(lab)
        words.append(tuple(kept_w))
        pieces.append(kept_p)
    return Verbalizer(tuple(labels), tuple(words)), pieces


# ---------- scores ----------
class VerbalizerHead(torch.nn.Module):
    """Class scores from the vocabulary logits of one decoder position (see the module docstring).

    With W label words over C classes, for vocabulary logits z (B x V):

    1. word logit s_w = reduce over the word's pieces of z[piece] (first | mean | max);
    2. p_w = softmax(s) over all W label words (one softmax);
    3. calibration (when on): p_w <- (p_w / c_w) / sum_v (p_v / c_v), with c_w the mean of p_w over
       the calibration texts (`set_calibration`);
    4. class score: `mean_logprob`: sum_w a_cw log p_w with a_cw = 1/n_c (or the softmax of the
       learned weights over the class's words); `sum_prob`: log sum_w b_cw p_w with b_cw = 1
       (or n_c times the softmax of the learned weights, so that uniform weights give the plain sum).

    Training uses cross-entropy over the C class scores, prediction their arg-max.
    """

    def __init__(
        self,
        pieces: Sequence[Sequence[Sequence[int]]],
        multi_token: MultiToken = MultiToken.mean,
        aggregate: Aggregate = Aggregate.mean_logprob,
        calibrate: bool = False,
        learn_weights: bool = False,
    ) -> None:
        super().__init__()
        self.multi_token = check_choice("verbalizer.multi_token", multi_token, MultiToken)
        self.aggregate = check_choice("verbalizer.aggregate", aggregate, Aggregate)
        self.calibrate = calibrate
        flat = [p for cls in pieces for p in cls]
        if not flat or any(not cls for cls in pieces) or any(not p for p in flat):
            raise VerbalizerError("every class needs at least one word with at least one piece")
        n_words, n_pieces = len(flat), max(len(p) for p in flat)
        n_classes, per_class = len(pieces), max(len(cls) for cls in pieces)
        ids = torch.zeros(n_words, n_pieces, dtype=torch.long)
        mask = torch.zeros(n_words, n_pieces, dtype=torch.bool)
        for i, p in enumerate(flat):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = True
        index = torch.zeros(n_classes, per_class, dtype=torch.long)
        cmask = torch.zeros(n_classes, per_class, dtype=torch.bool)
        start = 0
        for c, cls in enumerate(pieces):
            index[c, : len(cls)] = torch.arange(start, start + len(cls))
            cmask[c, : len(cls)] = True
            start += len(cls)
        self.register_buffer("piece_ids", ids, persistent=False)
        self.register_buffer("piece_mask", mask, persistent=False)
        self.register_buffer("class_index", index, persistent=False)
        self.register_buffer("class_mask", cmask, persistent=False)
        self.register_buffer("calibration", torch.ones(n_words))  # c_w (ones: no calibration yet)
        self.weights = torch.nn.Parameter(torch.zeros(n_classes, per_class)) if learn_weights else None

    @property
    def n_classes(self) -> int:
        return self.class_index.shape[0]

    def word_logits(self, vocab_logits: torch.Tensor) -> torch.Tensor:
        """B x W: one score per label word, reduced over its pieces."""
        z = vocab_logits[:, self.piece_ids]  # B x W x P
        if self.multi_token is MultiToken.first:
            return z[..., 0]
        if self.multi_token is MultiToken.mean:
            m = self.piece_mask.to(z.dtype)
            return (z * m).sum(-1) / m.sum(-1)
        return z.masked_fill(~self.piece_mask, float("-inf")).amax(-1)

    def word_probs(self, vocab_logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """B x W: the softmax over all label words, calibrated when calibration is on."""
        p = self.word_logits(vocab_logits).float().softmax(-1)
        if calibrated and self.calibrate:
            p = p / (self.calibration + EPS)
            p = p / p.sum(-1, keepdim=True)
        return p

    def set_calibration(self, mean_probs: torch.Tensor) -> None:
        """c_w: the mean (uncalibrated) word probabilities over the calibration texts."""
        self.calibration.copy_(mean_probs.detach().to(self.calibration))

    def class_weights(self) -> torch.Tensor:
        """C x Wc: a_cw, the weight of each of a class's words (zero on padding)."""
        if self.weights is None:
            m = self.class_mask.float()
            return m / m.sum(-1, keepdim=True)
        return self.weights.masked_fill(~self.class_mask, float("-inf")).softmax(-1)

    def forward(self, vocab_logits: torch.Tensor) -> torch.Tensor:
        """B x C class scores (see the class docstring)."""
        p = self.word_probs(vocab_logits)[:, self.class_index]  # B x C x Wc
        a = self.class_weights()
        if self.aggregate is Aggregate.mean_logprob:
            return (torch.log(p + EPS) * a).sum(-1)
        b = a * self.class_mask.sum(-1, keepdim=True)
        return torch.log((p * b).sum(-1) + EPS)
