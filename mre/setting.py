"""The MRE setting of a run: which level is the output and whether the other level is in the input.

The four settings of the paper are `Setting(Direction.wli, False)` (text -> WLI),
`Setting(Direction.wli, True)` (text + TLI -> WLI), `Setting(Direction.tli, False)` (text -> TLI)
and `Setting(Direction.tli, True)` (text + WLI -> TLI). Code asks the setting (`setting.is_tli`,
`setting.with_anchor`), never compares direction strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mre.errors import ConfigError


class StrEnum(str, Enum):
    """An enum that prints as its value, so `${direction.name}` interpolates to `wli`."""

    def __str__(self) -> str:
        return str(self.value)


class Direction(StrEnum):
    """The output level: word-level pairs (`wli`) or the text label (`tli`)."""

    wli = "wli"
    tli = "tli"


class AnchorKind(StrEnum):
    """What the anchor holds. `gold`: the record's own other-level information; the controls, which
    tell "the other level's information helps" from "a longer prompt or the anchor's format helps":
    `shuffled`, the anchor of another record with a different text label (same format, wrong
    information); `random`, random words of the gold anchor's token length (`mre.data.anchors`)."""

    gold = "gold"
    shuffled = "shuffled"
    random = "random"


@dataclass(frozen=True)
class Setting:
    """Output level, anchor on/off and the anchor's kind; built once from the config."""

    direction: Direction
    with_anchor: bool
    anchor: AnchorKind = AnchorKind.gold

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(str(self.direction)))
        object.__setattr__(self, "anchor", AnchorKind(str(self.anchor)))
        if not isinstance(self.with_anchor, bool):
            raise ConfigError(f"with_anchor must be a bool, got {self.with_anchor!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> Setting:
        """The setting of a composed config (`direction.name`, `with_anchor`, `anchor_kind`)."""
        kind = cfg.get("anchor_kind", AnchorKind.gold)  # configs saved before control anchors existed
        return cls(Direction(str(cfg.direction.name)), bool(cfg.with_anchor), AnchorKind(str(kind)))

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> Setting:
        """The setting of a flattened run config (dotted keys), as the sweep analysis reads it."""
        kind = AnchorKind(str(flat.get("anchor_kind", AnchorKind.gold)))
        return cls(Direction(str(flat["direction.name"])), bool(flat["with_anchor"]), kind)

    @property
    def is_tli(self) -> bool:
        return self.direction is Direction.tli

    @property
    def is_wli(self) -> bool:
        return self.direction is Direction.wli

    @property
    def anchor_level(self) -> str:
        """The level the anchor carries: the other one."""
        return "WLI" if self.is_tli else "TLI"

    def describe(self) -> str:
        """`text + WLI -> TLI` style, as the paper writes the settings (`text + shuffled WLI -> TLI`
        for a control anchor)."""
        control = "" if self.anchor is AnchorKind.gold else f"{self.anchor.value} "
        source = f"text + {control}{self.anchor_level}" if self.with_anchor else "text"
        return f"{source} -> {self.direction.value.upper()}"

    def without_anchor(self) -> Setting:
        return Setting(self.direction, False, self.anchor)
