"""Prompt builder for the four MRE settings (direction `wli|tli` x `with_anchor`).

A record becomes token ids *and* the token index ranges of the text, the anchor and the target
position q, taken from the tokenizer's own offsets on the whole prompt, so the flow code never
searches strings in token space and the model sees the tokenization it would see in use.

Layout (field names and instructions per language come from the config):

    {instruction}
    {text_field} {text}
    {anchor_field} {anchor}        <- only with an anchor: TLI string (wli) or serialized WLI (tli)
    {answer_field}                 <- q is the last token of this line
     {answer}</s>                  <- loss only on these tokens

TLI answers are one-token codes (`A`, `B`, ...) listed in the instruction, as in the paper; the
builder checks each code is exactly one token in context under the tokenizer in use.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from mre.data.record import Record
from mre.data.wli_format import WLIFormat
from mre.setting import Setting

log = logging.getLogger(__name__)

CODE_SCHEMES: dict[str, str] = {
    "letters": string.ascii_uppercase,
    "lower": string.ascii_lowercase,
    "digits": string.digits,
}


class PromptError(ValueError):
    """The prompt settings cannot work with this tokenizer or data set."""


@dataclass(frozen=True)
class Fields:
    """Line prefixes of one language (`Text:`, `Label:`, `Entities:`, `Answer:`)."""

    text: str
    tli: str
    wli: str
    answer: str


@dataclass(frozen=True)
class Encoded:
    """One tokenized sample. Ranges are [start, end) in `prompt_ids`; q = len(prompt_ids) - 1."""

    index: int
    prompt_ids: list[int]
    answer_ids: list[int]
    text_range: tuple[int, int]
    anchor_range: tuple[int, int]
    answer: str

    @property
    def q(self) -> int:
        return len(self.prompt_ids) - 1

    @property
    def target(self) -> int:
        return self.answer_ids[0]


@dataclass
class Rendered:
    """Prompt and answer strings with the char ranges of text and anchor inside the prompt."""

    prompt: str
    answer: str
    text_chars: tuple[int, int]
    anchor_chars: tuple[int, int]


@dataclass
class PromptBuilder:
    """Turns records into `Encoded` samples for one setting; see the module docstring."""

    tokenizer: PreTrainedTokenizerBase
    setting: Setting
    instruction: str
    fields: Fields
    labels: list[str]
    wli_format: WLIFormat = field(default_factory=WLIFormat)
    code_scheme: str = "letters"
    max_length: int = 256
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0

    def __post_init__(self) -> None:
        self.code_scheme = str(self.code_scheme)
        self.codes: list[str] = self._codes(self.code_scheme)
        self.code_ids: list[int] = self.check_codes() if self.setting.is_tli else []

    # ---------- TLI codes ----------
    def _codes(self, scheme: str) -> list[str]:
        if scheme not in CODE_SCHEMES:
            raise PromptError(f"code_scheme must be one of {sorted(CODE_SCHEMES)}, got {scheme!r}")
        alphabet = CODE_SCHEMES[scheme]
        if len(self.labels) > len(alphabet):
            raise PromptError(
                f"code_scheme {scheme!r} has {len(alphabet)} codes but the data set has {len(self.labels)} "
                f"text labels; choose a scheme with enough codes: {self._schemes_with(len(self.labels))}"
            )
        return list(alphabet[: len(self.labels)])

    @staticmethod
    def _schemes_with(n: int) -> list[str]:
        return [k for k, v in CODE_SCHEMES.items() if len(v) >= n] or ["(none: too many labels)"]

    def _code_token_ids(self, codes: list[str]) -> tuple[list[int], str | None]:
        """Token id of each code in answer position, or the first code that is not one token."""
        probe = f"\n{self.fields.answer}"
        n_prompt = len(self.tokenizer(probe)["input_ids"])
        ids: list[int] = []
        for c in codes:
            full = self.tokenizer(probe + " " + c)["input_ids"]
            if len(full) != n_prompt + 1 or full[:n_prompt] != self.tokenizer(probe)["input_ids"]:
                return ids, c
            ids.append(full[-1])
        if len(set(ids)) != len(ids):
            return ids, codes[0]
        return ids, None

    def check_codes(self) -> list[int]:
        """Ids of the TLI codes; fails naming the offending code and a scheme that works."""
        ids, bad = self._code_token_ids(self.codes)
        if bad is None:
            return ids
        working = [
            s
            for s in CODE_SCHEMES
            if s != self.code_scheme
            and len(CODE_SCHEMES[s]) >= len(self.labels)
            and self._code_token_ids(list(CODE_SCHEMES[s][: len(self.labels)]))[1] is None
        ]
        hint = f"use prompt.code_scheme={working[0]}" if working else "no built-in code scheme works"
        raise PromptError(
            f"TLI code {bad!r} (scheme {self.code_scheme!r}) is not exactly one distinct token after "
            f"{self.fields.answer!r} under tokenizer {type(self.tokenizer).__name__}; {hint}"
        )

    def code_list(self) -> str:
        """`A=Sports, B=Music, ...`: the label list written into the TLI instruction."""
        return ", ".join(f"{c}={label}" for c, label in zip(self.codes, self.labels, strict=True))

    # ---------- rendering ----------
    def answer_of(self, rec: Record) -> str:
        if self.setting.is_wli:
            return self.wli_format.serialize(rec.wli)
        if rec.tli is None:
            raise PromptError(f"record {rec.id!r} has no text label; the tli direction needs one")
        if rec.tli not in self.labels:
            return "?"  # unseen label: kept for scoring (always wrong), never trained on
        return self.codes[self.labels.index(rec.tli)]

    def anchor_of(self, rec: Record) -> str:
        if self.setting.is_wli:
            if rec.tli is None:
                raise PromptError(
                    f"record {rec.id!r} has no text label, so 'text + TLI -> WLI' is impossible: "
                    "this data set offers only direction=wli with_anchor=false"
                )
            return rec.tli
        return self.wli_format.serialize(rec.wli)

    def render(self, rec: Record, text: str | None = None) -> Rendered:
        """Prompt string for a record (optionally with a shortened text) and the char ranges."""
        text = rec.text if text is None else text
        instruction = (
            self.instruction.format(codes=self.code_list()) if self.setting.is_tli else self.instruction
        )
        head = f"{instruction}\n{self.fields.text} "
        t0 = len(head)
        prompt = head + text
        t1 = len(prompt)
        a0 = a1 = t1
        if self.setting.with_anchor:
            anchor_field = self.fields.tli if self.setting.is_wli else self.fields.wli
            prompt += f"\n{anchor_field} "
            a0 = len(prompt)
            prompt += self.anchor_of(rec)
            a1 = len(prompt)
        prompt += f"\n{self.fields.answer}"
        return Rendered(prompt, " " + self.answer_of(rec), (t0, t1), (a0, a1))

    # ---------- tokenization ----------
    @staticmethod
    def _token_range(offsets: list[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int]:
        c0, c1 = chars
        idx = [i for i, (s, e) in enumerate(offsets) if e > s and s < c1 and e > c0]
        if not idx:
            return (0, 0)
        return (idx[0], idx[-1] + 1)

    def _tokenize(self, r: Rendered) -> tuple[list[int], list[int], tuple[int, int], tuple[int, int]]:
        enc = self.tokenizer(r.prompt + r.answer, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        n_prompt = next((i for i, (s, e) in enumerate(offsets) if e > s and s >= len(r.prompt)), len(ids))
        if any(s < len(r.prompt) < e for s, e in offsets):
            raise PromptError(
                f"a token straddles the prompt/answer boundary in {r.prompt[-20:] + r.answer[:10]!r}"
            )
        answer_ids = ids[n_prompt:]
        if self.tokenizer.eos_token_id is not None and (
            not answer_ids or answer_ids[-1] != self.tokenizer.eos_token_id
        ):
            answer_ids = [*answer_ids, self.tokenizer.eos_token_id]
        text_range = self._token_range(offsets[:n_prompt], r.text_chars)
        with_anchor = self.setting.with_anchor
        anchor_range = self._token_range(offsets[:n_prompt], r.anchor_chars) if with_anchor else (0, 0)
        if with_anchor and text_range[1] > anchor_range[0]:
            raise PromptError("text and anchor share a token: put a line break between them in the template")
        return ids[:n_prompt], answer_ids, text_range, anchor_range

    def encode(self, rec: Record, index: int) -> Encoded | None:
        """Tokenize one record; shorten the text (never the anchor or answer) to fit `max_length`.

        Returns None (and counts the reason in `dropped`) when even an empty text does not fit.
        """
        text = rec.text
        while True:
            r = self.render(rec, text)
            prompt_ids, answer_ids, tr, ar = self._tokenize(r)
            excess = len(prompt_ids) + len(answer_ids) - self.max_length
            if excess <= 0:
                if tr[1] <= tr[0]:
                    self.dropped["no text tokens"] += 1
                    return None
                return Encoded(index, prompt_ids, answer_ids, tr, ar, r.answer.strip())
            n_text = tr[1] - tr[0]
            if text == rec.text:
                self.truncated += 1
            if n_text - excess < 1:
                self.dropped["anchor/answer do not fit in max_length"] += 1
                return None
            text = self._cut_text(text, r, tr, n_text - excess)

    def _cut_text(self, text: str, r: Rendered, tr: tuple[int, int], keep: int) -> str:
        """Keep the first `keep` text tokens' characters (at least one character shorter)."""
        enc = self.tokenizer(r.prompt, return_offsets_mapping=True)
        cut = enc["offset_mapping"][tr[0] + keep][0] - r.text_chars[0]
        cut = max(1, min(cut, len(text) - 1))
        return text[:cut].rstrip() or text[:1]

    def encode_all(self, records: list[Record]) -> list[Encoded]:
        """Encode a split, logging how many samples were dropped and why."""
        before = sum(self.dropped.values())
        out = [e for i, rec in enumerate(records) if (e := self.encode(rec, i)) is not None]
        n = sum(self.dropped.values()) - before
        if n:
            log.warning("dropped %d of %d samples: %s", n, len(records), dict(self.dropped))
        return out
