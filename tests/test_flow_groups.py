"""Flow by group (analyze.py flow.by_group=true, mre.analysis.flow_groups): the anchor's WLI pairs as
token ranges, group values against the whole-anchor flow, the summary and resuming."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mre.analysis import analyze
from mre.config import compose
from mre.setting import Direction, Setting
from tests.test_prompts import FIELDS, INSTR, builder, setup  # noqa: F401  (setup: the tokenizer fixture)
from tests.test_train import SMALL

FAST = [
    "flow.n_samples=12",
    "flow.batch_size=4",
    "flow.n_boot=100",
    "flow.n_examples=0",
    "flow.progress=false",
    "flow.by_group=true",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path: Path, direction: str, *extra: str):
    return compose(
        [
            *[o for o in SMALL if not o.startswith(("eval.", "callbacks."))],
            f"direction={direction}",
            "with_anchor=true",
            f"output_dir={tmp_path / direction}",
            f"paths.cache_dir={tmp_path}/c",
            *FAST,
            *extra,
        ],
        config_name="analyze",
    )


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_anchor_pairs_are_the_pairs_tokens(setup):  # noqa: F811
    tok, recs, labels, lang = setup
    b = builder(tok, labels, lang, "tli", True)
    assert b.setting == Setting(Direction.tli, True)
    seen = 0
    for i, rec in enumerate(recs[:60]):
        e = b.encode(rec, i)
        pairs = b.anchor_pairs(e.record)
        assert [(k, s) for k, s, _ in pairs] == [(p.type, p.span) for p in e.record.wli]
        a0, a1 = e.anchor_range
        for kind, span, (t0, t1) in pairs:
            assert a0 <= t0 < t1 <= a1
            text = tok.decode(e.prompt_ids[t0:t1])
            assert span in text and kind in text  # the pair's own tokens (a merged separator may join)
            seen += 1
    assert seen > 30
    assert builder(tok, labels, lang, "wli", True).anchor_pairs(recs[0]) == []


def test_wli_groups_hold_the_whole_anchor_flow(tmp_path):
    """direction wli: every group of a sample is the whole anchor, so its S_wp and S_pq are the flow's
    own (text sources, no rescaling), to float32 summation order."""
    res = analyze(_cfg(tmp_path, "wli"))
    out = tmp_path / "wli"
    flow = {(r["sample"], r["layer"]): r for r in _csv(out / "flow_samples.csv")}
    rows = _csv(out / "flow_groups.csv")
    assert rows and {r["kind"] for r in rows} == {"answer_type"}
    assert {r["sample"] for r in rows} == {s for s, _ in flow}
    for r in rows:
        f = flow[(r["sample"], r["layer"])]
        for m in ("S_wp", "S_pq"):
            assert float(r[m]) == pytest.approx(float(f[m]), rel=1e-4, abs=1e-9), (r, m)
        assert float(r["pq_share"]) == pytest.approx(1.0)
    summary = _csv(out / "flow_groups_summary.csv")
    assert summary and all(int(s["n"]) >= 3 for s in summary)
    for s in summary:
        assert float(s["S_pq_lo"]) <= float(s["S_pq"]) <= float(s["S_pq_hi"])
    assert (out / "flow_groups.png").exists() and res.groups.groups


def test_tli_groups_by_type_and_entity_and_resume(tmp_path):
    analyze(_cfg(tmp_path, "tli"))
    out = tmp_path / "tli"
    rows = _csv(out / "flow_groups.csv")
    assert {r["kind"] for r in rows} == {"wli_type", "entity"}
    share: dict[tuple[str, str], float] = {}
    for r in rows:
        assert 0.0 <= float(r["pq_share"]) <= 1.0 + 1e-9
        if r["kind"] == "wli_type":
            key = (r["sample"], r["layer"])
            share[key] = share.get(key, 0.0) + float(r["pq_share"])
    # the pairs cover the anchor but for separators (and a token shared by two pairs counts twice)
    assert all(0.3 < v < 1.3 for v in share.values()), sorted(share.values())[:3]

    full = (out / "flow_groups.csv").read_text()
    lines = full.splitlines(keepends=True)
    (out / "flow_groups.csv").write_text("".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:7])
    analyze(_cfg(tmp_path, "tli"))
    assert (out / "flow_groups.csv").read_text() == full
    # a restarted flow analysis (other settings) starts the groups over as well
    analyze(_cfg(tmp_path, "tli", "flow.sources=all_prior", "flow.restart=true"))
    assert (out / "flow_groups.csv").read_text() == full  # groups always use text sources
    analyze(_cfg(tmp_path, "tli", "flow.backend=blockwise", "flow.restart=true"))  # maps: from eager
    assert (out / "flow_groups.csv").read_text() == full
