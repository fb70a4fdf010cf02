"""One writer per run directory (`mre.runlock`): a second writer is refused naming the holder, a lock
left by a killed process is taken over with a log line, and a run still being written is not
analysed. The processes here are real: flock conflicts between open files, as between processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mre.analysis import refuse_run_in_use
from mre.analysis.stream import AnalysisError
from mre.errors import UserError
from mre.runlock import LOCK, Holder, RunLockedError, current_holder, run_dir_lock

HOLD = """
import sys, time
from mre.runlock import run_dir_lock
with run_dir_lock(sys.argv[1], purpose="holder test"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    with run_dir_lock(tmp_path, purpose="train.py resume=x") as me:
        assert current_holder(tmp_path) == me
        with pytest.raises(RunLockedError) as info, run_dir_lock(tmp_path):
            pass
    assert isinstance(info.value, UserError)
    msg = str(info.value)
    assert f"process {os.getpid()}" in msg and me.host in msg and me.started in msg
    assert "train.py resume=x" in msg and "kill" in info.value.hint
    assert current_holder(tmp_path) is None  # released
    assert (tmp_path / LOCK).read_text() == ""  # nothing for the next holder to take over


def test_another_process_holds_it_until_it_dies(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        holder = current_holder(tmp_path)
        assert holder is not None and holder.pid == proc.pid and holder.purpose == "holder test"
        busy = rf"holder test \(process {proc.pid} on "
        with pytest.raises(RunLockedError, match=busy), run_dir_lock(tmp_path):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # killed without releasing: the kernel dropped the lock, its record stays and is taken over
    assert current_holder(tmp_path) is None


def test_a_stale_record_is_taken_over_with_a_log_line(tmp_path, caplog):
    gone = Holder(pid=999_999, host="node7", started="2026-12-01 10:00:00 UTC", purpose="train.py")
    (tmp_path / LOCK).write_text(
        '{"pid": 999999, "host": "node7", "started": "2026-12-01 10:00:00 UTC", "purpose": "train.py"}'
    )
    with caplog.at_level(logging.WARNING, logger="mre.runlock"), run_dir_lock(tmp_path) as me:
        assert me.pid == os.getpid()
    assert f"taking over the lock of {gone.describe()}" in caplog.text


def test_a_run_being_written_is_not_analysed(tmp_path):
    refuse_run_in_use(tmp_path)  # no lock file: fine
    busy = rf"still being written by train.py \(process {os.getpid()}"
    with run_dir_lock(tmp_path, purpose="train.py"), pytest.raises(AnalysisError, match=busy):
        refuse_run_in_use(tmp_path)
    refuse_run_in_use(tmp_path)


def test_the_lock_waits_for_no_one(tmp_path):
    """Refusal is immediate (non-blocking), not a wait behind the holder."""
    with run_dir_lock(tmp_path):
        start = time.monotonic()
        with pytest.raises(RunLockedError), run_dir_lock(Path(tmp_path)):
            pass
        assert time.monotonic() - start < 1.0
