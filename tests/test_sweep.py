"""The sweep analysis on hand-made sweeps (planted gains, no training): the studies' tables, the
known-answer check, flow against gain, the job list of a multirun, and each result read back from its
files equal to the one that wrote them. The sweep tests on a trained multirun are in test_analyze.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from mre.analysis.flow_gain import FlowGain
from mre.analysis.known_answer import KnownAnswer
from mre.analysis.report import flow_panels
from mre.analysis.runs import expected_jobs, never_started
from mre.analysis.studies import STUDIES
from mre.analysis.sweep_result import SweepResult
from mre.analysis.sweep_run import analyze_sweep
from mre.analysis.tables import SweepTable
from mre.config import compose
from mre.ending import Ending, Reason
from mre.flow.files import summarize, write_layers
from mre.results import write_jsonl
from mre.setting import Direction
from mre.stats import pair_counts
from tests.test_stats import tli_rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# the known-answer check on a hand-made sweep (planted gains, no training)
# --------------------------------------------------------------------------------------------------


def _fake_run(
    root: Path, k: int, level: float, anchor: bool, acc: float, n: int = 400, *extra: str, seed: int = 42
) -> None:
    """A finished run directory with the demo's config and predictions of accuracy `acc`."""
    overrides = [f"dataset.synthetic.wli_helps_tli={level}", f"with_anchor={anchor}", f"seed={seed}"]
    cfg = compose(["experiment=demo_known_effect", *overrides, *extra])
    run = root / f"{k}_level={level},with_anchor={anchor},seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    rows = tli_rows(np.random.default_rng(k).random(n) < acc, k)
    write_jsonl(
        run / "predictions.jsonl",
        [{**r, "prompt": "", "correct": r["gold"] == r["prediction"]} for r in rows],
    )
    f1 = pair_counts(rows, rows, Direction.tli).f1_a()
    (run / "metrics.json").write_text(json.dumps({"test/f1": f1}))
    if anchor:  # the callback's last epoch file, with S_pq growing with the level
        values = {
            "S_wp": np.full((8, 2), 0.1),
            "S_pq": np.full((8, 2), 0.01 * (1 + level)),
            "S_ww": np.full((8, 2), 0.05),
        }
        write_layers(summarize(values, n_boot=20, seed=0), run / "flow" / "epoch_3.csv")


def _known_effect_sweep(root: Path, seeds: tuple[int, ...]) -> None:
    """Levels 0, 0.5, 1: the anchor adds 0.4 x level to the accuracy, and every (seed, setting) gets
    its own training noise (about 0.03), as real seeds do."""
    noise = np.random.default_rng(99)
    k = 0
    for level in (0.0, 0.5, 1.0):
        for seed in seeds:
            for anchor in (False, True):
                acc = 0.5 + 0.4 * level * anchor + noise.normal(0, 0.03)
                _fake_run(root, k, level, anchor, acc, 400, seed=seed)
                k += 1


def test_known_effect_passes_with_three_seeds(tmp_path):
    root = tmp_path / "ke"
    _known_effect_sweep(root, (42, 1, 2))
    res = analyze_sweep(root)
    t = res.tables["table3_tli"]
    assert t.label_keys == (
        "dataset.name",
        "dataset.synthetic.tli_helps_wli",
        "dataset.synthetic.wli_helps_tli",
    )  # seeds are pooled, not a column
    assert len(t.rows) == 3 and all(r.n_seeds == 3 for r in t.rows)
    assert set(res.tables) == {"table3_tli"}  # no control-anchor run: no control tables
    assert all(r.p_bh >= r.p for r in t.rows)
    ke = res.known["table3_tli"]
    assert [lv.level for lv in ke.levels] == [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]
    assert ke.recovered and all(ke.checks.values()), ke.checks
    assert ke.s_pq_trend == "increasing"
    report = (root / "analysis" / "report.md").read_text()
    assert "Known-answer check" in report and "Verdict: **PASS**" in report
    seeds = read_csv(root / "analysis" / "table3_tli_seeds.csv")
    assert len(seeds) == 9 and {r["seed"] for r in seeds} == {"42", "1", "2"}
    assert read_csv(root / "analysis" / "table3_tli.csv")[0]["n_seeds"] == "3"
    # flow against gain: 9 points (3 levels x 3 seeds); S_pq / S_ww = 0.2 (1 + level) by construction
    fg = res.flow_gain
    points = read_csv(root / "analysis" / "flow_gain.csv")
    assert len(points) == 9 and (root / "analysis" / "flow_gain.png").exists()
    for p in points:
        level = float(p["setting"].split("wli_helps_tli=")[1].rstrip(")"))
        assert float(p["strength"]) == pytest.approx(0.2 * (1 + level))
    by_seed = {(r["seed"], r["run_b"]): float(r["diff"]) for r in seeds}
    assert sorted(float(p["gain"]) for p in points) == pytest.approx(sorted(by_seed.values()), abs=1e-4)
    (c,) = fg.correlations
    want = spearmanr([float(p["strength"]) for p in points], [float(p["gain"]) for p in points])
    assert c.n == 9 and c.rho == pytest.approx(want.statistic) and c.rho > 0.7
    assert c.lo <= c.rho <= c.hi and "## Flow and gain across settings" in report


def test_runs_with_flow_from_different_files_are_said_so(tmp_path):
    """One run with its own flow analysis next to runs with only the callback's file: each point and
    row says which file its flow came from, and the report says the files differ."""
    root = tmp_path / "ke"
    _known_effect_sweep(root, (42, 1, 2))
    own = next(root.glob("1_level=0.0,with_anchor=True*"))
    (own / "analysis").mkdir()
    shutil.copy(own / "flow" / "epoch_3.csv", own / "analysis" / "flow.csv")
    res = analyze_sweep(root)
    points = read_csv(root / "analysis" / "flow_gain.csv")
    sources = {p["run"]: p["flow_source"] for p in points}
    assert sources.pop(own.name) == "analysis/flow.csv" and set(sources.values()) == {"flow/epoch_3.csv"}
    report = (root / "analysis" / "report.md").read_text()
    assert "flow files differ: analysis/flow.csv (1 of 9 runs), flow/epoch_3.csv (8 of 9 runs)" in report
    rows = {r.flow_source for r in res.tables["table3_tli"].rows}
    assert rows == {"analysis/flow.csv (1 of 3 runs), flow/epoch_3.csv (2 of 3 runs)", "flow/epoch_3.csv"}


def test_known_effect_fails_with_one_seed(tmp_path):
    """One seed measures no training noise: the check refuses to pass, whatever the gains."""
    root = tmp_path / "ke1"
    _known_effect_sweep(root, (42,))
    res = analyze_sweep(root)
    ke = res.known["table3_tli"]
    assert not ke.recovered and not ke.checks["at least 3 seeds per level"]
    (c,) = res.flow_gain.correlations
    assert c.n == 3 and c.rho in (-1.0, -0.5, 0.5, 1.0)  # three points: a coarse rho
    assert "Verdict: **FAIL**" in (root / "analysis" / "report.md").read_text()


def test_control_anchor_tables(tmp_path):
    """Runs without an anchor, with the gold one and with the two controls: the gold table compares
    gold with none only, and each control gets a table against none and one against gold."""
    root = tmp_path / "controls"
    settings = [(False, "gold", 0.5), (True, "gold", 0.9), (True, "shuffled", 0.55), (True, "random", 0.5)]
    for k, (anchor, kind, acc) in enumerate(settings):
        _fake_run(root, k, 1.0, anchor, acc, 300, f"anchor_kind={kind}")
    res = analyze_sweep(root)
    tables = res.tables
    main = tables["table3_tli"].rows[0]
    assert [res.run(x.run_b).get("anchor_kind") for x in main.seeds] == ["gold"] and main.diff > 0.3
    vs_none = tables["control_tli_shuffled"]
    assert STUDIES[vs_none.study].label_b == "Text + shuffled WLI"
    assert res.run(vs_none.rows[0].seeds[0].run_a).get("with_anchor") is False
    vs_gold = tables["control_tli_shuffled_vs_gold"].rows[0]
    assert res.run(vs_gold.seeds[0].run_a).get("anchor_kind") == "shuffled" and vs_gold.diff > 0.3
    assert "control_tli_random" in tables and "control_wli_random" not in tables
    report = (root / "analysis" / "report.md").read_text()
    assert "Control (TLI F1): Text only vs Text + shuffled WLI" in report
    assert "text + shuffled WLI -> TLI" in report
    assert (root / "analysis" / "flow_grid_control_tli_shuffled.png").exists()


def test_a_run_whose_config_is_unreadable_is_listed_with_its_problem_and_no_setting(tmp_path):
    """The Runs table labels each run by its setting, read from its config: a run whose config does not
    parse is still listed, with the reason and `—` for the setting, and the others are analysed."""
    root = tmp_path / "broken"
    _fake_run(root, 0, 1.0, False, 0.5, 300)
    _fake_run(root, 1, 1.0, True, 0.9, 300)
    bad = root / "2_broken" / ".hydra"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("direction: [unclosed\n")
    res = analyze_sweep(root)
    assert res.tables["table3_tli"].rows[0].diff > 0.2
    report = (root / "analysis" / "report.md").read_text()
    row = next(x for x in report.splitlines() if x.startswith("| 2 | [2_broken]"))
    assert "unreadable config" in row and "| — | — | — | — | — |" in row and "None" not in row
    assert "| text + WLI -> TLI |" in report and "| text -> TLI |" in report


def test_rows_are_labelled_by_the_settings_that_vary(tmp_path):
    root = tmp_path / "models"
    k = 0
    for model in ("tiny_llama", "tiny_qwen2"):
        for anchor in (False, True):
            _fake_run(root, k, 1.0, anchor, 0.6 + 0.2 * anchor, 200, f"model={model}")
            k += 1
    t = analyze_sweep(root).tables["table3_tli"]
    assert t.label_keys == ("dataset.name", "model.name")  # not every model.* key the choice sets
    assert [r.labels["model.name"] for r in t.rows] == ["tiny_llama", "tiny_qwen2"]
    assert all(r.compared and r.diff > 0 for r in t.rows)


# --------------------------------------------------------------------------------------------------
# results read back from their files
# --------------------------------------------------------------------------------------------------


def _without_timestamp(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if "Generated" not in line)


def _assert_reads_back(res: SweepResult, out: Path) -> None:
    """Each part, and the whole, read back from `out` equal; the report rendered from what was read
    is the report rendered from what was measured."""
    from mre.analysis.report import report_markdown

    for key, t in res.tables.items():
        assert SweepTable.read(out, key) == t, key
    for key, ka in res.known.items():
        assert KnownAnswer.read(out, key) == ka, key
    if res.flow_gain is not None:
        assert FlowGain.read(out) == res.flow_gain
    back = SweepResult.read(out)
    assert back == res
    figures = {p.stem: p for p in out.glob("flow_grid_*.png")}
    png = out / "flow_gain.png" if res.flow_gain is not None else None
    assert _without_timestamp(report_markdown(back, figures, png)) == _without_timestamp(
        (out / "report.md").read_text()
    )


def test_known_answer_and_flow_gain_read_back_equal(tmp_path):
    root = tmp_path / "ke"
    _known_effect_sweep(root, (42, 1, 2))
    res = analyze_sweep(root)
    assert res.known and res.flow_gain is not None and res.flow_gain.correlations[0].lo is not None
    _assert_reads_back(res, root / "analysis")


def test_rows_with_missing_and_refused_runs_read_back_equal(tmp_path):
    """Empty cells (an unfinished run, a row without a comparison) and a refused row survive the CSV."""
    from mre.config import OnMismatch, SweepOptions
    from mre.results import read_jsonl

    root = tmp_path / "models"
    k = 0
    for model in ("tiny_llama", "tiny_qwen2"):
        for anchor in (False, True):
            _fake_run(root, k, 1.0, anchor, 0.6 + 0.2 * anchor, 200, f"model={model}")
            k += 1
    (next(root.glob("1_*")) / "metrics.json").unlink()  # tiny_llama with the anchor: unfinished
    pred = next(root.glob("3_*")) / "predictions.jsonl"  # tiny_qwen2 with the anchor: other test ids
    rows = read_jsonl(pred)
    rows[0]["id"] = "some-other-sample"
    write_jsonl(pred, rows)
    res = analyze_sweep(root, opts=SweepOptions(on_mismatch=OnMismatch.skip, n_boot=100, n_perm=100))
    unfinished, refused = res.tables["table3_tli"].rows
    assert unfinished.f1_b is None and not unfinished.compared and unfinished.seeds[0].diff is None
    assert refused.refused and not refused.compared and "some-other-sample" in refused.note
    report = (root / "analysis" / "report.md").read_text()
    assert "**refused**: refusing to pair" in report
    _assert_reads_back(res, root / "analysis")


# --------------------------------------------------------------------------------------------------
# the jobs of a multirun
# --------------------------------------------------------------------------------------------------


def _multirun(root: Path, params: dict[str, str], task: list[str], job: str = "train") -> Path:
    root.mkdir(parents=True)
    conf = {
        "hydra": {
            "job": {"name": job},
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": params,
            },
            "overrides": {"task": task},
        }
    }
    OmegaConf.save(OmegaConf.create(conf), root / "multirun.yaml")
    return root


def test_expected_jobs_are_every_combination_of_params_and_command_line(tmp_path):
    """The sweeper's params come first; a later override of a key replaces the earlier one in its
    place; a range is a list of jobs; values are written as Hydra writes a job's overrides.yaml."""
    from mre.analysis.runs import Run

    root = _multirun(tmp_path / "m", {"model": "a,b"}, ["seed=1,2", "with_anchor=true", "seed=range(3,5)"])
    jobs = expected_jobs(root)
    assert jobs == [
        ["model=a", "seed=3", "with_anchor=True"],
        ["model=a", "seed=4", "with_anchor=True"],
        ["model=b", "seed=3", "with_anchor=True"],
        ["model=b", "seed=4", "with_anchor=True"],
    ]
    ran = [Run(root / "0", "0", None, {}, ["with_anchor=True", "model=a", "seed=3"], None)]
    assert never_started(root, ran) == [" ".join(j) for j in jobs[1:]]
    assert expected_jobs(_multirun(tmp_path / "i", {}, ["lr=interval(0,1)"])) is None  # no list of jobs


def test_a_study_of_several_sub_sweeps_lists_each_ones_jobs_that_never_started(tmp_path):
    """docs/results' scripts launch one sweep per data draw into sub-folders of a study; the jobs that
    never started are found in each, and a sub-sweep's gap is not hidden by a run with the same
    overrides in another sub-sweep."""
    from mre.analysis.runs import Run

    root = tmp_path / "study"
    for draw in ("draw42", "draw7"):
        _multirun(root / draw, {"with_anchor": "false,true"}, ["seed=1"])
    _multirun(root / "draw42" / "analysis", {"x": "1,2"}, [])  # an analysis's own multirun: not jobs
    _multirun(root / "draw7" / "layers", {"x": "1,2"}, [], job="analyze")  # analyze.py -m, elsewhere
    ran = [
        Run(root / "draw42" / "0", "draw42/0", None, {}, ["with_anchor=False", "seed=1"], None),
        Run(root / "draw42" / "1", "draw42/1", None, {}, ["with_anchor=True", "seed=1"], None),
        Run(root / "draw7" / "0", "draw7/0", None, {}, ["with_anchor=False", "seed=1"], None),
    ]
    assert never_started(root, ran) == ["draw7/: with_anchor=True seed=1"]
    # draw7's text-only run does not stand in for draw42's; sub-sweeps in natural order (7 before 42)
    gaps = ["draw7/: with_anchor=True seed=1", "draw42/: with_anchor=False seed=1"]
    assert never_started(root, ran[1:]) == gaps


# --------------------------------------------------------------------------------------------------
# data draws, collapsed runs and learning curves
# --------------------------------------------------------------------------------------------------


def _sweep(root: Path, cells: list[tuple[float, tuple[str, ...], int]], n: int = 200) -> None:
    """One run per (accuracy, overrides, seed): with_anchor is among the overrides."""
    for k, (acc, extra, seed) in enumerate(cells):
        anchor = "with_anchor=True" in extra
        _fake_run(
            root, k, 1.0, anchor, acc, n, *[e for e in extra if not e.startswith("with_anchor")], seed=seed
        )


def test_data_draws_are_one_row_with_three_level_statistics(tmp_path):
    """Two data draws (split_seed) x two seeds: one row; the anchor helps in one draw and hurts in the
    other, so the row is flagged, its interval contains 0 and the draw component dominates the variance."""
    root = tmp_path / "draws"
    cells = []
    for split, gain in ((1, 0.25), (2, -0.25)):
        for seed in (42, 1):
            for anchor in (False, True):
                extra = (f"dataset.split_seed={split}", f"with_anchor={anchor}")
                cells.append((0.6 + gain * anchor, extra, seed))
    _sweep(root, cells)
    res = analyze_sweep(root)
    t = res.tables["table3_tli"]
    assert "dataset.split_seed" not in t.label_keys
    (row,) = t.rows
    assert row.n_draws == 2 and row.n_seeds == 4 and row.draws_disagree and row.ci_lo < 0 < row.ci_hi
    shares = row.variance_shares()
    assert shares["draw"] > 0.5 and set(shares) == {"draw", "seed", "test"}
    assert [(x.draw, x.seed) for x in row.seeds] == [("1", "1"), ("1", "42"), ("2", "1"), ("2", "42")]
    report = (root / "analysis" / "report.md").read_text()
    assert "draws disagree in sign" in report and "variance of Δ: draw / seed / test" in report
    assert read_csv(root / "analysis" / "table3_tli.csv")[0]["draws_disagree"] == "True"
    # the flow panel names the draw of the run it shows: two draws share seed 1
    (title, _), *more = flow_panels(res, t)
    assert title.split("\n")[1].startswith("Text + WLI (draw 1, seed 1, F1 ") and not more
    _assert_reads_back(res, root / "analysis")


def _collapse(run: Path, answer: str) -> None:
    """Rewrite a run's predictions to one answer for every text (and its test/f1 to match)."""
    from mre.results import read_jsonl

    rows = [
        {**r, "prediction": answer, "correct": r["gold"] == answer}
        for r in read_jsonl(run / "predictions.jsonl")
    ]
    write_jsonl(run / "predictions.jsonl", rows)
    (run / "metrics.json").write_text(json.dumps({"test/f1": pair_counts(rows, rows, Direction.tli).f1_a()}))


def test_collapsed_runs_are_marked_and_both_sides_collapsed_is_not_compared(tmp_path):
    """Model x: both settings answer "Music" everywhere: the row says "both collapsed" and has no Δ or
    interval. Model y: the no-anchor run predicts well but its dev F1 never beat the dev majority
    baseline (csv/metrics.csv): it is marked collapsed; the anchored run is not."""
    root = tmp_path / "collapse"
    cells = [(0.6 + 0.2 * a, (f"model={m}", f"with_anchor={a}"), 42) for m in ("tiny_llama", "tiny_qwen2")
             for a in (False, True)]  # fmt: skip
    _sweep(root, cells)
    runs = sorted(root.iterdir(), key=lambda p: int(p.name.split("_")[0]))
    _collapse(runs[0], "Music")
    _collapse(runs[1], "Music")
    (runs[2] / "csv").mkdir()
    (runs[2] / "csv" / "metrics.csv").write_text("step,val/f1,val/majority_f1\n9,0.20,\n9,,0.25\n19,0.24,\n")
    Ending(Reason.early_stopping, 3, 120, "stopped early").write(runs[2] / "ending.json")
    Ending(Reason.budget, 8, 240, "trained its budget").write(runs[3] / "ending.json")
    res = analyze_sweep(root)
    both, one = res.tables["table3_tli"].rows
    assert both.both_collapsed and both.diff is None and not both.compared
    assert both.collapsed_a == both.collapsed_b == 1 and both.majority_f1 == pytest.approx(2 * 50 / 250 / 4)
    assert "both settings collapsed in every run" in both.note
    assert one.compared and (one.collapsed_a, one.collapsed_b) == (1, 0) and not one.both_collapsed
    assert one.seeds[0].collapsed_a and one.seeds[0].top_share_a < 0.95
    report = (root / "analysis" / "report.md").read_text()
    assert "| both collapsed |" in report and "(⚠ 1/1 collapsed)" in report
    assert report.count("(⚠ collapsed)") == 3  # the runs table: both of model x, model y's no-anchor run
    # how training ended, in the runs table (and in the dev-path table for the one run that validated)
    assert report.count("| early stopping, step 120 |") == 2 and report.count("| budget, step 240 |") == 1
    _assert_reads_back(res, root / "analysis")


def test_learning_curve_of_a_sweep_over_the_training_size(tmp_path):
    """n_train 30, 60, 120 x anchor x 2 seeds: the gain shrinks with data; one curve, its CSV and figure."""
    from mre.analysis.learning_curve import LearningCurve

    root = tmp_path / "curve"
    cells = [(0.5 + (0.3 - 0.1 * i) * a, (f"dataset.n_train={size}", f"with_anchor={a}"), seed)
             for i, size in enumerate((30, 60, 120)) for seed in (42, 1) for a in (False, True)]  # fmt: skip
    _sweep(root, cells)
    res = analyze_sweep(root)
    curve = res.curves["table3_tli"]
    assert [p.n_train for p in curve.points] == [30, 60, 120]
    assert {p.group for p in curve.points} == {"dataset.name=synthetic_en"}
    assert all(p.f1_b_lo <= p.f1_b <= p.f1_b_hi and p.n_seeds == 2 for p in curve.points)
    assert curve.points[0].diff > curve.points[2].diff > 0
    out = root / "analysis"
    assert LearningCurve.read(out, "table3_tli") == curve
    lines = read_csv(out / "learning_curve_table3_tli.csv")
    assert [line["n_train"] for line in lines] == ["30", "60", "120"]
    png = out / "learning_curve_table3_tli.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "### Learning curve (table3_tli)" in (out / "report.md").read_text()
    _assert_reads_back(res, out)


def _dev_log(run: Path, rows: list[str]) -> None:
    (run / "csv").mkdir(exist_ok=True)
    (run / "csv" / "metrics.csv").write_text("\n".join(["epoch,step,val/f1,val/majority_f1", *rows]) + "\n")


def test_each_runs_dev_f1_path_is_shown_and_summarised(tmp_path):
    """Three runs' logs, written as Lightning's CSV logger writes them: the text-only run leaves the
    majority baseline late, the anchored one at once; the anchored run was resumed (its step-19 check
    logged twice: the later value counts) and logged the baseline on rows of its own. A run that
    validated once has no path. The per-run summary, the CSV (read back equal) and the figure."""
    from mre.analysis.dev_curves import DevCurves
    from mre.analysis.report import collapsed_runs

    root = tmp_path / "dev"
    _sweep(root, [(0.6, ("with_anchor=False",), 42), (0.8, ("with_anchor=True",), 42),
                  (0.6, ("with_anchor=False",), 1), (0.8, ("with_anchor=True",), 1)])  # fmt: skip
    runs = sorted(root.iterdir(), key=lambda p: int(p.name.split("_")[0]))
    _dev_log(runs[0], ["0,9,0.02,0.05", "0,19,0.03,0.05", "1,29,0.50,0.05", "1,39,0.60,0.05"])
    _dev_log(runs[1], ["0,9,0.40,", "0,9,,0.05", "0,19,0.10,0.05", "0,19,0.80,0.05", "1,29,0.80,0.05",
                       "1,39,0.70,0.05"])  # fmt: skip
    _dev_log(runs[2], ["0,9,0.30,0.05"])
    _dev_log(runs[3], ["0,9,0.06,0.05", "0,19,0.09,0.05"])  # above the baseline by < 0.05: not learning
    Ending(Reason.early_stopping, 1, 40, "stopped early").write(runs[1] / "ending.json")
    res = analyze_sweep(root)
    text_only, anchored, blip = res.dev.paths()
    assert (text_only.run, anchored.run, blip.run) == (runs[0].name, runs[1].name, runs[3].name)
    assert (text_only.setting, anchored.setting) == ("text -> TLI", "text + WLI -> TLI")
    assert (text_only.checks, text_only.left_majority_step, text_only.near_best_step) == (4, 29, 39)
    assert (text_only.best_f1, text_only.best_step) == (0.60, 39)
    assert (anchored.checks, anchored.left_majority_step, anchored.near_best_step) == (4, 9, 19)
    assert (anchored.best_f1, anchored.best_step, anchored.last_f1, anchored.last_step) == (
        0.80,
        19,
        0.70,
        39,
    )
    assert (blip.left_majority_step, blip.near_best_step, blip.best_step) == (None, None, 19)
    assert collapsed_runs(res) == {runs[3].name}  # the report's collapse mark agrees: dev never learned
    out = root / "analysis"
    assert DevCurves.read(out) == res.dev and len(read_csv(out / "dev_curves.csv")) == 10
    png = out / "dev_curves.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Training: dev F1 at each check" in report
    assert "| 4 | 9 | 19 | 0.8000 (19) | 0.7000 (39) | early stopping, step 40 |" in report
    assert "| 2 | never | — | 0.0900 (19) | 0.0900 (19) |" in report
    _assert_reads_back(res, out)


# --------------------------------------------------------------------------------------------------
# layer-resolved knockouts against relative depth
# --------------------------------------------------------------------------------------------------


def _knockout(out: Path, n_layers: int | None, windows: dict[str, tuple[float, float]]) -> None:
    """knockout.csv and knockout_meta.json of an anchor_q knockout: per window (`a-b`) Δ log p of the
    knockout and of its random control against the baseline (receiver: no effect)."""
    from mre.analysis.knockout_run import META_FILE, RESULT_COLUMNS, RESULT_FILE

    out.mkdir(parents=True)
    meta = {"title": "planted", "n_boot": 100, "n_perm": 100}
    (out / META_FILE).write_text(json.dumps(meta if n_layers is None else {**meta, "n_layers": n_layers}))
    rows = []
    for spec, (knocked, random) in windows.items():
        a, b = map(int, spec.split("-"))
        ids = " ".join(str(i) for i in range(a, b + 1))
        for kind, d in (("knockout", knocked), ("random", random), ("receiver", 0.0)):
            cells = dict(edges="anchor_q", layers=spec, layer_ids=ids, condition=kind, reference="baseline",
                         n=150, blocked_per_sample=18.0, f1_reference=0.7, f1=0.7 + d / 10, d_f1=d / 10,
                         d_f1_lo=d / 10 - 0.05, d_f1_hi=d / 10 + 0.05, p=0.5, p_bh="", d_logp=d,
                         d_logp_lo=d - 0.1, d_logp_hi=d + 0.1)  # fmt: skip
            rows.append(cells)
    with open(out / RESULT_FILE, "w", newline="") as f:
        w = csv.DictWriter(f, RESULT_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _flow(path: Path, n_layers: int, s_pq: dict[int, float]) -> None:
    """A layer file: S_pq 0.01 except at the given layers, S_ww 0.05 (S_pq / S_ww 0.2 elsewhere)."""
    pq = np.array([s_pq.get(i, 0.01) for i in range(n_layers)])
    values = {
        "S_wp": np.full((4, n_layers), 0.1),
        "S_pq": np.tile(pq, (4, 1)),
        "S_ww": np.full((4, n_layers), 0.05),
    }
    write_layers(summarize(values, n_boot=20, seed=0), path)


def test_knockouts_of_two_models_are_placed_at_relative_depth(tmp_path, caplog):
    """A 30-layer and an 18-layer model, q's reads of the anchor knocked out in halves of each: both
    effects land in the second half of relative depth; a knockout of one window, and one that does not
    record its model's depth, are left out (the latter said so). The runs' flow is placed at relative
    depth beside them, the fine-tuned and the base model's."""
    from mre.analysis.depth_profile import DepthProfile

    root = tmp_path / "depth"
    for k, (model, seed) in enumerate((("tiny_llama", 42), ("tiny_llama", 1), ("tiny_qwen2", 42))):
        _fake_run(root, k, 1.0, True, 0.8, 100, f"model={model}", seed=seed)
    runs = sorted(root.iterdir())
    _knockout(runs[0] / "analysis_layers", 30, {"0-14": (-0.1, 0.0), "15-29": (-0.9, -0.01)})
    _knockout(runs[1] / "analysis_layers", 30, {"0-14": (-0.3, 0.0), "15-29": (-0.7, 0.01)})
    _knockout(runs[1] / "analysis", 30, {"0-29": (-1.0, 0.0)})  # one window: not layer-resolved
    _knockout(runs[2] / "analysis_layers", 18, {"0-8": (0.0, 0.0), "9-17": (-0.5, 0.0)})
    _knockout(runs[2] / "analysis_old", None, {"0-8": (0.0, 0.0), "9-17": (-0.5, 0.0)})
    # the flow: both tiny_llama runs read the anchor most at layer 22 of 30, tiny_qwen2 at 13 of 18
    _flow(runs[0] / "flow" / "epoch_3.csv", 30, {22: 0.05, 21: 0.03, 23: 0.03})
    _flow(runs[0] / "flow" / "epoch_-1.csv", 30, {})  # the base model: flat
    _flow(runs[1] / "flow" / "epoch_3.csv", 30, {22: 0.05, 21: 0.03, 23: 0.03})
    _flow(runs[2] / "flow" / "epoch_3.csv", 18, {13: 0.05})
    # analyze.py leaves its Hydra files beside its output: not a run of the sweep
    hydra = runs[0] / "analysis_layers" / ".hydra"
    hydra.mkdir()
    OmegaConf.save(OmegaConf.create({"run_dir": str(runs[0])}), hydra / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"name": "analyze"}}}), hydra / "hydra.yaml")
    with caplog.at_level("WARNING"):
        res = analyze_sweep(root, opts=None)
    assert "does not record the model's depth" in caplog.text
    assert [r.name for r in res.runs] == [r.name for r in runs] and not res.missing
    depth = res.depth
    assert depth.models() == ["tiny_llama", "tiny_qwen2"]
    knocked = [p for p in depth.points if p.condition == "knockout"]
    assert [(p.run, p.layers, p.depth_lo, p.depth_hi) for p in knocked] == [
        (runs[0].name, "0-14", 0.0, 0.5), (runs[0].name, "15-29", 0.5, 1.0),
        (runs[1].name, "0-14", 0.0, 0.5), (runs[1].name, "15-29", 0.5, 1.0),
        (runs[2].name, "0-8", 0.0, 0.5), (runs[2].name, "9-17", 0.5, 1.0),
    ]  # fmt: skip
    assert len(depth.points) == 18  # 6 windows x (knockout, random, receiver)
    out = root / "analysis"
    assert DepthProfile.read(out) == depth
    report = (out / "report.md").read_text()
    assert "## Knockout against relative depth" in report
    # the two 30-layer runs' second half: mean -0.8, envelope of their intervals [-1.0, -0.6]
    assert "| 15-29 | 0.50–1.00 | 2 | -0.800 [-1.000, -0.600] | +0.000 [-0.110, +0.110] |" in report
    assert len(depth.flow) == 30 + 30 + 30 + 18  # tuned of each run, and the first run's base model
    assert "| tiny_llama | tuned | 2 | 30 | 1.000 | 22 (0.75) | 3: 21 (0.72) to 23 (0.78) |" in report
    assert "| tiny_llama | base | 1 | 30 | 0.200 | 0 (0.02) | 30: 0 (0.02) to 29 (0.98) |" in report
    assert "| tiny_qwen2 | tuned | 1 | 18 | 1.000 | 13 (0.75) | 1: 13 (0.75) to 13 (0.75) |" in report
    png = out / "depth_profile.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_reads_back(res, out)
