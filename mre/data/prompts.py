"""Prompt builder for the four MRE settings (direction `wli|tli` x `with_anchor`).

A record becomes token ids *and* the token index ranges of the text, the anchor and the target
position q, taken from the tokenizer's own offsets on the whole prompt, so the flow code never
searches strings in token space and the model sees the tokenization it would see in use.

Plain layout (field names and instructions per language come from the config):

    {instruction}
    {text_field} {text}
    {anchor_field} {anchor}        <- only with an anchor: TLI string (wli) or serialized WLI (tli)
    {answer_field}                 <- q is the last token of this line
     {answer}</s>                  <- loss only on these tokens

Chat layout (`chat=True`, for tokenizers with a chat template: LLaMA-2-chat, SmolLM2, Qwen, ...):
instruction, text and anchor lines are the user turn and the answer is the assistant turn, rendered
by the tokenizer's own `apply_chat_template`. q is the last token of the generation prompt (e.g.
`<|im_start|>assistant\\n`); the loss covers the answer and the template's end-of-turn token only
(`<|im_end|>`, `</s>`), and generation stops there (`stop_ids`). The text must appear in the rendered
prompt exactly as given, or the spans could not be found: a template that rewrites it is refused.

A prompt longer than `max_length` gets its text cut (never the instruction); the cut record keeps only
the WLI pairs inside the kept text, in the answer and in a WLI anchor alike (`shorten`), and
`truncated` / `wli_cut` count the shortened texts and the pairs left out.

TLI answers are one-token codes listed in the instruction, as in the paper, which numbers its
classes: `digits` (`1`..`9`) where the tokenizer makes each a single token in answer position and
there are at most nine labels, letters (`A`, `B`, ...) otherwise (`code_scheme: auto`). The builder
checks every code is exactly one distinct token in context under the tokenizer in use; more labels than
the largest scheme has codes (26) is an error, since a code must stay one token for the flow's q.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from dataclasses import dataclass, field, replace

from transformers import PreTrainedTokenizerBase

from mre.data.options import CodeScheme
from mre.data.record import Record
from mre.data.wli_format import WLIFormat
from mre.errors import UserError
from mre.setting import AnchorKind, Setting

log = logging.getLogger(__name__)

# the codes of each scheme; `CodeScheme.auto`: the first of these that works for the labels and tokenizer
CODE_SCHEMES: dict[CodeScheme, str] = {
    CodeScheme.digits: "123456789",  # the paper's class numbers, from 1
    CodeScheme.letters: string.ascii_uppercase,
    CodeScheme.lower: string.ascii_lowercase,
}


class PromptError(UserError, ValueError):
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
    """One tokenized sample. Ranges are [start, end) in `prompt_ids`; q = len(prompt_ids) - 1.

    `record` is the record as encoded: when its text was shortened to fit, the shortened text and only
    the WLI pairs inside it, so that evaluation scores against the `answer` the model could see."""

    index: int
    prompt_ids: list[int]
    answer_ids: list[int]
    text_range: tuple[int, int]
    anchor_range: tuple[int, int]
    answer: str
    record: Record

    @property
    def q(self) -> int:
        return len(self.prompt_ids) - 1

    @property
    def target(self) -> int:
        return self.answer_ids[0]


@dataclass
class Rendered:
    """Prompt and answer strings with the char ranges of text and anchor inside the prompt; `answer`
    may end with the chat template's end of turn, of which `answer_chars` is the answer's own part."""

    prompt: str
    answer: str
    text_chars: tuple[int, int]
    anchor_chars: tuple[int, int]
    answer_chars: int


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass
class PromptBuilder:
    """Turns records into `Encoded` samples for one setting; see the module docstring."""

    tokenizer: PreTrainedTokenizerBase
    setting: Setting
    instruction: str
    fields: Fields
    labels: list[str]
    wli_format: WLIFormat = field(default_factory=WLIFormat)
    code_scheme: CodeScheme = CodeScheme.auto
    max_length: int = 256
    chat: bool = False
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0  # texts shortened to fit max_length
    wli_cut: int = 0  # WLI pairs left out because a shortened text no longer holds them
    control: dict[str, str] = field(default_factory=dict)  # record id -> control anchor (not gold)

    def __post_init__(self) -> None:
        self.code_scheme = CodeScheme(self.code_scheme)
        if self.chat and not has_chat_template(self.tokenizer):
            raise PromptError(
                f"prompt.chat_template=on, but tokenizer {type(self.tokenizer).__name__} has no chat "
                "template; use prompt.chat_template=auto (or off) for plain prompts"
            )
        self.codes: list[str] = []
        self.code_ids: list[int] = []
        self.end_of_turn: int | None = None
        if self.chat:
            self.end_of_turn = self._end_of_turn()
        if self.setting.is_tli:
            self.code_scheme, self.codes, self.code_ids = self._choose_codes()

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer in generation: the end of turn (chat) and EOS."""
        ids = [self.end_of_turn, self.tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    # ---------- TLI codes ----------
    def _code_token_ids(self, codes: list[str]) -> tuple[list[int], str | None]:
        """Token id of each code in answer position (the instruction listing these codes), or the first
        code that is not one distinct token."""
        self.codes = codes
        ids: list[int] = []
        for c in codes:
            answer_ids = self._tokenize(self._render_parts("x", "x", c))[1]
            answer_ids = answer_ids[:-1] if answer_ids[-1:] == self.stop_ids[:1] else answer_ids
            if len(answer_ids) != 1:
                return ids, c
            ids.append(answer_ids[0])
        if len(set(ids)) != len(ids):
            return ids, codes[0]
        return ids, None

    def _choose_codes(self) -> tuple[CodeScheme, list[str], list[int]]:
        """The scheme, codes and their token ids; fails naming the offending code and a scheme that works."""
        auto = self.code_scheme is CodeScheme.auto
        fits = [k for k, v in CODE_SCHEMES.items() if len(v) >= len(self.labels)]
        if not fits:
            sizes = ", ".join(f"{k} {len(v)}" for k, v in CODE_SCHEMES.items())
            raise PromptError(
                f"the data set has {len(self.labels)} text labels, more than any TLI code scheme has "
                f"one-token codes ({sizes}); use a coarser text label (SLURP: dataset.tli_field=scenario)"
            )
        if not auto and self.code_scheme not in fits:
            n = len(CODE_SCHEMES[self.code_scheme])
            raise PromptError(
                f"code_scheme '{self.code_scheme}' has {n} codes but the data set has {len(self.labels)} "
                f"text labels; choose a scheme with enough codes: {[str(k) for k in fits] or '(none)'}"
            )
        failures: dict[CodeScheme, str] = {}
        for scheme in fits if auto else [self.code_scheme]:
            codes = list(CODE_SCHEMES[scheme][: len(self.labels)])
            ids, bad = self._code_token_ids(codes)
            if bad is None:
                return scheme, codes, ids
            failures[scheme] = bad
        others = [
            s
            for s in fits
            if s not in failures
            and self._code_token_ids(list(CODE_SCHEMES[s][: len(self.labels)]))[1] is None
        ]
        hint = f"use prompt.code_scheme={others[0]}" if others else "no built-in code scheme works"
        what = "; ".join(f"code {bad!r} of scheme '{s}'" for s, bad in failures.items())
        raise PromptError(
            f"TLI codes must be exactly one distinct token each in answer position under tokenizer "
            f"{type(self.tokenizer).__name__}, and {what} is not; {hint}"
        )

    def code_list(self) -> str:
        """`1=Sports, 2=Music, ...`: the label list written into the TLI instruction (empty before the
        codes are chosen)."""
        if not self.codes:
            return ""
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
        """The anchor a record's prompt shows: its gold anchor, or its control anchor (`control`, set
        by `mre.data.context` for `anchor_kind=shuffled|random`)."""
        if self.setting.anchor is AnchorKind.gold:
            return self.gold_anchor(rec)
        if rec.id not in self.control:
            raise PromptError(f"no {self.setting.anchor} anchor was made for record {rec.id!r}")
        return self.control[rec.id]

    def gold_anchor(self, rec: Record) -> str:
        """The record's own other-level information: its TLI (wli direction) or serialized WLI."""
        if self.setting.is_wli:
            if rec.tli is None:
                raise PromptError(
                    f"record {rec.id!r} has no text label, so 'text + TLI -> WLI' is impossible: "
                    "this data set offers only direction=wli with_anchor=false"
                )
            return rec.tli
        return self.wli_format.serialize(rec.wli)

    def render(self, rec: Record) -> Rendered:
        """Prompt string for a record and the char ranges."""
        anchor = self.anchor_of(rec) if self.setting.with_anchor else ""
        return self._render_parts(rec.text, anchor, self.answer_of(rec))

    def _render_parts(self, text: str, anchor: str, answer: str) -> Rendered:
        instruction = (
            self.instruction.format(codes=self.code_list()) if self.setting.is_tli else self.instruction
        )
        body = f"{instruction}\n{self.fields.text} "
        t0 = len(body)
        body += text
        t1 = len(body)
        a0 = a1 = t1
        if self.setting.with_anchor:
            anchor_field = self.fields.tli if self.setting.is_wli else self.fields.wli
            body += f"\n{anchor_field} "
            a0 = len(body)
            body += anchor
            a1 = len(body)
        if not self.chat:
            prompt = body + f"\n{self.fields.answer}"
            return Rendered(prompt, " " + answer, (t0, t1), (a0, a1), len(answer) + 1)
        prompt, reply = self._chat(body, answer)
        shift = prompt.find(body)
        return Rendered(
            prompt,
            reply,
            (t0 + shift, t1 + shift),
            (a0 + shift, a1 + shift),
            reply.find(answer) + len(answer),
        )

    def _chat(self, user: str, answer: str) -> tuple[str, str]:
        """(generation prompt, the assistant turn after it) rendered by the tokenizer's chat template."""
        turn = [{"role": "user", "content": user}]
        prompt = self.tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        full = self.tokenizer.apply_chat_template(
            [*turn, {"role": "assistant", "content": answer}], tokenize=False
        )
        if prompt.count(user) != 1 or not full.startswith(prompt) or answer not in full[len(prompt) :]:
            raise PromptError(
                "the tokenizer's chat template does not keep the user text and the answer verbatim (it "
                "rewrites, moves or repeats them), so the text and anchor spans cannot be found; use "
                "prompt.chat_template=off"
            )
        return prompt, full[len(prompt) :]

    def _end_of_turn(self) -> int:
        """The special token the chat template closes the assistant turn with."""
        r = self._render_parts("x", "x", "x")
        enc = self.tokenizer(r.prompt + r.answer, return_offsets_mapping=True, add_special_tokens=False)
        special = set(self.tokenizer.all_special_ids)
        after = len(r.prompt) + r.answer_chars
        for tid, (s, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if s >= after and tid in special:
                return tid
        raise PromptError(
            "the tokenizer's chat template ends the assistant turn with no special token (no end of turn to "
            "train and stop on); use prompt.chat_template=off"
        )

    # ---------- tokenization ----------
    @staticmethod
    def _token_range(offsets: list[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int]:
        c0, c1 = chars
        idx = [i for i, (s, e) in enumerate(offsets) if e > s and s < c1 and e > c0]
        if not idx:
            return (0, 0)
        return (idx[0], idx[-1] + 1)

    def _answer_ids(
        self, ids: list[int], offsets: list[tuple[int, int]], n_prompt: int, end: int
    ) -> list[int]:
        """The answer's tokens (those starting before char `end`) and its end token: the chat template's
        end of turn, or EOS for plain prompts (added when the tokenizer did not)."""
        answer = [
            i for i, (s, e) in zip(ids[n_prompt:], offsets[n_prompt:], strict=True) if s < end or e <= s
        ]
        stop = self.end_of_turn if self.chat else self.tokenizer.eos_token_id
        answer = [i for i in answer if i != stop]
        return answer if stop is None else [*answer, stop]

    def _tokenize(self, r: Rendered) -> tuple[list[int], list[int], tuple[int, int], tuple[int, int]]:
        enc = self.tokenizer(
            r.prompt + r.answer, return_offsets_mapping=True, add_special_tokens=not self.chat
        )
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        n_prompt = next((i for i, (s, e) in enumerate(offsets) if e > s and s >= len(r.prompt)), len(ids))
        if any(s < len(r.prompt) < e for s, e in offsets):
            raise PromptError(
                f"a token straddles the prompt/answer boundary in {r.prompt[-20:] + r.answer[:10]!r}"
            )
        answer_ids = self._answer_ids(ids, offsets, n_prompt, len(r.prompt) + r.answer_chars)
        text_range = self._token_range(offsets[:n_prompt], r.text_chars)
        with_anchor = self.setting.with_anchor
        anchor_range = self._token_range(offsets[:n_prompt], r.anchor_chars) if with_anchor else (0, 0)
        if with_anchor and text_range[1] > anchor_range[0]:
            raise PromptError("text and anchor share a token: put a line break between them in the template")
        return ids[:n_prompt], answer_ids, text_range, anchor_range

    def anchor_pairs(self, rec: Record) -> list[tuple[str, str, tuple[int, int]]]:
        """(type, span, token range in the prompt) of each WLI pair the anchor of `rec` shows (the TLI
        direction; the record as encoded, `Encoded.record`): the flow split per WLI type and entity
        (`mre.analysis.flow_groups`). A token across two pairs (a merged separator) counts in both."""
        if not (self.setting.with_anchor and self.setting.is_tli):
            return []
        r = self.render(rec)
        enc = self.tokenizer(
            r.prompt + r.answer, return_offsets_mapping=True, add_special_tokens=not self.chat
        )
        offsets = [o for o in enc["offset_mapping"] if o[0] < len(r.prompt)]
        anchor = r.prompt[r.anchor_chars[0] : r.anchor_chars[1]]
        out, start = [], r.anchor_chars[0]
        for piece in anchor.split(self.wli_format.pair_sep):
            kind, sep, span = piece.partition(self.wli_format.kv_sep)
            if sep and kind.strip() and span.strip():
                tokens = self._token_range(offsets, (start, start + len(piece)))
                out.append((kind.strip(), span.strip(), tokens))
            start += len(piece) + len(self.wli_format.pair_sep)
        return out

    def encode(self, rec: Record, index: int) -> Encoded | None:
        """Tokenize one record; shorten the text (never the instruction) to fit `max_length`.

        A shortened text keeps only the WLI pairs inside it (`shorten`), in the answer and in the anchor
        alike: the model is never asked for, or shown, an entity of a part it cannot see. Fewer pairs
        make a WLI anchor or answer shorter, so every cut is rendered and measured again (a cut may
        thus leave some room). Returns None (and counts the reason in `dropped`) when even a
        one-token text does not fit.
        """
        cut = rec
        while True:
            r = self.render(cut)
            prompt_ids, answer_ids, tr, ar = self._tokenize(r)
            excess = len(prompt_ids) + len(answer_ids) - self.max_length
            if excess <= 0:
                if tr[1] <= tr[0]:
                    self.dropped["no text tokens"] += 1
                    return None
                self.wli_cut += len(rec.wli) - len(cut.wli)
                return Encoded(index, prompt_ids, answer_ids, tr, ar, self.answer_of(cut), cut)
            if cut is rec:
                self.truncated += 1
            n_text = tr[1] - tr[0]
            shorter = shorten(cut, self._cut_text(cut.text, r, tr, max(1, n_text - excess)))
            if shorter == cut or (n_text - excess < 1 and shorter.wli == cut.wli):
                self.dropped["anchor/answer do not fit in max_length"] += 1
                return None
            cut = shorter

    def _cut_text(self, text: str, r: Rendered, tr: tuple[int, int], keep: int) -> str:
        """Keep the first `keep` text tokens' characters (at least one character shorter)."""
        enc = self.tokenizer(r.prompt, return_offsets_mapping=True, add_special_tokens=not self.chat)
        cut = enc["offset_mapping"][tr[0] + keep][0] - r.text_chars[0]
        cut = max(1, min(cut, len(text) - 1))
        return text[:cut].rstrip() or text[:1]

    def encode_all(self, records: list[Record], split: str = "") -> list[Encoded]:
        """Encode a split, logging how many of its samples were dropped and why."""
        before, truncated, wli_cut = Counter(self.dropped), self.truncated, self.wli_cut
        out = [e for i, rec in enumerate(records) if (e := self.encode(rec, i)) is not None]
        now = self.dropped - before
        where = f"{split} " if split else ""
        if self.truncated > truncated:
            log.info(
                "shortened %d of %d %stexts to fit prompt.max_length=%d; dropped %d WLI pairs that lay in "
                "the cut part",
                self.truncated - truncated,
                len(records),
                where,
                self.max_length,
                self.wli_cut - wli_cut,
            )
        if now:
            log.warning("dropped %d of %d %ssamples: %s", sum(now.values()), len(records), where, dict(now))
        return out


def shorten(rec: Record, text: str) -> Record:
    """The record with its text cut to the prefix `text` and only the WLI pairs still inside it: a
    pair with offsets when it ends within the prefix, a pair without offsets when its span occurs in
    the prefix (one whose span never occurred verbatim is dropped by any cut)."""
    inside = [p for p in rec.wli if (p.span in text if p.end is None else p.end <= len(text))]
    return replace(rec, text=text, wli=tuple(inside))
