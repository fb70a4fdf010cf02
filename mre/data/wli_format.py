"""WLI serialization: `type:span;type:span` by default (the paper's format), and its parser.

The parser is the exact inverse of the serializer on well-formed pairs (types without the key
separator, spans and types without the pair separator or a line break: `problem` says which field
is not, and readers refuse such rows), and it never raises on model output: a malformed piece is
skipped, so a half-broken generation still yields the pairs it can read. An answer is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from mre.data.record import WLIPair
from mre.errors import ConfigError


@dataclass(frozen=True)
class WLIFormat:
    """Separators of the serialized form; `empty` is written when a text has no pairs."""

    pair_sep: str = ";"
    kv_sep: str = ":"
    empty: str = "none"

    def __post_init__(self) -> None:
        """Answers are one line (generation stops at the first newline), so no separator may hold one."""
        for name in ("pair_sep", "kv_sep", "empty"):
            value = getattr(self, name)
            if not value or "\n" in value:
                raise ConfigError(
                    f"prompt.{name}={value!r}: expected a non-empty string without a line break (answers are "
                    "one line: generation stops at the first newline)"
                )

    def serialize(self, pairs: tuple[WLIPair, ...] | list[WLIPair]) -> str:
        """`type:span;type:span` in record order (the order is part of the target)."""
        if not pairs:
            return self.empty
        return self.pair_sep.join(f"{p.type}{self.kv_sep}{p.span}" for p in pairs)

    def parse(self, s: str) -> list[tuple[str, str]]:
        """Read (type, span) pairs; never raises. Splits each piece at its first key separator."""
        s = s.strip()
        if not s or s == self.empty:
            return []
        out: list[tuple[str, str]] = []
        for piece in s.split(self.pair_sep):
            typ, sep, span = piece.partition(self.kv_sep)
            typ, span = typ.strip(), span.strip()
            if sep and typ and span:
                out.append((typ, span))
        return out

    def problem(self, pairs: tuple[WLIPair, ...] | list[WLIPair]) -> str | None:
        """Why the pairs would not come back from `parse(serialize(pairs))`, or None: a separator or a
        line break inside a field would cut the pair in the gold answer and in predictions alike (a
        span may hold `kv_sep`: a piece is split at its first one). Readers make this a bad row."""
        for i, p in enumerate(pairs, 1):
            for name, value, forbidden in (
                ("type", p.type, (self.pair_sep, self.kv_sep, "\n")),
                ("span", p.span, (self.pair_sep, "\n")),
            ):
                sep = next((x for x in forbidden if x in value), None)
                if sep is not None:
                    return self._describe(sep, name, value, i)
        return None

    def _describe(self, sep: str, name: str, value: str, i: int) -> str:
        """The bad-row message: the reason first (readers count skips by it), then the field."""
        what, key, fix = {
            self.pair_sep: ("pair separator", "prompt.pair_sep", "set another prompt.pair_sep"),
            self.kv_sep: ("type/span separator", "prompt.kv_sep", "set another prompt.kv_sep"),
            "\n": ("line break", "", "answers are one line"),
        }[sep]
        contains = f"{key} {sep!r}" if key else "a line break"
        return (
            f"{what} in a WLI {name}: {name} {value!r} of pair {i} contains {contains}, which would cut "
            f"it in the serialized answer; expected a {name} without it (fix the data, or {fix})"
        )
