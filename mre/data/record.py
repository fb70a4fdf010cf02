"""The one record type every reader produces, and the bad-row policy shared by all readers.

A record is `{"id", "text", "tli", "wli": [{"type", "span", "start", "end"}]}` (see docs/design.md).
Readers never raise bare exceptions on bad rows: they go through `RowIssues`, which either
stops with a `DataFormatError` naming file, line and problem (`on_bad_row="error"`) or counts
the row as skipped with its reason (`on_bad_row="skip"`), so one policy governs every format.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mre.errors import UserError
from mre.setting import StrEnum

log = logging.getLogger(__name__)


class OnBadRow(StrEnum):
    """What a reader does with a bad row: stop naming it, or skip and count it (`dataset.on_bad_row`)."""

    error = "error"
    skip = "skip"


class DataFormatError(UserError, ValueError):
    """A source file does not match the format its reader expects."""


@dataclass(frozen=True)
class WLIPair:
    """One word-level item: an entity type and its surface span (char offsets when known)."""

    type: str
    span: str
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class Record:
    """One MRE-mix sample. `tli` is None for sources without a text-level label; `origin` says where
    it was read (`<file>, line <n>`), for errors found after reading."""

    id: str
    text: str
    tli: str | None
    wli: tuple[WLIPair, ...] = field(default_factory=tuple)
    origin: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Plain dict in the docs/design.md layout (what the project's own jsonl files hold)."""
        d = asdict(self)
        d.pop("origin")
        d["wli"] = [asdict(p) for p in self.wli]
        return d

    def where(self) -> str:
        return self.origin or f"record {self.id!r}"

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Record:
        """Inverse of `to_json`; raises KeyError/TypeError/ValueError on malformed input."""
        pairs = tuple(
            WLIPair(str(p["type"]), str(p["span"]), p.get("start"), p.get("end")) for p in obj.get("wli", [])
        )
        tli = obj.get("tli")
        return Record(str(obj["id"]), str(obj["text"]), None if tli is None else str(tli), pairs)


def check_record(rec: Record) -> str | None:
    """Return the problem with a record (empty text, span outside the text, ...) or None."""
    if not rec.text.strip():
        return "empty text"
    if rec.tli is not None and not rec.tli.strip():
        return "empty text label (use null for a record without one)"
    for p in rec.wli:
        if not p.type.strip():
            return f"empty type for span {p.span!r}"
        if not p.span:
            return f"empty span for type {p.type!r}"
        if p.start is None or p.end is None:
            continue
        if not (0 <= p.start < p.end <= len(rec.text)):
            return f"span [{p.start}, {p.end}) of {p.span!r} lies outside the text (length {len(rec.text)})"
        if rec.text[p.start : p.end] != p.span:
            return f"span [{p.start}, {p.end}) reads {rec.text[p.start : p.end]!r}, not {p.span!r}"
    return None


PairsCheck = Callable[[tuple[WLIPair, ...]], str | None]


class RowIssues:
    """Applies the bad-row policy for one file and keeps the skip counts per reason. `wli_check` is
    the answer format's check of a record's pairs (`WLIFormat.problem`): a pair it cannot serialize
    is a bad row like any other, named where it was read instead of cut silently later."""

    def __init__(
        self, path: str | Path, on_bad_row: OnBadRow = OnBadRow.error, wli_check: PairsCheck | None = None
    ) -> None:
        self.path = str(path)
        self.on_bad_row = OnBadRow(on_bad_row)  # a plain "skip" too; anything else is a ValueError
        self.wli_check = wli_check
        self.skipped: Counter[str] = Counter()

    def bad(self, line: int, problem: str) -> None:
        """Report a bad row at a 1-based line (or item) number: raise, or count it as skipped."""
        if self.on_bad_row is OnBadRow.error:
            raise DataFormatError(
                f"{self.path}, line {line}: {problem} (set dataset.on_bad_row=skip to skip such rows)"
            )
        self.skipped[problem.split(":")[0]] += 1

    def accept(self, line: int, rec: Record) -> Record | None:
        """Validate a parsed record; return it, or None when it was skipped."""
        problem = check_record(rec) or (self.wli_check and self.wli_check(rec.wli))
        if problem is None:
            return rec
        self.bad(line, problem)
        return None

    def report(self) -> None:
        """Log how many rows were skipped and why (once, after reading the file)."""
        if self.skipped:
            total = sum(self.skipped.values())
            reasons = ", ".join(f"{n} x {r}" for r, n in self.skipped.most_common())
            log.warning("%s: skipped %d bad rows (%s)", self.path, total, reasons)
