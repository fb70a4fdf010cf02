"""The comparisons a sweep is read for: the paper's Tables 2-4 and the control-anchor studies.

Table 2 (WLI F1: text only vs text + TLI), Table 3 (TLI F1: text only vs text + WLI), Table 4
(few-shot F1: manual verbalizer vs knowledgeable verbalizer), and per direction and control anchor
kind (shuffled, random) the control against no anchor and the gold anchor against the control. A
study is named by its `key` (the file stem of its table); its labels are for display only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mre.analysis.runs import Run
from mre.setting import AnchorKind, Direction, Setting

ANCHOR_KEYS = ("with_anchor", "anchor_kind")


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    kind: Direction  # the answers' level: how F1 is computed from predictions.jsonl
    compare: tuple[str, ...]  # config keys/prefixes that define the two sides
    label_a: str
    label_b: str
    select: Callable[[Run], bool]
    side: Callable[[Run], str | None]  # "a" | "b" | None
    anchored: bool = True  # the b side has an anchor: flow strength, flow grid, known-answer check
    figure: str | None = None  # the flow grid's file stem (None: no grid)
    known_answer: bool = False  # gold anchor vs none: the planted-strength check applies
    control: AnchorKind | None = None  # a control-anchor study: shown only when such runs exist
    vs_no_anchor: bool = False  # the a side has no anchor: a row's gain is the anchor's (flow vs gain)


def _generative(direction: Direction, kinds: tuple[AnchorKind | None, ...]) -> Callable[[Run], bool]:
    """Generative runs of a direction whose anchor is one of `kinds` (None: no anchor)."""

    def select(r: Run) -> bool:
        if r.get("task") != "generative":
            return False
        s = Setting.from_flat(r.flat)
        return s.direction is direction and (s.anchor if s.with_anchor else None) in kinds

    return select


def has_anchor(run: Run, kind: AnchorKind) -> bool:
    s = Setting.from_flat(run.flat)
    return s.with_anchor and s.anchor is kind


def _anchor_side(b_kind: AnchorKind) -> Callable[[Run], str | None]:
    """b: the `b_kind` anchor; a: the other side of the study (no anchor, or another kind)."""

    def side(r: Run) -> str:
        return "b" if has_anchor(r, b_kind) else "a"

    return side


def _kv_side(r: Run) -> str | None:
    return {"manual": "a", "knowledgeable": "b"}.get(str(r.get("verbalizer.kind")))


def _anchor_label(direction: Direction, kind: AnchorKind | None) -> str:
    level = Setting(direction, True).anchor_level
    if kind is None:
        return "Text only"
    return f"Text + {level}" if kind is AnchorKind.gold else f"Text + {kind.value} {level}"


def _anchor_study(key: str, title: str, direction: Direction, a: AnchorKind | None, b: AnchorKind) -> Study:
    """F1 of the `direction` output with anchor kind `b` against `a` (None: without an anchor)."""
    compare = ANCHOR_KEYS if a is None else ("anchor_kind",)
    main = a is None and b is AnchorKind.gold  # the paper's Table 2 or 3
    # a grid of the b side's flow; against gold (b) the main table already draws it
    figure = f"flow_grid_{direction.value}" if main else (f"flow_grid_{key}" if a is None else None)
    control = next((k for k in (a, b) if k not in (None, AnchorKind.gold)), None)
    return Study(
        key, title, direction, compare, _anchor_label(direction, a), _anchor_label(direction, b),
        _generative(direction, (a, b)), _anchor_side(b), True, figure, known_answer=main, control=control,
        vs_no_anchor=a is None,
    )  # fmt: skip


def _control_studies() -> list[Study]:
    """Per direction and control kind: the control against no anchor (does a longer prompt or the
    anchor's format help?) and the gold anchor against the control (does the information help?)."""
    out = []
    for d in (Direction.wli, Direction.tli):
        for k in (AnchorKind.shuffled, AnchorKind.random):
            lk, lg, ln = (_anchor_label(d, x) for x in (k, AnchorKind.gold, None))
            name = f"Control ({d.value.upper()} F1)"
            out.append(_anchor_study(f"control_{d.value}_{k.value}", f"{name}: {ln} vs {lk}", d, None, k))
            out.append(
                _anchor_study(
                    f"control_{d.value}_{k.value}_vs_gold", f"{name}: {lk} vs {lg}", d, k, AnchorKind.gold
                )
            )
    return out


STUDIES: dict[str, Study] = {
    s.key: s
    for s in (
        _anchor_study(
            "table2_wli", "Table 2: WLI F1, text only vs text + TLI", Direction.wli, None, AnchorKind.gold
        ),
        _anchor_study(
            "table3_tli", "Table 3: TLI F1, text only vs text + WLI", Direction.tli, None, AnchorKind.gold
        ),
        Study(
            "table4_kv",
            "Table 4: few-shot TLI F1, without KV (manual verbalizer) vs KV (knowledgeable verbalizer)",
            Direction.tli,
            ("verbalizer",),
            "without KV",
            "KV",
            lambda r: r.get("task") == "fewshot",
            _kv_side,
            anchored=False,
        ),
        *_control_studies(),
    )
}
