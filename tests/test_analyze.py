"""analyze.py: flow of a trained run (files, resume after a kill), a base model, and a sweep's tables,
seed-aware intervals, report, missing runs, mismatched test sets and the known-answer check; the
experiment configs. The statistics themselves: tests/test_stats.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mre.analysis import AnalysisError, analyze
from mre.config import compose
from mre.flow.files import summarize
from mre.results import read_jsonl, write_jsonl
from mre.stats import MismatchedTestSetError
from tests.conftest import REPO
from tests.test_train import SMALL

# the sweep every sweep test reads: text -> TLI vs text + WLI -> TLI, 1 epoch, tiny model
SWEEP_ARGS = [
    *SMALL,
    "direction=tli",
    "with_anchor=false,true",
    "trainer.max_epochs=1",
    "logger=csv",
    "flow.n_samples=16",
    "trainer.enable_progress_bar=false",
]
FLOW_FAST = [
    "flow.n_samples=24",
    "flow.batch_size=4",
    "flow.n_boot=200",
    "flow.n_examples=2",
    "flow.progress=false",
]


def _env() -> dict[str, str]:
    # one thread: these models are tiny, and OpenMP threads only contend on a busy CI machine
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process passes on one thread, like the subprocesses (OMP_NUM_THREADS=1): float32 sums then
    add up in the same order in both, so a resumed analysis can be compared bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def analyze_cfg(*overrides: str):
    return compose(list(overrides), config_name="analyze")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 2-run multirun (train.py -m) with TLI with and without the WLI anchor."""
    root = tmp_path_factory.mktemp("sweep") / "multirun"
    cmd = [sys.executable, "train.py", "-m", *SWEEP_ARGS, f"hydra.sweep.dir={root}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-4000:]
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(runs) == 2 and all((r / "metrics.json").exists() for r in runs)
    # a job directory says what the sweep varied; the many fixed overrides are cut
    assert [r.name for r in runs] == ["0_with_anchor-False", "1_with_anchor-True"]
    return root


def _run(sweep: Path, anchor: bool) -> Path:
    """The sweep's job with (or without) the anchor, found by its saved config."""
    return next(
        p
        for p in sorted(sweep.iterdir())
        if (p / ".hydra" / "config.yaml").exists()
        and OmegaConf.load(p / ".hydra" / "config.yaml").with_anchor == anchor
    )


def _copy(sweep: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(sweep, dst, ignore=shutil.ignore_patterns("analysis", "checkpoints", "wandb"))
    return dst


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# sweep mode
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_cli_builds_tables_figure_and_report(sweep):
    out = subprocess.run(
        [sys.executable, "analyze.py", f"sweep_dir={sweep}", "sweep.n_boot=300"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Table 3: TLI F1" in out.stdout
    an = sweep / "analysis"
    for name in ("table3_tli.md", "table3_tli.csv", "report.md", "flow_grid_tli.png"):
        assert (an / name).exists(), name
    assert not (an / "table2_wli.md").exists()  # no WLI run in this sweep
    rows = read_csv(an / "table3_tli.csv")
    assert len(rows) == 1
    row = rows[0]
    assert row["dataset.name"] == "synthetic_en"
    metrics = {a: json.loads((_run(sweep, a) / "metrics.json").read_text()) for a in (False, True)}
    assert float(row["f1_a"]) == pytest.approx(metrics[False]["test/f1"], abs=1e-5)
    assert float(row["f1_b"]) == pytest.approx(metrics[True]["test/f1"], abs=1e-5)
    assert float(row["majority_f1"]) == pytest.approx(metrics[False]["test/majority_f1"], abs=1e-6)
    # one epoch of a tiny model: both runs answer one class for every test text (the case), so
    # the row says so instead of a Δ of two majority baselines with an interval
    assert all(m["test/collapsed"] == 1.0 for m in metrics.values())
    assert row["both_collapsed"] == "True" and row["diff"] == row["ci_lo"] == row["n"] == ""
    assert (row["collapsed_a"], row["collapsed_b"]) == ("1", "1")
    assert row["s_pq_b"] and float(row["s_pq_b"]) > 0  # from the with-anchor run's flow/ CSV
    report = (an / "report.md").read_text()
    assert "## Table 3: TLI F1, text only vs text + WLI" in report
    assert "![flow_grid_tli](flow_grid_tli.png)" in report
    assert "hierarchical bootstrap" in report and "p (BH)" in report and "## Runs" in report
    assert "| both collapsed |" in report
    for run in sweep.iterdir():
        if run.is_dir() and run.name != "analysis":
            assert f"(<../{run.name}/.hydra/config.yaml>)" in report  # every run's config linked
    assert "Missing runs" not in report


def test_missing_runs_are_listed_and_tables_use_the_finished_ones(sweep, tmp_path):
    from mre.analysis.sweep_run import analyze_sweep

    s = _copy(sweep, tmp_path)
    (_run(s, True) / "metrics.json").unlink()  # failed / killed run
    res = analyze_sweep(s)
    assert [r.name for r in res.unfinished] == [_run(s, True).name]
    row = res.tables["table3_tli"].rows[0]
    assert row.f1_a is not None and row.f1_b is None and not row.compared
    assert "not finished" in row.note
    report = (s / "analysis" / "report.md").read_text()
    assert "## Missing runs" in report and "no metrics.json" in report
    # a job of the sweep that never started (a basic-sweeper multirun stops at its first failure)
    shutil.rmtree(_run(s, True))
    res = analyze_sweep(s)
    assert len(res.missing) == 1 and "with_anchor=true" in res.missing[0].lower()
    assert "no Text + WLI run" in res.tables["table3_tli"].rows[0].note
    assert "never started: `" in (s / "analysis" / "report.md").read_text()


def test_sweep_can_compute_the_flow_of_its_runs(sweep, tmp_path):
    from mre.analysis.sweep_run import analyze_sweep
    from mre.config import SweepOptions
    from mre.flow.options import FlowAnalysisConfig

    s = _copy(sweep, tmp_path)
    fo = FlowAnalysisConfig(n_samples=8, n_examples=0, n_boot=50, progress=False)
    res = analyze_sweep(s, opts=SweepOptions(compute_flow=True, n_boot=100), flow_opts=fo)
    assert (_run(s, True) / "analysis" / "flow.csv").exists()
    assert not (_run(s, False) / "analysis").exists()  # no anchor: nothing to measure
    assert res.tables["table3_tli"].rows[0].flow_source == "analysis/flow.csv"


def test_mismatched_test_ids_are_refused(sweep, tmp_path):
    from mre.analysis.sweep_run import analyze_sweep
    from mre.config import SweepOptions

    s = _copy(sweep, tmp_path)
    pred = _run(s, True) / "predictions.jsonl"
    rows = read_jsonl(pred)
    rows[0]["id"] = "some-other-sample"
    write_jsonl(pred, rows)
    with pytest.raises(MismatchedTestSetError, match="test sets differ") as e:
        analyze_sweep(s)
    assert "some-other-sample" in str(e.value) and "run #" in str(e.value)
    res = analyze_sweep(s, opts=SweepOptions(on_mismatch="skip"))
    row = res.tables["table3_tli"].rows[0]
    assert row.refused and not row.compared
    assert "**refused**" in (s / "analysis" / "report.md").read_text()


# --------------------------------------------------------------------------------------------------
# run_dir mode
# --------------------------------------------------------------------------------------------------


def test_run_dir_analysis_writes_every_file(sweep, tmp_path):
    run = _run(sweep, True)
    assert run.name.startswith("1_")
    out = tmp_path / "an"
    res = analyze(analyze_cfg(f"run_dir={sweep}/1", f"output_dir={out}", *FLOW_FAST))  # job 1 by number
    for name in ("flow_samples.csv", "flow.csv", "flow.png", "flow_meta.json"):
        assert (out / name).exists(), name
    examples = sorted((out / "examples").glob("*.png"))
    assert len(examples) == 2 and all(p.with_suffix(".csv").exists() for p in examples)
    samples = read_csv(out / "flow_samples.csv")
    assert len(samples) == 24 * 2 and len({r["id"] for r in samples}) == 24  # 2 layers per sample
    flow = read_csv(out / "flow.csv")
    assert [int(r["layer"]) for r in flow] == [0, 1]
    for r in flow:
        for m in ("S_wp", "S_pq", "S_ww"):
            assert int(r[f"{m}_n"]) == 24
            assert float(r[f"{m}_lo"]) <= float(r[m]) <= float(r[f"{m}_hi"])
            assert float(r[f"{m}_std"]) >= 0
    assert float(flow[0]["S_pq"]) > 0
    # the per-layer means are the means of the per-sample rows
    s_pq0 = np.mean([float(r["S_pq"]) for r in samples if r["layer"] == "0"])
    assert float(flow[0]["S_pq"]) == pytest.approx(s_pq0, rel=1e-12)
    ex = read_csv(examples[0].with_suffix(".csv"))
    assert {r["part"] for r in ex} == {"text->anchor", "anchor->q"}
    assert res.n == 24
    # the run's own files are untouched (the analysis config goes elsewhere)
    assert OmegaConf.load(run / ".hydra" / "config.yaml").task == "generative"


@pytest.mark.slow
def test_killed_analysis_resumes_to_the_same_result(sweep, tmp_path):
    run = _run(sweep, True)
    args = [
        "flow.n_samples=64",
        "flow.batch_size=2",
        "flow.n_boot=200",
        "flow.n_examples=0",
        "flow.progress=false",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    analyze(analyze_cfg(f"run_dir={run}", f"output_dir={full}", *args))

    cmd = [sys.executable, "analyze.py", f"run_dir={run}", f"output_dir={killed}", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=_env(),
    )
    samples = killed / "flow_samples.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_text().count("\n") > 1 + 2 * 4:  # > 4 samples in
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the analysis ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "flow.csv").exists()
    n_before = samples.read_text().count("\n") - 1
    assert 0 < n_before < 64 * 2

    analyze(analyze_cfg(f"run_dir={run}", f"output_dir={killed}", *args))
    assert (killed / "flow_samples.csv").read_text() == (full / "flow_samples.csv").read_text()
    assert (killed / "flow.csv").read_text() == (full / "flow.csv").read_text()

    # a torn last line (killed mid-write) is dropped and recomputed
    text = (full / "flow_samples.csv").read_text()
    torn = tmp_path / "torn"
    torn.mkdir()
    shutil.copy(full / "flow_meta.json", torn / "flow_meta.json")
    (torn / "flow_samples.csv").write_text(text[: len(text) // 2 + 7])
    analyze(analyze_cfg(f"run_dir={run}", f"output_dir={torn}", *args))
    assert (torn / "flow.csv").read_text() == (full / "flow.csv").read_text()


def _predict_codes(subject) -> dict[str, str]:
    """TLI predictions of a loaded run (arg-max over the code tokens at q), as the run scored them."""
    import torch

    from mre.data.batches import Collator

    ctx, model = subject.context, subject.model
    items = ctx.items("test")
    batch = Collator(ctx.tokenizer.pad_token_id)(items)
    with torch.no_grad():
        logits = model(
            input_ids=batch["prompt_ids"],
            attention_mask=batch["prompt_mask"],
            position_ids=batch["prompt_position_ids"],
        ).logits[:, -1]
    preds = logits[:, ctx.builder.code_ids].argmax(-1).tolist()
    recs = ctx.records("test")
    return {recs[e.index].id: ctx.labels[p] for e, p in zip(items, preds, strict=True)}


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_llama_lora"])
def test_loaded_run_reproduces_its_predictions(sweep, tmp_path, model):
    """The model analyze.py loads (full weights, or LoRA adapters on the rebuilt base) is the trained one."""
    from mre.analysis.flow_run import load_run
    from mre.runner import run as train_run
    from tests.test_train import small_cfg

    if model == "tiny_llama":
        run_dir = _run(sweep, True)
    else:
        run_dir = tmp_path / "lora"
        cfg = small_cfg(
            run_dir, "model=tiny_llama_lora", "direction=tli", "trainer.max_epochs=1", "flow.enabled=false"
        )
        train_run(cfg)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what Hydra writes for a CLI run
        assert (run_dir / "model" / "adapter_config.json").exists()
    subject = load_run(run_dir, device="cpu")
    expected = {r["id"]: r["prediction"] for r in read_jsonl(run_dir / "predictions.jsonl")}
    assert _predict_codes(subject) == expected


def test_resume_with_other_settings_is_refused(sweep, tmp_path):
    run = _run(sweep, True)
    out = tmp_path / "an"
    args = [
        f"run_dir={run}",
        f"output_dir={out}",
        "flow.n_samples=8",
        "flow.n_examples=0",
        "flow.progress=false",
    ]
    analyze(analyze_cfg(*args))
    with pytest.raises(AnalysisError, match=r"other settings .*sources.*flow\.restart=true"):
        analyze(analyze_cfg(*args, "flow.sources=all_prior"))
    analyze(analyze_cfg(*args, "flow.sources=all_prior", "flow.restart=true"))
    assert json.loads((out / "flow_meta.json").read_text())["engine"]["sources"] == "all_prior"


def test_unfinished_or_fewshot_run_dir_says_what_to_do(sweep, tmp_path):
    s = _copy(sweep, tmp_path)
    run = _run(s, True)
    shutil.rmtree(run / "model")
    with pytest.raises(AnalysisError, match=r"no model/ directory.*python train.py resume="):
        analyze(analyze_cfg(f"run_dir={run}", *FLOW_FAST))
    with pytest.raises(AnalysisError, match=r"not a train\.py run directory"):
        analyze(analyze_cfg(f"run_dir={tmp_path}", *FLOW_FAST))


KNOCK = [
    "knockout.layers=[first:1,last:1]",
    "knockout.n_samples=12",
    "knockout.batch_size=4",
    "knockout.n_boot=200",
    "knockout.n_perm=200",
    "knockout.progress=false",
]


def test_knockout_of_a_run_writes_effects_and_resumes(sweep, tmp_path):
    run = _run(sweep, True)
    out = tmp_path / "ko"
    res = analyze(analyze_cfg(f"run_dir={run}", f"output_dir={out}", *KNOCK))
    rows = read_csv(out / "knockout.csv")
    # 2 layer specs x 2 edge sets: knockout and both controls vs the baseline, then knockout vs each control
    assert len(rows) == 20 and len(res.effects) == 20
    assert {r["reference"] for r in rows} == {
        "baseline",
        *(f"{c}:{e}@{s}" for c in ("random", "receiver") for e in ("text_anchor", "anchor_q")
          for s in ("first:1", "last:1")),
    }  # fmt: skip
    receiver = next(r for r in rows if r["condition"] == "receiver" and r["edges"] == "anchor_q")
    assert float(receiver["blocked_per_sample"]) > 0
    assert (out / "knockout.png").stat().st_size > 0 and "| p (BH) |" in (out / "knockout.md").read_text()
    assert json.loads((out / "knockout_meta.json").read_text())["n_layers"] == 2  # places it in depth
    for r in rows:
        assert int(r["n"]) == 12 and float(r["d_f1_lo"]) <= float(r["d_f1"]) <= float(r["d_f1_hi"])
        assert r["layer_ids"] == ("0" if r["layers"] == "first:1" else "1")  # the tiny model: 2 layers
        assert (r["p_bh"] != "") == (r["reference"] != "baseline")
    last = next(r for r in rows if r["condition"] == "knockout" and r["edges"] == "text_anchor"
                and r["layers"] == "last:1" and r["reference"] == "baseline")  # fmt: skip
    # the anchor reading the text in the last layer cannot reach q: nothing changes, exactly
    assert float(last["d_logp"]) == 0.0 and float(last["d_f1"]) == 0.0
    first = next(r for r in rows if r["condition"] == "knockout" and r["edges"] == "anchor_q"
                 and r["layers"] == "first:1" and r["reference"] == "baseline")  # fmt: skip
    assert float(first["d_logp"]) != 0.0 and float(first["blocked_per_sample"]) > 0

    # a killed run (a chunk and a torn line left) resumes to the same numbers
    samples = (out / "knockout_samples.csv").read_text()
    lines = samples.splitlines(keepends=True)
    (out / "knockout_samples.csv").write_text("".join(lines[:30]) + lines[30][:9])
    before = (out / "knockout.csv").read_text()
    (out / "knockout.csv").unlink()
    analyze(analyze_cfg(f"run_dir={run}", f"output_dir={out}", *KNOCK))
    assert (out / "knockout_samples.csv").read_text() == samples
    assert (out / "knockout.csv").read_text() == before

    with pytest.raises(AnalysisError, match=r"other settings .*conditions.*knockout\.restart=true"):
        analyze(analyze_cfg(f"run_dir={run}", f"output_dir={out}", *KNOCK, "knockout.edges=[anchor_q]"))
    with pytest.raises(AnalysisError, match="the run has no anchor"):
        analyze(analyze_cfg(f"run_dir={_run(sweep, False)}", f"output_dir={tmp_path}/none", *KNOCK))


def test_base_model_config_mode(tmp_path):
    out = tmp_path / "base"
    cfg = analyze_cfg(
        *[o for o in SMALL if not o.startswith(("eval.", "callbacks."))],
        "direction=tli",
        "with_anchor=true",
        f"output_dir={out}",
        f"paths.cache_dir={tmp_path}/c",
        *FLOW_FAST,
    )
    res = analyze(cfg)
    assert (out / "flow.csv").exists() and (out / "flow.png").exists()
    assert len(list((out / "examples").glob("*.png"))) == 2
    assert res.n == 24


def test_blockwise_backend_gives_the_same_analysis_and_may_resume_an_eager_one(tmp_path):
    """flow.backend is how, not what: the same per-sample values (exactness: test_flow_blockwise.py),
    examples still drawn (their maps come from the eager backend), and an analysis started with one
    backend is resumed by the other without complaint."""
    base = [
        *[o for o in SMALL if not o.startswith(("eval.", "callbacks."))],
        "direction=tli",
        "with_anchor=true",
        f"paths.cache_dir={tmp_path}/c",
        *FLOW_FAST,
    ]
    blockwise = [*base, "flow.backend=blockwise", "flow.block_size=16"]
    analyze(analyze_cfg(*blockwise, f"output_dir={tmp_path}/b"))
    analyze(analyze_cfg(*base, f"output_dir={tmp_path}/e"))
    assert len(list((tmp_path / "b" / "examples").glob("*.png"))) == 2
    got, want = (read_csv(tmp_path / d / "flow_samples.csv") for d in ("b", "e"))
    assert [(r["id"], r["layer"]) for r in got] == [(r["id"], r["layer"]) for r in want]
    for m in ("S_wp", "S_pq", "S_ww"):
        g, w = (np.array([float(r[m]) for r in rows]) for rows in (got, want))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * np.abs(w).max())  # float32 model
    analyze(analyze_cfg(*base, f"output_dir={tmp_path}/b"))  # eager resumes the blockwise analysis


# --------------------------------------------------------------------------------------------------
# flow summary
# --------------------------------------------------------------------------------------------------


def test_rescaled_flow_mean_of_ratios_and_ratio_of_means_by_hand():
    """Two samples, one layer. per_sample: the engine rescales each sample's three means to sum to 1,
    the summary averages those shares; of_means: the summary rescales the means over samples (the
    "Label Words are Anchors" plots), and its interval is a bootstrap of that ratio."""
    raw = {"S_wp": [[1.0], [2.0]], "S_pq": [[0.0], [6.0]], "S_ww": [[1.0], [0.0]]}
    shares = {"S_wp": [[0.5], [0.25]], "S_pq": [[0.0], [0.75]], "S_ww": [[0.5], [0.0]]}  # per sample
    per_sample = summarize({m: np.array(v) for m, v in shares.items()}, 200, 0, "per_sample")
    of_means = summarize({m: np.array(v) for m, v in raw.items()}, 200, 0, "of_means")
    assert [float(per_sample[m].mean[0]) for m in raw] == pytest.approx([0.375, 0.375, 0.25])
    assert [float(of_means[m].mean[0]) for m in raw] == pytest.approx([0.3, 0.6, 0.1])  # (1.5, 3, .5) / 5
    assert float(of_means["S_wp"].std[0]) == pytest.approx(np.std([1.0, 2.0], ddof=1) / 5)
    # a resample is both samples, the first twice or the second twice: the shares of one of those
    for m, extremes in (("S_wp", (0.25, 0.5)), ("S_pq", (0.0, 0.75)), ("S_ww", (0.0, 0.5))):
        s = of_means[m]
        assert min(extremes) <= s.lo[0] <= s.mean[0] <= s.hi[0] <= max(extremes), m
        assert list(s.n) == [2]
    no_anchor = summarize(
        {"S_wp": np.full((2, 1), np.nan), "S_pq": np.full((2, 1), np.nan), "S_ww": np.array(raw["S_ww"])},
        50,
        0,
        "of_means",
    )
    assert np.isnan(no_anchor["S_wp"].mean[0]) and no_anchor["S_ww"].mean[0] == 1.0
