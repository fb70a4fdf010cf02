"""Runs that survive: a run killed at any point resumes from its directory alone (`resume=<run dir>`)
to the metrics, predictions and CSV history of an uninterrupted run; checkpoints are written
atomically and a broken one is passed over; every run gets its own directory."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from mre.checkpoints import AtomicCheckpointIO, is_whole, newest_readable
from mre.config import compose
from mre.runner import ResumeError, resume_config
from tests.conftest import REPO
from tests.test_train import SMALL

RUN = [
    *SMALL,
    "trainer.max_epochs=3",
    "logger=csv",
    "direction=tli",
    "flow.n_samples=8",
    "trainer.enable_progress_bar=false",
]  # fmt: skip  (15 optimizer steps per epoch)


class KillAt(L.Callback):
    """SIGKILLs its own process, once (a marker file stops it after the resume), at a training step,
    in an epoch's validation or at an epoch's start: a crash with no chance to clean up."""

    def __init__(self, marker: str, step: int = -1, val_epoch: int = -1, epoch_start: int = -1) -> None:
        self.marker, self.step, self.val_epoch, self.epoch_start = Path(marker), step, val_epoch, epoch_start

    def _kill(self) -> None:
        if not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self._kill()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == self.val_epoch:
            self._kill()

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch_start:
            self._kill()


def _default_sigint() -> None:
    """A shell without job control starts background jobs with SIGINT ignored, and Python then installs
    no Ctrl+C handler: give the run the disposition a terminal's run has, whatever started pytest."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *args]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env, preexec_fn=_default_sigint
    )


def csv_rows(run: Path) -> list[str]:
    return sorted((run / "csv" / "metrics.csv").read_text().splitlines())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    out = train(*RUN, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill",
    [
        "step=19",  # mid epoch 1, before its first step checkpoint: from the epoch-0 checkpoint
        "step=22",  # mid epoch 1, after the step-20 checkpoint
        "val_epoch=1",  # during epoch 1's validation
        "epoch_start=2",  # between epochs 1 and 2
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, kill):
    run = tmp_path / "run"
    out = train(*RUN, f"hydra.run.dir={run}", "+callbacks.kill._target_=tests.test_resume.KillAt",
                f"+callbacks.kill.marker={tmp_path / 'killed'}", f"+callbacks.kill.{kill}")  # fmt: skip
    assert out.returncode == -signal.SIGKILL and not (run / "metrics.json").exists(), out.stderr[-2000:]
    out = train(f"resume={run}")  # the run directory alone
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stderr + out.stdout
    assert (run / "metrics.json").read_text() == (uninterrupted / "metrics.json").read_text()
    assert (run / "predictions.jsonl").read_text() == (uninterrupted / "predictions.jsonl").read_text()
    assert csv_rows(run) == csv_rows(uninterrupted)  # the whole history, nothing lost or doubled


def test_resume_refuses_other_overrides_and_finished_or_unstarted_runs(tmp_path, monkeypatch):
    cfg = compose(["resume=/nowhere/run"])
    with pytest.raises(ResumeError, match=r"not a train.py run directory"):
        resume_config(cfg)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    saved = compose(["paths.output_dir=/x"])
    from omegaconf import OmegaConf

    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    monkeypatch.setattr("mre.runner._command_line_overrides", lambda: [f"resume={run}", "seed=3"])
    with pytest.raises(ResumeError, match=r"would be ignored: \['seed=3'\]"):
        resume_config(compose([f"resume={run}"]))
    monkeypatch.setattr("mre.runner._command_line_overrides", lambda: [f"resume={run}"])
    with pytest.raises(ResumeError, match=r"no whole checkpoint .*start it again"):
        resume_config(compose([f"resume={run}"]))
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ResumeError, match=r"already finished"):
        resume_config(compose([f"resume={run}"]))


def test_checkpoints_are_written_atomically_and_a_broken_one_is_passed_over(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    ckpts = tmp_path / "checkpoints"
    io.save_checkpoint({"global_step": 10, "w": torch.arange(1000)}, ckpts / "epoch00.ckpt")
    io.save_checkpoint({"global_step": 20, "w": torch.arange(1000)}, ckpts / "last.ckpt")

    def full_disk(handle, data):
        handle.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mre.checkpoints._write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 30, "w": torch.arange(1000)}, ckpts / "last.ckpt")
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch00.ckpt", "last.ckpt"]  # no partial file
    assert torch.load(ckpts / "last.ckpt")["global_step"] == 20  # the previous one, intact
    # a checkpoint truncated some other way (an older writer, a copy): the newest whole one is used
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    os.utime(ckpts / "last.ckpt")
    assert not is_whole(ckpts / "last.ckpt") and is_whole(ckpts / "epoch00.ckpt")
    assert newest_readable(ckpts) == ckpts / "epoch00.ckpt"


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """Two train.py started together (both stop at a bad trainer option, after Hydra made their
    directories): two directories, each with its own config."""
    env = {**os.environ, "MRE_ROOT": str(tmp_path)}
    cmd = [sys.executable, "train.py", "trainer.max_epochs=abc"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in "ab"
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all("max_epochs" in e for e in errors), errors[0][-2000:]
    runs = [p.parent.parent for p in (tmp_path / "outputs").rglob(".hydra/config.yaml")]
    assert len(runs) == 2 and runs[0] != runs[1]


def test_a_run_writes_only_its_directory_and_the_cache_from_any_working_directory(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MRE_CACHE"}  # the cache goes under the root
    env.update(MRE_ROOT=str(root), OMP_NUM_THREADS="1")
    args = [*SMALL, "trainer.max_epochs=1", "logger=csv", "direction=tli", "flow.enabled=false"]
    out = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=elsewhere, capture_output=True, text=True,
        timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory
    assert sorted(p.name for p in root.iterdir()) == [".cache", "outputs"]
    run = next((root / "outputs").rglob("metrics.json")).parent
    saved = (run / ".hydra" / "config.yaml").read_text()
    assert "${" not in saved and f"root_dir: {root}" in saved  # saved resolved
    assert json.loads((run / "metrics.json").read_text())["test/f1"] >= 0


class SignalAt(L.Callback):
    """Sends a signal to its own process once (a marker file stops it after the resume), at a
    training step: what SLURM (SIGTERM before preemption) or Ctrl+C (SIGINT) does."""

    def __init__(self, marker: str, signum: int, step: int) -> None:
        self.marker, self.signum, self.step = Path(marker), signum, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text("signalled")
            os.kill(os.getpid(), self.signum)


class Gate(L.Callback):
    """Holds training at its start while a file exists: a run that is alive, for as long as a test needs."""

    def __init__(self, hold: str) -> None:
        self.hold = Path(hold)

    def on_train_start(self, trainer, pl_module):
        while self.hold.exists():
            time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_says_so_exits_128_plus_the_signal_and_resumes(uninterrupted, tmp_path, signum):
    run = tmp_path / "run"
    out = train(
        *RUN,
        f"hydra.run.dir={run}",
        "+callbacks.sig._target_=tests.test_resume.SignalAt",
        f"+callbacks.sig.marker={tmp_path / 'sent'}",
        f"+callbacks.sig.signum={int(signum)}",
        "+callbacks.sig.step=22",
    )  # fmt: skip  (mid epoch 1, after the step-20 checkpoint)
    assert out.returncode == 128 + signum, out.stderr[-3000:]
    name = signal.Signals(signum).name
    said = f"interrupted by {name} at epoch 1, step "
    terminal = out.stdout + out.stderr
    assert said in terminal
    saved = 23 if signum == signal.SIGTERM else 20  # SIGTERM: the step it came in; Ctrl+C: the last scheduled
    assert f"continue with: python train.py resume={run} (from last.ckpt, step {saved})" in terminal
    assert said in (run / "train.log").read_text()  # the run's own log, too
    ending = json.loads((run / "ending.json").read_text())
    assert ending["reason"] == "interrupted" and ending["epoch"] == 1
    assert not (run / "metrics.json").exists()
    out = train(f"resume={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "metrics.json").read_text() == (uninterrupted / "metrics.json").read_text()
    assert (run / "predictions.jsonl").read_text() == (uninterrupted / "predictions.jsonl").read_text()
    assert csv_rows(run) == csv_rows(uninterrupted)
    ending = json.loads((run / "ending.json").read_text())
    assert ending == {**ending, "reason": "budget", "epoch": 3}


def _wait_for_holder(run: Path, proc: subprocess.Popen) -> None:
    """Until `proc` holds the run's lock (its record is in the lock file)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        lock = run / ".lock"
        if lock.exists() and f'"pid": {proc.pid}' in lock.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"the run never took its lock: {proc.poll()=}")


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.mark.slow
def test_one_writer_per_run_directory(uninterrupted, tmp_path):
    """A resume while the original is alive, a second resume while the first runs, and an analysis
    of a run still being written are refused at once, naming the holder; the holder finishes as an
    uninterrupted run would."""
    run, hold = tmp_path / "run", tmp_path / "hold"
    hold.write_text("")
    original = _start(*RUN, f"hydra.run.dir={run}", "+callbacks.gate._target_=tests.test_resume.Gate",
                      f"+callbacks.gate.hold={hold}")  # fmt: skip
    try:
        _wait_for_holder(run, original)
        for refused in (train(f"resume={run}"), train(f"resume={run}")):  # two resumes, one after the other
            assert refused.returncode == 2, refused.stderr[-3000:]
            assert (
                "is in use by train.py" in refused.stderr and f"(process {original.pid} on " in refused.stderr
            )
            assert "Traceback" not in refused.stderr
        analysis = subprocess.run([sys.executable, "analyze.py", f"run_dir={run}"], cwd=REPO, text=True,
                                  capture_output=True, timeout=600)  # fmt: skip
        assert analysis.returncode == 2 and "still being written by train.py" in analysis.stderr
        assert "Traceback" not in analysis.stderr
        assert not list((run / ".hydra").glob("resumed-*"))  # the refused resumes left nothing behind
    finally:
        hold.unlink()
        _, err = original.communicate(timeout=600)
    assert original.returncode == 0, err[-3000:]
    assert (run / "metrics.json").read_text() == (uninterrupted / "metrics.json").read_text()
    assert csv_rows(run) == csv_rows(uninterrupted)


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_2(uninterrupted, tmp_path):
    out = train("dataset=snips", f"dataset.path={tmp_path / 'nonexistent'}", "trainer=cpu")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("error: ") == 1 and "nonexistent does not exist" in out.stderr
    out = train(f"resume={uninterrupted}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "already finished" in out.stderr


@pytest.mark.slow
def test_a_study_launched_again_skips_finished_runs_and_continues_killed_ones(uninterrupted, tmp_path):
    """Job 0 finishes, job 1 is killed mid-epoch (the whole sweep dies with it). The same command again
    is refused (it would overwrite job 0); with continue_existing=true job 0 is skipped untouched and
    job 1 continues from its checkpoint to the uninterrupted run's result."""
    sweep = tmp_path / "study"
    study = ["-m", *RUN, f"hydra.sweep.dir={sweep}", "+callbacks.kill._target_=tests.test_resume.KillAt",
             f"+callbacks.kill.marker={tmp_path / 'killed'}", "+callbacks.kill.step=999,19"]  # fmt: skip
    out = train(*study)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    done, killed = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert (done / "metrics.json").exists() and not (killed / "metrics.json").exists()
    finished_at = (done / "metrics.json").stat().st_mtime_ns

    out = train(*study)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"{done} already holds a finished run" in out.stderr and "continue_existing=true" in out.stderr
    assert not list((done / ".hydra").glob("rerun-*"))  # the refusal left nothing behind

    out = train(*study, "continue_existing=true")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{done} finished earlier: skipped" in out.stderr + out.stdout
    assert (done / "metrics.json").stat().st_mtime_ns == finished_at
    assert (killed / "metrics.json").read_text() == (uninterrupted / "metrics.json").read_text()
    assert csv_rows(killed) == csv_rows(uninterrupted)
    assert "${" not in (killed / ".hydra" / "config.yaml").read_text()  # the resolved original, kept
    assert len(list((killed / ".hydra").glob("rerun-*"))) == 1  # the refused launch stopped at job 0
