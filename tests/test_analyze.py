"""analyze.py: flow of a trained run (files, resume after a kill), a base model, and a sweep's tables,
paired bootstrap intervals, report, missing runs and mismatched test sets; the experiment configs."""

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
from mre.flow.files import summarize, write_layers
from mre.results import read_jsonl, write_jsonl
from mre.stats import (
    MismatchedTestSetError,
    TLIScores,
    WLIScores,
    align_predictions,
    bootstrap_layer_means,
    paired_bootstrap,
)
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
    assert row["dataset.name"] == "synthetic_en" and row["n"] == "64" and row["n_boot"] == "300"
    assert float(row["ci_lo"]) <= float(row["diff"]) <= float(row["ci_hi"])
    assert 0 <= float(row["p"]) <= 1
    metrics = {a: json.loads((_run(sweep, a) / "metrics.json").read_text()) for a in (False, True)}
    assert float(row["f1_a"]) == pytest.approx(metrics[False]["test/f1"], abs=1e-5)
    assert float(row["f1_b"]) == pytest.approx(metrics[True]["test/f1"], abs=1e-5)
    assert row["s_pq_b"] and float(row["s_pq_b"]) > 0  # from the with-anchor run's flow/ CSV
    report = (an / "report.md").read_text()
    assert "## Table 3: TLI F1, text only vs text + WLI" in report
    assert "![flow_grid_tli](flow_grid_tli.png)" in report
    assert "paired bootstrap" in report and "## Runs" in report
    for run in sweep.iterdir():
        if run.is_dir() and run.name != "analysis":
            assert f"(<../{run.name}/.hydra/config.yaml>)" in report  # every run's config linked
    assert "Missing runs" not in report


def test_missing_runs_are_listed_and_tables_use_the_finished_ones(sweep, tmp_path):
    from mre.analysis.report import analyze_sweep

    s = _copy(sweep, tmp_path)
    (_run(s, True) / "metrics.json").unlink()  # failed / killed run
    res = analyze_sweep(s)
    assert [r.name for r in res["unfinished"]] == [_run(s, True).name]
    row = res["tables"]["table3_tli"].rows[0]
    assert row.f1_a is not None and row.f1_b is None and row.paired is None
    assert "not finished" in row.note
    report = (s / "analysis" / "report.md").read_text()
    assert "## Missing runs" in report and "no metrics.json" in report
    # a job of the sweep that never started (a basic-sweeper multirun stops at its first failure)
    shutil.rmtree(_run(s, True))
    res = analyze_sweep(s)
    assert len(res["missing"]) == 1 and "with_anchor=true" in res["missing"][0].lower()
    assert "no Text + WLI run" in res["tables"]["table3_tli"].rows[0].note
    assert "never started: `" in (s / "analysis" / "report.md").read_text()


def test_sweep_can_compute_the_flow_of_its_runs(sweep, tmp_path):
    from mre.analysis.report import analyze_sweep
    from mre.config import SweepOptions
    from mre.flow.options import FlowAnalysisConfig

    s = _copy(sweep, tmp_path)
    fo = FlowAnalysisConfig(n_samples=8, n_examples=0, n_boot=50, progress=False)
    res = analyze_sweep(s, opts=SweepOptions(compute_flow=True, n_boot=100), flow_opts=fo)
    assert (_run(s, True) / "analysis" / "flow.csv").exists()
    assert not (_run(s, False) / "analysis").exists()  # no anchor: nothing to measure
    assert res["tables"]["table3_tli"].rows[0].flow_source == "analysis/flow.csv"


def test_mismatched_test_ids_are_refused(sweep, tmp_path):
    from mre.analysis.report import analyze_sweep
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
    row = res["tables"]["table3_tli"].rows[0]
    assert row.refused and row.paired is None
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
    assert res["n"] == 24
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
    assert res["n"] == 24


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
# statistics
# --------------------------------------------------------------------------------------------------


def _tli_rows(correct: np.ndarray, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = ["Music", "Sports", "Travel", "Technology"]
    rows = []
    for i, ok in enumerate(correct):
        gold = labels[i % 4]
        pred = gold if ok else labels[(i + 1 + rng.integers(3)) % 4]
        rows.append({"id": f"s{i:03d}", "gold": gold, "prediction": pred})
    return rows


def test_paired_bootstrap_identical_runs():
    rows = _tli_rows(np.random.default_rng(1).random(200) < 0.6)
    a, b = align_predictions(rows, [dict(r) for r in reversed(rows)])
    res = paired_bootstrap(
        TLIScores([r["gold"] for r in a], [r["prediction"] for r in a]),
        TLIScores([r["gold"] for r in b], [r["prediction"] for r in b]),
        n_boot=500,
        seed=3,
    )
    assert res.diff == 0 and res.lo == 0 and res.hi == 0 and res.p == 1


def test_paired_bootstrap_clearly_better_run_excludes_zero():
    rng = np.random.default_rng(2)
    worse = _tli_rows(rng.random(300) < 0.4)
    better = _tli_rows(rng.random(300) < 0.9)
    a = TLIScores([r["gold"] for r in worse], [r["prediction"] for r in worse])
    b = TLIScores([r["gold"] for r in better], [r["prediction"] for r in better])
    res = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert res.lo > 0 and res.diff > 0.3 and res.p < 0.01 and res.p_text() == "<0.001"
    assert paired_bootstrap(a, b, n_boot=1000, seed=0) == res  # seeded
    rev = paired_bootstrap(b, a, n_boot=1000, seed=0)
    assert rev.hi < 0 and rev.diff == pytest.approx(-res.diff)


def test_f1_matches_the_training_metrics():
    import torch
    from torchmetrics.classification import MulticlassF1Score

    from mre.data.wli_format import WLIFormat
    from mre.metrics import WLIF1

    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, 97)
    p = np.where(rng.random(97) < 0.5, g, rng.integers(0, 4, 97))  # class 4 is never predicted
    ref = MulticlassF1Score(num_classes=6, average="macro")(torch.tensor(p), torch.tensor(g))
    ours = TLIScores([str(x) for x in g], [str(x) for x in p]).f1(np.ones(97))
    assert ours == pytest.approx(float(ref), abs=1e-6)

    fmt = WLIFormat()
    golds = ["person:Ann;location:Rome", "none", "work:Abba", "event:Cup;event:Cup"]
    preds = ["person:Ann", "food:Tea", "none", "event:Cup;broken"]
    metric = WLIF1(["person", "location", "work", "event", "food"])
    metric.update([fmt.parse(x) for x in preds], [fmt.parse(x) for x in golds])
    assert WLIScores(golds, preds, fmt).f1(np.ones(4)) == pytest.approx(
        float(metric.compute()["f1"]), abs=1e-6
    )


def test_align_refuses_different_gold_and_duplicate_ids():
    rows = _tli_rows(np.ones(5, bool))
    other = [dict(r) for r in rows]
    other[2]["gold"] = "Food"
    with pytest.raises(MismatchedTestSetError, match="different gold"):
        align_predictions(rows, other)
    with pytest.raises(MismatchedTestSetError, match="more than once"):
        align_predictions(rows, [*rows, rows[0]])


def test_layer_bootstrap_is_seeded_and_handles_undefined_samples():
    rng = np.random.default_rng(0)
    v = rng.random((50, 3))
    v[:10, 2] = np.nan  # e.g. samples without an anchor
    a = bootstrap_layer_means(v, n_boot=300, seed=7)
    b = bootstrap_layer_means(v, n_boot=300, seed=7)
    assert np.array_equal(a.lo, b.lo) and np.array_equal(a.hi, b.hi)
    assert list(a.n) == [50, 50, 40]
    assert a.mean[2] == pytest.approx(np.nanmean(v[:, 2]))
    assert np.all(a.lo <= a.mean) and np.all(a.mean <= a.hi)


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


# --------------------------------------------------------------------------------------------------
# the known-answer check on a hand-made sweep (planted gains, no training)
# --------------------------------------------------------------------------------------------------


def _fake_run(root: Path, k: int, level: float, anchor: bool, acc: float, n: int = 400, *extra: str) -> None:
    cfg = compose(
        [
            "experiment=demo_known_effect",
            f"dataset.synthetic.wli_helps_tli={level}",
            f"with_anchor={anchor}",
            *extra,
        ]
    )
    run = root / f"{k}_level={level},with_anchor={anchor}"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save(
        OmegaConf.create([f"dataset.synthetic.wli_helps_tli={level}", f"with_anchor={anchor}"]),
        run / ".hydra" / "overrides.yaml",
    )
    rows = _tli_rows(np.random.default_rng(k).random(n) < acc)
    write_jsonl(
        run / "predictions.jsonl",
        [{**r, "prompt": "", "correct": r["gold"] == r["prediction"]} for r in rows],
    )
    f1 = float(TLIScores([r["gold"] for r in rows], [r["prediction"] for r in rows]).f1(np.ones(n)))
    (run / "metrics.json").write_text(json.dumps({"test/f1": f1}))
    if anchor:  # the callback's last epoch file, with S_pq growing with the level
        values = {
            "S_wp": np.full((8, 2), 0.1),
            "S_pq": np.full((8, 2), 0.01 * (1 + level)),
            "S_ww": np.full((8, 2), 0.05),
        }
        write_layers(summarize(values, n_boot=20, seed=0), run / "flow" / "epoch_3.csv")


def test_known_effect_section(tmp_path):
    from mre.analysis.report import analyze_sweep

    root = tmp_path / "ke"
    for k, (level, anchor, acc) in enumerate(
        [
            (0.0, False, 0.5),
            (0.0, True, 0.5),
            (0.5, False, 0.5),
            (0.5, True, 0.7),
            (1.0, False, 0.5),
            (1.0, True, 0.9),
        ]
    ):
        _fake_run(root, k, level, anchor, acc)
    res = analyze_sweep(root)
    t = res["tables"]["table3_tli"]
    assert t.label_keys == [
        "dataset.name",
        "dataset.synthetic.tli_helps_wli",
        "dataset.synthetic.wli_helps_tli",
    ]
    assert len(t.rows) == 3 and all(r.paired is not None for r in t.rows)
    ke = res["known_effect"]["table3_tli"]
    levels = [lv for lv, _ in ke["levels"]]
    assert levels == [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]
    assert ke["checks"]["interval at the strongest level above 0"]
    assert ke["recovered"] == all(ke["checks"].values())
    assert ke["s_pq_trend"] == "increasing"
    report = (root / "analysis" / "report.md").read_text()
    assert "Known-answer check" in report and "Verdict" in report


def test_rows_are_labelled_by_the_settings_that_vary(tmp_path):
    from mre.analysis.report import analyze_sweep

    root = tmp_path / "models"
    k = 0
    for model in ("tiny_llama", "tiny_qwen2"):
        for anchor in (False, True):
            _fake_run(root, k, 1.0, anchor, 0.6 + 0.2 * anchor, 200, f"model={model}")
            k += 1
    t = analyze_sweep(root)["tables"]["table3_tli"]
    assert t.label_keys == ["dataset.name", "model.name"]  # not every model.* key the choice sets
    assert [r.labels["model.name"] for r in t.rows] == ["tiny_llama", "tiny_qwen2"]
    assert all(r.paired is not None and r.paired.diff > 0 for r in t.rows)
