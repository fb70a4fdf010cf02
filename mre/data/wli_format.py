"""WLI serialization: `type:span;type:span` by default (the paper's format), and its parser.

The parser is the exact inverse of the serializer on well-formed strings (types without the
key separator, spans and types without the pair separator), and it never raises on model output:
a malformed piece is skipped, so a half-broken generation still yields the pairs it can read.
"""

from __future__ import annotations

from dataclasses import dataclass

from mre.data.record import WLIPair


@dataclass(frozen=True)
class WLIFormat:
    """Separators of the serialized form; `empty` is written when a text has no pairs."""

    pair_sep: str = ";"
    kv_sep: str = ":"
    empty: str = "none"

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

    def is_well_formed(self, pairs: tuple[WLIPair, ...] | list[WLIPair]) -> bool:
        """True when `parse(serialize(pairs))` gives the pairs back (no separators inside fields)."""
        for p in pairs:
            if self.kv_sep in p.type or self.pair_sep in p.type or self.pair_sep in p.span:
                return False
            if p.type != p.type.strip() or p.span != p.span.strip() or not p.type or not p.span:
                return False
        return True
