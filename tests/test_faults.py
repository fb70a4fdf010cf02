"""Bad input gets an error that names the file, line or option and what was expected, or is skipped
by the bad-row policy and counted; comparisons never see different test ids by accident."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from mre.config import compose
from mre.data.context import build_context
from mre.data.prompts import PromptError
from mre.data.record import DataFormatError
from mre.data.splits import make_splits
from mre.data.synthetic import generate
from mre.errors import ConfigError
from mre.flow.samples import measurable
from mre.metrics import WLIF1
from tests.conftest import REPO
from tests.test_train import SMALL


def records_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_rows(n: int = 120) -> list[dict]:
    return [r.to_json() for r in generate(n, n_classes=3, seed=3)]


def records_cfg(path: Path, *overrides: str):
    return compose(
        ["dataset=synthetic_en", "dataset.source=records", f"dataset.path={path}", "dataset.n_train=60",
         "dataset.n_test=40", "dataset.n_dev=10", "model.tokenizer.vocab_size=400", *overrides]
    )  # fmt: skip


def test_a_row_without_a_text_label_in_a_tli_run_names_its_line_or_is_skipped(tmp_path, caplog):
    rows = synthetic_rows()
    rows[7]["tli"] = None
    path = records_file(tmp_path, rows)
    with pytest.raises(DataFormatError, match=rf"{path}, line 8: no text label, but text -> TLI needs one"):
        build_context(records_cfg(path, "direction=tli", "with_anchor=false"))
    with caplog.at_level(logging.WARNING):
        ctx = build_context(
            records_cfg(path, "direction=tli", "with_anchor=false", "dataset.on_bad_row=skip")
        )
    assert "skipped 1 rows without a text label" in caplog.text
    assert all(r.tli is not None for name in ("train", "dev", "test") for r in ctx.records(name))
    build_context(records_cfg(path, "direction=wli", "with_anchor=false"))  # text -> WLI needs none


def test_a_wli_span_holding_the_pair_separator_names_its_line_before_any_work(tmp_path):
    rows = synthetic_rows()
    rows[4]["wli"][0] = {"type": "person", "span": "Jobs;Wozniak"}
    path = records_file(tmp_path, rows)
    with pytest.raises(DataFormatError, match=rf"{path}, line 5: pair separator in a WLI span: span "):
        build_context(records_cfg(path, f"paths.cache_dir={tmp_path / 'cache'}"))
    assert not (tmp_path / "cache").exists()  # refused before the tokenizer is trained


def test_skipping_a_row_does_not_redraw_the_others():
    recs = generate(600, n_classes=3, seed=1)
    a = make_splits({"all": recs}, n_train=200, n_test=100, n_dev=50)
    b = make_splits({"all": recs[:10] + recs[11:]}, n_train=200, n_test=100, n_dev=50)  # row 10 skipped
    for name in ("train", "test", "dev"):
        ids_a, ids_b = {r.id for r in getattr(a, name)}, {r.id for r in getattr(b, name)}
        assert len(ids_a - ids_b) <= 1, name  # at most the skipped row itself changes
    assert {r.id for r in a.test} - {recs[10].id} <= {r.id for r in b.test}


def test_both_settings_of_a_comparison_see_the_same_test_ids(tmp_path, caplog):
    rows = synthetic_rows()
    for r in rows[:100]:  # a long anchor: some prompts fit only without it
        r["wli"] = r["wli"] * 12
    path = records_file(tmp_path, rows)
    common = [
        "direction=tli",
        "prompt.max_length=90",
        "dataset.on_bad_row=skip",
        f"paths.cache_dir={tmp_path}",
    ]
    with_anchor = build_context(records_cfg(path, *common, "with_anchor=true"))
    with caplog.at_level(logging.WARNING):
        without = build_context(records_cfg(path, *common, "with_anchor=false"))
    ids = [{ctx.records("test")[e.index].id for e in ctx.items("test")} for ctx in (with_anchor, without)]
    assert ids[0] == ids[1] and len(ids[0]) < len(with_anchor.records("test"))
    assert "every setting of a direction sees the same test ids" in caplog.text


def test_prompts_that_all_fit_nowhere_say_so(tmp_path):
    path = records_file(tmp_path, synthetic_rows())
    with pytest.raises(
        PromptError, match=r"no train sample fits prompt.max_length=12 .*raise prompt.max_length"
    ):
        build_context(records_cfg(path, "direction=tli", "prompt.max_length=12"))


def test_unseen_test_labels_keep_their_name_and_stay_out_of_a_label_restricted_flow(tmp_path):
    from mre.runner import run

    rows = synthetic_rows()
    folder = tmp_path / "data"
    folder.mkdir()
    rows[-1]["tli"] = "NeverTrained"
    records_file(folder, rows[:100]).rename(folder / "train.jsonl")
    records_file(folder, rows[100:]).rename(folder / "test.jsonl")
    run_args = ["direction=tli", "trainer.max_epochs=1", "logger=csv", "flow.loss=label_restricted"]
    cfg = records_cfg(
        folder, *SMALL[4:], *run_args, "flow.n_samples=30", f"paths.output_dir={tmp_path / 'run'}"
    )
    run(cfg)
    golds = {json.loads(line)["gold"] for line in (tmp_path / "run" / "predictions.jsonl").open()}
    assert "NeverTrained" in golds and "<unseen>" not in golds
    ctx = build_context(cfg)
    items = ctx.items("test")
    unseen = {**items[0].__dict__, "answer_ids": [12345, *items[0].answer_ids[1:]]}
    mixed = [type(items[0])(**unseen), *items[1:]]
    seen = [e for e in items[1:] if e.answer != "?"]  # "?": the answer of a label unseen in training
    assert len(seen) == len(items) - 2 and measurable(mixed, ctx.builder.code_ids) == seen
    assert measurable(mixed, None) == mixed


def test_per_type_f1_only_for_types_that_occur():
    m = WLIF1(["person", "place", "thing"])
    m.update([[("person", "ann")]], [[("person", "ann"), ("place", "rome")]])
    out = m.compute()
    assert set(k for k in out if k.startswith("f1_type/")) == {"f1_type/person", "f1_type/place"}
    assert out["f1_type/person"] == 1.0 and out["f1_type/place"] == 0.0


def test_data_view_prints_one_line_for_a_data_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mre.data", "dataset=snips", f"dataset.path={tmp_path}/nowhere"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert "error:" in out.stdout and "nowhere does not exist" in out.stdout


def test_progress_bar_off_and_a_bad_trainer_value_fail_or_run_early(tmp_path):
    from mre.runner import run

    args = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv", "direction=tli"]
    metrics = run(compose([*SMALL, *args, "flow.enabled=false", f"paths.output_dir={tmp_path}"]))
    assert 0 <= metrics["test/f1"] <= 1
    with pytest.raises(ConfigError, match=r"trainer.max_epochs='abc' does not fit the Trainer"):
        run(compose(["trainer.max_epochs=abc", f"paths.output_dir={tmp_path}/b"]))
    assert not (tmp_path / "b").exists()  # nothing built before the check
