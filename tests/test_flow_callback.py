"""SaliencyFlowCallback inside real training runs: files (the analysis schema), skip without anchor,
DDP equality."""

from __future__ import annotations

import csv
import logging
import math

import pytest

from mre.flow.files import LAYER_COLUMNS, SAMPLE_COLUMNS
from mre.runner import run
from tests.test_train import small_cfg, train_cli

FAST = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "dataset.n_test=24",
    "flow.n_samples=16",
]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_flow_written_for_base_model_and_every_epoch(tmp_path):
    run(small_cfg(tmp_path, *FAST))
    flow = tmp_path / "flow"
    for name in (
        "epoch_-1.csv",
        "epoch_0.csv",
        "epoch_1.csv",
        "epoch_-1.png",
        "epoch_1.png",
        "evolution.png",
    ):
        assert (flow / name).exists(), name
    rows = read_csv(flow / "epoch_0.csv")
    assert list(rows[0]) == LAYER_COLUMNS  # the schema analyze.py writes
    assert [int(r["layer"]) for r in rows] == [0, 1]  # the 2-layer test model
    for r in rows:
        for m in ("S_wp", "S_pq", "S_ww"):
            v = float(r[m])
            assert int(r[f"{m}_n"]) == 16
            assert math.isfinite(v) and v >= 0
            assert 0 <= float(r[f"{m}_lo"]) <= v <= float(r[f"{m}_hi"])  # bootstrap: never below 0
    samples = read_csv(flow / "epoch_0_samples.csv")
    assert list(samples[0]) == SAMPLE_COLUMNS and len(samples) == 16 * 2
    for layer, r in enumerate(rows):  # the layer file summarizes the samples file
        vals = [float(x["S_pq"]) for x in samples if int(x["layer"]) == layer]
        assert float(r["S_pq"]) == pytest.approx(sum(vals) / len(vals), rel=1e-12)
    assert read_csv(flow / "epoch_-1.csv") != read_csv(flow / "epoch_1.csv"), "training changes the flow"
    assert any(float(r["S_pq"]) > 0 for r in rows)


def test_of_means_layer_file_is_the_ratio_of_the_raw_sample_means(tmp_path):
    run(small_cfg(tmp_path, *FAST, "trainer.max_epochs=1", "flow.normalize=of_means"))
    rows = read_csv(tmp_path / "flow" / "epoch_0.csv")
    samples = read_csv(tmp_path / "flow" / "epoch_0_samples.csv")
    for layer, r in enumerate(rows):
        means = {}
        for m in ("S_wp", "S_pq", "S_ww"):
            vals = [float(x[m]) for x in samples if int(x["layer"]) == layer]
            means[m] = sum(vals) / len(vals)
        total = sum(means.values())
        for m, mean in means.items():
            assert float(r[m]) == pytest.approx(mean / total, rel=1e-12)
            assert 0 <= float(r[f"{m}_lo"]) <= float(r[m]) <= float(r[f"{m}_hi"]) <= 1
        assert sum(float(r[m]) for m in means) == pytest.approx(1.0)
    sums = [sum(float(x[m]) for m in ("S_wp", "S_pq", "S_ww")) for x in samples]
    assert all(abs(t - 1) > 1e-3 for t in sums), "the samples file holds raw values, not shares"


def test_no_anchor_setting_skips_flow_without_failing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        metrics = run(small_cfg(tmp_path, *FAST, "with_anchor=false", "trainer.max_epochs=1"))
    assert "test/f1" in metrics
    assert not (tmp_path / "flow").exists()
    assert sum("S_wp and S_pq are undefined" in r.message for r in caplog.records) == 1


@pytest.mark.slow
def test_ddp_flow_equals_one_process(tmp_path):
    args = [*FAST, "trainer.max_epochs=1", "logger=csv", "direction=tli"]
    run(small_cfg(tmp_path / "one", *args))
    train_cli(tmp_path / "two", *args, "trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2")
    one = read_csv(tmp_path / "one" / "flow" / "epoch_-1.csv")
    two = read_csv(tmp_path / "two" / "flow" / "epoch_-1.csv")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a["S_ww_n"] == b["S_ww_n"] == "16"
        for m in ("S_wp", "S_pq", "S_ww", "S_pq_lo", "S_pq_hi"):
            assert float(a[m]) == pytest.approx(float(b[m]), rel=1e-6, abs=1e-12), m
