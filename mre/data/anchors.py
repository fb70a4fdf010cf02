"""Control anchors (`anchor_kind=shuffled|random`): what the anchor holds when it is not the record's
own other-level information.

A gain of `text + WLI -> TLI` over `text -> TLI` can come from the WLI's information, or merely from a
longer prompt or the anchor's format. The controls separate the two:

* `shuffled`: the gold anchor of another record of the same split whose text label differs (for
  both directions: a WLI anchor then comes from a text of another class, a TLI anchor is a wrong
  label), of the closest token length. Same format and length, wrong information.
* `random`: random vocabulary words, as many tokens as the gold anchor (checked by tokenizing; a
  mismatch, rare, is counted and logged). Same length, no format, no information.

Every choice is a function of the split's record ids and labels (a stable hash of the id, as the
id-hash splits), so every run, seed and process of a setting sees the same control anchors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from mre.data.record import Record
from mre.errors import UserError
from mre.setting import AnchorKind

log = logging.getLogger(__name__)

MAX_ADJUST = 12  # word additions/removals tried to hit the gold anchor's token length


class ControlAnchorError(UserError, ValueError):
    """A control anchor cannot be built (e.g. a split with one distinct anchor)."""


def stable_int(key: str, salt: str) -> int:
    """A 64-bit integer of (salt, key), the same on every machine and process (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(f"{salt}\0{key}".encode()).digest()[:8], "little")


def shuffled_anchors(
    records: Sequence[Record], gold: Callable[[Record], str], length: Callable[[str], int], split: str
) -> dict[str, str]:
    """Record id -> the gold anchor of another record of `records` whose text label differs (in a
    split with one label: whose anchor differs), of the closest token length (`length`): the control
    then changes the information, not the prompt's length, and drops no other samples."""
    ordered = sorted(records, key=lambda r: r.id)
    anchors = {r.id: gold(r) for r in ordered}
    one_label = len({r.tli for r in ordered}) < 2

    def group(r: Record) -> str | None:  # a donor must belong to another group
        return anchors[r.id] if one_label else r.tli

    lengths = {r.id: length(anchors[r.id]) for r in ordered}
    table: dict[int, dict[str | None, list[Record]]] = {}
    for r in ordered:
        table.setdefault(lengths[r.id], {}).setdefault(group(r), []).append(r)
    out = {}
    for r in ordered:
        n = lengths[r.id]
        for d in sorted({abs(k - n) for k in table}):  # the nearest lengths first
            donors = [
                g for k in sorted({n - d, n + d}) for key, g in table.get(k, {}).items() if key != group(r)
            ]
            total = sum(len(g) for g in donors)
            if total:
                out[r.id] = anchors[_nth(donors, stable_int(r.id, "shuffled") % total).id]
                break
        else:
            raise ControlAnchorError(
                f"anchor_kind=shuffled: every record of the {split} split has the same anchor "
                f"({anchors[r.id]!r}), so no other record's anchor can replace it"
            )
    return out


def _nth(groups: list[list[Record]], k: int) -> Record:
    """The k-th record of the groups laid end to end."""
    for g in groups:
        if k < len(g):
            return g[k]
        k -= len(g)
    raise IndexError(k)


def _word_pool(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Vocabulary words (letters only, not special) that tokenize, after a space, to the fewest tokens
    any such word does (one, for the usual BPE and SentencePiece vocabularies)."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    decoded = tokenizer.batch_decode([[i] for i in ids])
    words = sorted({w for d in decoded if (w := d.strip()).isalpha() and len(w) >= 2})
    if not words:
        raise ControlAnchorError(
            f"anchor_kind=random: tokenizer {type(tokenizer).__name__} has no word tokens to draw from"
        )
    lengths = [len(ids) for ids in tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]]
    shortest = min(lengths)
    return [w for w, n in zip(words, lengths, strict=True) if n == shortest]


def _n_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Tokens of an anchor as the prompt writes it: after the field name and a space."""
    return len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])


def random_anchor(tokenizer: PreTrainedTokenizerBase, pool: list[str], n_tokens: int, key: str) -> str:
    """Random pool words, as many tokens as `n_tokens` where a few additions/removals reach it."""
    rng = np.random.default_rng(stable_int(key, "random"))
    words = list(rng.choice(pool, size=max(1, n_tokens)))
    for _ in range(MAX_ADJUST):
        n = _n_tokens(tokenizer, " ".join(words))
        if n == n_tokens:
            break
        if n < n_tokens:
            words.append(str(rng.choice(pool)))
        elif len(words) > 1:
            words.pop()
        else:
            break
    return " ".join(words)


def random_anchors(
    records: Sequence[Record], gold: Callable[[Record], str], tokenizer: PreTrainedTokenizerBase
) -> dict[str, str]:
    """Record id -> random words of the gold anchor's token length (mismatches are logged)."""
    pool = _word_pool(tokenizer)
    out, off = {}, []
    for r in records:
        target = _n_tokens(tokenizer, gold(r))
        out[r.id] = random_anchor(tokenizer, pool, target, r.id)
        if (n := _n_tokens(tokenizer, out[r.id])) != target:
            off.append(n - target)
    if off:
        log.info(
            "anchor_kind=random: %d of %d anchors differ from the gold anchor's length (mean %+.2f tokens)",
            len(off),
            len(records),
            float(np.mean(off)),
        )
    return out


def control_anchors(
    kind: AnchorKind,
    records: Sequence[Record],
    gold: Callable[[Record], str],
    tokenizer: PreTrainedTokenizerBase,
    split: str,
) -> dict[str, str]:
    """Record id -> control anchor of one split (empty for `gold`: the builder uses the record's own)."""
    if kind is AnchorKind.gold or not records:
        return {}
    if kind is AnchorKind.shuffled:
        return shuffled_anchors(records, gold, lambda a: _n_tokens(tokenizer, a), split)
    return random_anchors(records, gold, tokenizer)
