"""A new run in a directory that already holds a run (`mre.prior_run`): refused by default, carried on
with `continue_existing=true` only for the same configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mre.config import compose, output_subdir
from mre.errors import ConfigError
from mre.prior_run import config_differences, prior_run, settle_prior_run

ARGS = ["direction=tli", "seed=3"]


def _saved_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose([*ARGS, f"paths.output_dir={run}"]), run / ".hydra" / "config.yaml", resolve=True)
    return run


def _checkpoint(run: Path, step: int) -> Path:
    path = run / "checkpoints" / f"epoch=0-step={step}.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)
    os.utime(path, (1_000_000 + step, 1_000_000 + step))  # the newest is the latest step
    return path


def _launch(run: Path, *more: str):
    return compose([*ARGS, f"paths.output_dir={run}", *more])


def test_an_empty_or_unstarted_directory_is_a_new_run_and_its_stale_log_rows_go(tmp_path):
    run = _saved_run(tmp_path)
    assert prior_run(run) is None
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,4,1.5\n0,9,1.2\n")
    cfg, finished = settle_prior_run(_launch(run), run)
    assert finished is None and cfg.ckpt_path is None
    assert (run / "csv" / "metrics.csv").read_text().splitlines() == ["epoch,step,train/loss"]


def test_a_finished_or_checkpointed_run_is_refused_by_default(tmp_path):
    run = _saved_run(tmp_path)
    ckpt = _checkpoint(run, 20)
    with pytest.raises(
        ConfigError, match=rf"holds a run with a checkpoint at step 20 \({ckpt}\); continue_existing"
    ):
        settle_prior_run(_launch(run), run)
    (run / "metrics.json").write_text(json.dumps({"test/f1": 0.5}))
    with pytest.raises(ConfigError, match=r"already holds a finished run .*metrics.json"):
        settle_prior_run(_launch(run), run)


def test_continue_existing_skips_a_finished_run_and_continues_a_checkpointed_one(tmp_path):
    run = _saved_run(tmp_path)
    _checkpoint(run, 10)
    newest = _checkpoint(run, 20)
    cfg, finished = settle_prior_run(_launch(run, "continue_existing=true"), run)
    assert finished is None and cfg.ckpt_path == str(newest)
    (run / "metrics.json").write_text(json.dumps({"test/f1": 0.5, "test/acc": 1}))
    _, finished = settle_prior_run(_launch(run, "continue_existing=true"), run)
    assert finished == {"test/f1": 0.5, "test/acc": 1.0}


def test_continue_existing_refuses_another_configuration_naming_what_differs(tmp_path):
    run = _saved_run(tmp_path)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"of another configuration \(seed: 3 there, 4 now\)"):
        settle_prior_run(_launch(run, "continue_existing=true", "seed=4"), run)
    with pytest.raises(ConfigError, match=r"anchor_kind: 'gold' there, 'shuffled' now"):
        settle_prior_run(_launch(run, "continue_existing=true", "anchor_kind=shuffled"), run)
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"metrics.json cannot be read as a run's test metrics"):
        settle_prior_run(_launch(run, "continue_existing=true"), run)


def test_launch_options_are_not_differences(tmp_path):
    run = tmp_path / "r"
    a = compose([f"paths.output_dir={run}"])
    b = compose([f"paths.output_dir={run}", "continue_existing=true", "ckpt_path=/x.ckpt"])
    assert config_differences(a, b) == []
    assert config_differences(a, compose([f"paths.output_dir={run}", "optim.lr=0.5"])) == ["optim.lr"]


def test_hydra_writes_beside_a_saved_config_and_keeps_its_first_answer(tmp_path):
    run = tmp_path / "job"
    assert output_subdir(None, "t0", str(run)) == ".hydra"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert output_subdir(None, "t0", str(run)) == ".hydra"  # this launch wrote it: still its own
    assert output_subdir(None, "t1", str(run)) == ".hydra/rerun-t1"  # a later launch writes beside it
    assert output_subdir("/some/run", "t2", str(run)) == ".hydra/resumed-t2"


def test_a_continued_run_logs_to_its_earlier_wandb_run(tmp_path):
    run = _saved_run(tmp_path)
    _checkpoint(run, 20)
    (run / "wandb" / "offline-run-20261205_101010-k3x9q2").mkdir(parents=True)
    cfg, _ = settle_prior_run(_launch(run, "continue_existing=true", "logger=default"), run)
    assert (cfg.logger.wandb.id, cfg.logger.wandb.resume) == ("k3x9q2", "allow")
