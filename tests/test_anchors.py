"""Control anchors (anchor_kind=shuffled|random): what they hold, their token length, the same test
ids for every anchor setting, the control tables of a sweep, and flow with a control anchor."""

from __future__ import annotations

import math
import random

import pytest

from mre.analysis import analyze
from mre.config import compose
from mre.data.anchors import ControlAnchorError, control_anchors, shuffled_anchors
from mre.data.context import build_context
from mre.data.prompts import PromptBuilder
from mre.setting import AnchorKind, Direction, Setting
from tests.test_prompts import FIELDS, INSTR, setup  # noqa: F401  (setup: the tokenizer fixture)
from tests.test_train import SMALL


def control_builder(setup, direction: str, kind: AnchorKind) -> PromptBuilder:  # noqa: F811
    tok, recs, labels, lang = setup
    setting = Setting(Direction(direction), True, kind)
    b = PromptBuilder(tok, setting, INSTR[direction], FIELDS[lang], labels)
    b.control = control_anchors(kind, recs[300:], b.gold_anchor, tok, "test")
    return b


@pytest.mark.parametrize("direction", ["wli", "tli"])
def test_shuffled_anchor_is_another_labels_gold_anchor(setup, direction):  # noqa: F811
    _, recs, _, _ = setup
    b = control_builder(setup, direction, AnchorKind.shuffled)
    test = recs[300:]
    by_label = {}
    for r in test:
        by_label.setdefault(r.tli, set()).add(b.gold_anchor(r))
    tok = b.tokenizer

    def length(a: str) -> int:
        return len(tok(" " + a, add_special_tokens=False)["input_ids"])

    same_length = 0
    for i, rec in enumerate(test):
        anchor = b.anchor_of(rec)
        same_length += length(anchor) == length(b.gold_anchor(rec))
        others = set().union(*(v for k, v in by_label.items() if k != rec.tli))
        assert anchor in others, rec.id
        if direction == "wli":
            assert anchor != rec.tli  # a wrong text label
        e = b.encode(rec, i)
        assert b.tokenizer.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == anchor
    shuffled = random.Random(0).sample(test, len(test))  # the choice does not depend on the order
    assert shuffled_anchors(shuffled, b.gold_anchor, length, "test") == b.control
    assert same_length >= 0.9 * len(test)  # the closest length: nearly always the same one
    if direction == "tli":  # WLI anchors: spread over many records
        assert len(set(b.control.values())) > len(test) // 4


def test_shuffled_needs_two_distinct_anchors(setup):  # noqa: F811
    _, recs, _, _ = setup
    same = [r for r in recs if r.tli == recs[0].tli][:5]
    with pytest.raises(ControlAnchorError, match="test split has the same anchor"):
        shuffled_anchors(same, lambda r: r.tli, len, "test")


@pytest.mark.parametrize("direction", ["wli", "tli"])
def test_random_anchor_has_the_gold_anchors_token_length(setup, direction):  # noqa: F811
    """In the prompt, token for token; measured exact on every held-out record for the tiny BPE and
    SentencePiece tokenizers, English and Japanese."""
    _, recs, labels, lang = setup
    tok = setup[0]
    b = control_builder(setup, direction, AnchorKind.random)
    gold = PromptBuilder(tok, Setting(Direction(direction), True), INSTR[direction], FIELDS[lang], labels)
    for i, rec in enumerate(recs[300:]):
        e, g = b.encode(rec, i), gold.encode(rec, i)
        assert e.anchor_range[1] - e.anchor_range[0] == g.anchor_range[1] - g.anchor_range[0], rec.id
        anchor = b.anchor_of(rec)
        assert all(w.isalpha() for w in anchor.split())  # vocabulary words (the gold label is one, rarely)
    again = control_anchors(AnchorKind.random, recs[300:], b.gold_anchor, tok, "test")
    assert again == b.control  # seeded by the record ids


@pytest.mark.parametrize("direction", ["tli", "wli"])
def test_every_anchor_setting_sees_the_same_test_ids(direction, tmp_path):
    """prompt.max_length=56 makes the anchor settings drop different samples (a shuffled anchor can be
    longer than the gold one): each run drops the union, so any two can be compared."""
    ids = {}
    for extra in ("with_anchor=false", "anchor_kind=gold", "anchor_kind=shuffled", "anchor_kind=random"):
        cfg = compose(
            [*SMALL, f"direction={direction}", "prompt.max_length=56", extra, f"paths.cache_dir={tmp_path}"]
        )
        ctx = build_context(cfg)
        ids[extra] = sorted(ctx.splits.test[e.index].id for e in ctx.encoded["test"])
    assert all(v == ids["with_anchor=false"] for v in ids.values())
    assert len(ids["with_anchor=false"]) > 0


def test_describe_names_the_control():
    assert Setting(Direction.tli, True, AnchorKind.shuffled).describe() == "text + shuffled WLI -> TLI"
    assert Setting(Direction.wli, True, AnchorKind.random).describe() == "text + random TLI -> WLI"
    assert Setting(Direction.wli, False, AnchorKind.random).describe() == "text -> WLI"


def test_flow_with_a_control_anchor(tmp_path):
    """The base-model flow analysis with a shuffled anchor: S_wp and S_pq are measured as for gold."""
    out = tmp_path / "flow"
    cfg = compose(
        [*[o for o in SMALL if not o.startswith(("eval.", "callbacks."))], "direction=tli",
         "anchor_kind=shuffled", f"output_dir={out}", f"paths.cache_dir={tmp_path}/c", "flow.n_samples=8",
         "flow.batch_size=4", "flow.n_boot=50", "flow.n_examples=0", "flow.progress=false"],
        config_name="analyze",
    )  # fmt: skip
    res = analyze(cfg)
    assert all(n == 8 for n in res.stats["S_pq"].n)
    for name in ("S_wp", "S_pq", "S_ww"):
        assert all(math.isfinite(v) and v >= 0 for v in res.stats[name].mean), name
    # the last layer's anchor rows do not reach the loss (only q's row does): S_wp is 0 there
    assert res.stats["S_wp"].mean[0] > 0 and all(v > 0 for v in res.stats["S_pq"].mean)
