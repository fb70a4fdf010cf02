"""The typed analysis results read back from their files equal themselves (floats exactly: the
objects hold what the files hold), and the one CSV stream drops a torn last line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mre.analysis.flow_groups import FlowGroups, GroupFlow
from mre.analysis.flow_run import FlowAnalysis
from mre.analysis.knockout_run import RESULT_COLUMNS, KnockoutEffects
from mre.flow.files import summarize
from mre.results import StreamFileError, append_stream_csv, read_stream_csv, write_stream_csv

META = {
    "subject": "/runs/x",
    "dataset": "synthetic_en",
    "direction": "tli",
    "with_anchor": True,
    "model": "m",
}


def test_flow_analysis_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    values = {m: rng.random((7, 3)) / 3 for m in ("S_wp", "S_pq", "S_ww")}
    groups = FlowGroups((GroupFlow("wli_type", "PER", 5, {k: rng.random() for k in _group_keys()}),))
    first = FlowAnalysis({**META, "n_layers": 3}, summarize(values, 50, 0), groups)
    first.write(tmp_path / "a")
    back = FlowAnalysis.read(tmp_path / "a")
    assert back == first and back.n == 7 and back.name.endswith("| m")
    back.write(tmp_path / "b")
    assert (tmp_path / "b" / "flow.csv").read_bytes() == (tmp_path / "a" / "flow.csv").read_bytes()
    assert "| 0 |" in back.markdown() and "PER" in back.markdown()
    other = FlowAnalysis(back.meta, {**back.stats, "S_wp": summarize(values, 50, 1)["S_wp"]}, groups)
    assert other != back


def _group_keys() -> list[str]:
    return [f"{m}{s}" for m in ("S_wp", "S_pq", "pq_share") for s in ("", "_lo", "_hi")]


def _knockout_dir(path: Path) -> Path:
    path.mkdir()
    meta = {"subject": "/runs/x", "seed": 42, "title": "t", "n_boot": 100, "n_perm": 200}
    (path / "knockout_meta.json").write_text(json.dumps(meta))
    rows = [
        ["text_anchor", "first:1", "0", "knockout", "baseline", 12, 13.25, 0.5, 0.4, -0.1, -0.2, 0.01,
         0.3, "", 0.1 / 3, -0.2, 0.3],
        ["text_anchor", "first:1", "0", "receiver", "baseline", 12, 13.25, 0.5, 0.45, -0.05, -0.1, 0.01,
         0.3, "", 0.02, -0.2, 0.3],
        ["text_anchor", "first:1", "0", "knockout", "random:text_anchor@first:1", 12, 13.25, 0.45, 0.4,
         -0.05, -0.1, 0.0, 0.009950248756218905, 0.0199, 1e-17, -0.2, 0.3],
        ["text_anchor", "first:1", "0", "knockout", "receiver:text_anchor@first:1", 12, 13.25, 0.45, 0.4,
         -0.05, -0.1, 0.0, 0.2, 0.25, 0.01, -0.2, 0.3],
    ]  # fmt: skip
    with open(path / "knockout.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(RESULT_COLUMNS)
        w.writerows(rows)
    return path


def test_knockout_effects_round_trip(tmp_path: Path):
    first = KnockoutEffects.read(_knockout_dir(tmp_path / "a"))
    assert first.effects[0].d_logp == 0.1 / 3 and first.effects[2].f1.p_adj == 0.0199
    assert [e.condition.name for e in first.effects] == [
        "text_anchor@first:1",
        "receiver:text_anchor@first:1",
    ] + ["text_anchor@first:1"] * 2
    assert [e.reference for e in first.effects][2:] == [
        "random:text_anchor@first:1",
        "receiver:text_anchor@first:1",
    ]
    assert "| receiver | baseline |" in first.markdown()
    first.write(tmp_path / "b")
    assert KnockoutEffects.read(tmp_path / "b") == first
    assert (tmp_path / "b" / "knockout.csv").read_bytes() == (tmp_path / "a" / "knockout.csv").read_bytes()
    assert "≤" in first.markdown()  # p at the permutation floor 2 / (n_perm + 1)


def test_flow_groups_round_trip(tmp_path: Path):
    groups = FlowGroups(
        tuple(GroupFlow("entity", g, 3 + i, {k: 1 / (7 + i + len(k)) for k in _group_keys()}) for i, g in
              enumerate(["Tokyo", "a,b \"q\""]))
    )  # fmt: skip
    groups.write(tmp_path)
    assert FlowGroups.read(tmp_path) == groups


def test_stream_csv_drops_a_torn_line_and_refuses_other_columns(tmp_path: Path):
    path = tmp_path / "s.csv"
    cols = ["id", "x"]
    write_stream_csv(path, cols, [{"id": "a", "x": "1"}])
    append_stream_csv(path, cols, [{"id": "b\r\nc", "x": "2"}, {"id": "d", "x": "3"}])
    assert [r["id"] for r in read_stream_csv(path, cols)] == ["a", "b\r\nc", "d"]
    path.write_bytes(path.read_bytes()[:-3])  # a writer killed mid-line
    assert [r["id"] for r in read_stream_csv(path, cols)] == ["a", "b\r\nc"]
    with pytest.raises(StreamFileError):
        read_stream_csv(path, ["id", "y"])
