"""scripts/gpu_check.py on a machine without a GPU: the time budget, the report, the "no CUDA device" path,
the missing-package message, and a whole run with the device and the steps faked (seconds each)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def gc():
    return load()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------------------------
# time budget
# ------------------------------------------------------------------------------------------------


def test_budget_shares_and_caps(gc):
    clock = Clock()
    b = gc.Budget(420, reserve_s=5, clock=clock)
    assert b.remaining() == 420
    assert b.allot(cap=60) == 60  # a capped step gets its cap while there is time
    clock.t += 20  # the device and package steps took 20 s
    assert b.allot(weight=3, weights_left=5) == pytest.approx((400 - 5) * 3 / 5)
    clock.t += 100  # pytest used 100 s of its 237: the bench gets all that is left
    assert b.allot(weight=2, weights_left=2) == pytest.approx(300 - 5)
    clock.t += 400  # past the limit: nothing, never negative
    assert b.remaining() == 0 and b.allot(cap=60) == 0 and b.allot(weight=1, weights_left=1) == 0


def test_budget_cap_never_exceeds_what_is_left(gc):
    clock = Clock()
    b = gc.Budget(30, reserve_s=5, clock=clock)
    assert b.allot(cap=60) == 25
    clock.t += 28
    assert b.allot(cap=60) == 0  # inside the reserve


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

PYTEST_LOG = """\
tests/test_gpu.py::test_a[float32] PASSED                                  [ 25%]
tests/test_gpu.py::test_b SKIPPED (bitsandbytes is not installed | x)      [ 50%]
tests/test_gpu.py::test_c FAILED                                           [ 75%]
tests/test_gpu.py::test_d PASSED                                           [100%]
tests/test_gpu.py::test_d ERROR                                            [100%]
============================== slowest durations ===============================
2.50s call     tests/test_gpu.py::test_a[float32]
0.50s setup    tests/test_gpu.py::test_a[float32]
1.00s call     tests/test_gpu.py::test_c
=========================== short test summary info ============================
PASSED tests/test_gpu.py::test_a[float32]
SKIPPED [1] tests/test_gpu.py:40: bitsandbytes is not installed | x
FAILED tests/test_gpu.py::test_c - AssertionError: S_wp[0] differs
ERROR tests/test_gpu.py::test_d - RuntimeError: teardown
===== 1 failed, 2 passed, 1 skipped, 3 deselected, 1 error in 12.34s =====
"""


def test_parse_pytest_log(gc):
    parsed = gc.parse_pytest(PYTEST_LOG)
    assert parsed["complete"]
    assert parsed["counts"] == {"failed": 1, "passed": 2, "skipped": 1, "deselected": 3, "error": 1}
    items = {i["id"]: i for i in parsed["items"]}
    assert items["tests/test_gpu.py::test_a[float32]"] == {
        "id": "tests/test_gpu.py::test_a[float32]",
        "outcome": "PASSED",
        "seconds": 3.0,
    }
    assert items["tests/test_gpu.py::test_b"]["reason"] == "bitsandbytes is not installed | x"
    assert items["tests/test_gpu.py::test_c"]["reason"] == "AssertionError: S_wp[0] differs"
    assert items["tests/test_gpu.py::test_d"]["outcome"] == "ERROR"
    assert gc.counts_text(parsed["counts"]) == "2 passed, 1 failed, 1 error, 1 skipped, 3 deselected"


def test_parse_a_pytest_log_cut_short(gc):
    cut = "\n".join(PYTEST_LOG.splitlines()[:3])  # killed while test_c ran
    parsed = gc.parse_pytest(cut)
    assert not parsed["complete"]
    assert parsed["counts"] == {"passed": 1, "skipped": 1, "failed": 1}


def test_report_files(gc, tmp_path):
    summary = {
        "status": "pass",
        "message": "",
        "started": "2026-01-01T00:00:00+00:00",
        "time_limit_s": 420.0,
        "elapsed_s": 200.0,
        "device": {
            "python": "3.12.3",
            "torch": "2.11.0+cu130",
            "cuda": "13.0",
            "cuda_available": True,
            "name": "NVIDIA H200",
            "capability": "9.0",
            "memory_gib": 139.8,
            "device_count": 1,
            "driver": "580.65.06",
        },
        "steps": [
            {"name": "device", "status": "ok", "timeout_s": 60.0, "seconds": 3.0, "detail": "NVIDIA H200"},
            {"name": "pytest -m gpu", "status": "ok", "timeout_s": 237.0, "seconds": 90.0, "detail": "a | b"},
        ],
        "tests": gc.parse_pytest(PYTEST_LOG),
        "bench": {"lines": ["engine     bs=8   120.00 samples/s"]},
    }
    gc.write_report(summary, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    md = (tmp_path / "out" / "summary.md").read_text()
    assert md.startswith("# GPU check: pass\n")
    assert (
        "NVIDIA H200 (compute 9.0, 139.8 GiB, 1 visible), driver 580.65.06, torch 2.11.0+cu130, CUDA 13.0"
        in md
    )
    assert "| step | status | time | detail |" in md
    assert "| pytest -m gpu | ok | 90 s (limit 237 s) | a \\| b |" in md  # a pipe cannot break the table
    assert "| `tests/test_gpu.py::test_a[float32]` | PASSED | 3.0 s |  |" in md
    assert "engine     bs=8   120.00 samples/s" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "summary.md"]


def test_out_dir_follows_out_variable(gc, monkeypatch, tmp_path):
    monkeypatch.delenv("OUT", raising=False)
    assert gc.out_dir_of(None) == REPO / "gpu_check"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gc.out_dir_of(None) == tmp_path
    assert gc.out_dir_of(str(tmp_path / "x")) == tmp_path / "x"


# ------------------------------------------------------------------------------------------------
# packages
# ------------------------------------------------------------------------------------------------


def test_missing_package_message_names_them_and_the_fetch_step(gc, monkeypatch, tmp_path):
    monkeypatch.setattr(gc, "REQUIRED", {"json": "json", "mre_no_such_module": "no-such-dist"})
    monkeypatch.setattr(gc, "OPTIONAL", {"mre_no_such_optional": "an optional package"})
    monkeypatch.setattr(gc, "PROJECT_MODULES", [])
    res = gc.check_packages(60, tmp_path / "no-wheels", tmp_path / "site")
    assert res["status"] == "missing"
    assert res["missing"] == {"mre_no_such_module": "no-such-dist"}
    assert res["optional_missing"] == ["an optional package"]
    assert res["installed"] == [] and res["site"] is None
    msg = res["message"]
    assert "no-such-dist (import mre_no_such_module)" in msg and "json" not in msg
    assert "bash scripts/fetch_gpu_wheels.sh" in msg and ".whl/" in msg


def make_wheel(folder, name: str, version: str = "0.1"):
    """A minimal pure-Python wheel of one module `name` with `__version__`."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{name}-{version}.dist-info/RECORD"] = (
        "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def test_missing_packages_are_installed_from_the_offline_wheels(gc, monkeypatch, tmp_path):
    make_wheel(tmp_path / "whl", "mre_offline_pkg")
    monkeypatch.setattr(gc, "REQUIRED", {"json": "json", "mre_offline_pkg": "mre-offline-pkg"})
    monkeypatch.setattr(gc, "OPTIONAL", {})
    monkeypatch.setattr(gc, "PROJECT_MODULES", [])
    res = gc.check_packages(120, tmp_path / "whl", tmp_path / "site")
    assert res["status"] == "ok", res
    assert res["installed"] == ["mre_offline_pkg-0.1-py3-none-any.whl"]
    assert res["site"] == str(tmp_path / "site") and (tmp_path / "site" / "mre_offline_pkg").is_dir()
    assert res["imports"]["mre_offline_pkg"] == {"ok": True, "version": "0.1"}
    env = gc.child_env(tmp_path / "site")
    assert str(tmp_path / "site") in env["PYTHONPATH"].split(os.pathsep)
    assert env["COLUMNS"] == "1000"  # pytest lines in the log unwrapped, skip reasons untrimmed


# ------------------------------------------------------------------------------------------------
# whole runs
# ------------------------------------------------------------------------------------------------


def test_no_cuda_device_report_within_seconds(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("OUT", None)
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - t0
    assert out.returncode == 3, out.stdout + out.stderr
    assert took < 60, f"took {took:.0f} s"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "no CUDA device" and summary["device"]["cuda_available"] is False
    assert [s["name"] for s in summary["steps"]] == ["device"]
    assert "# GPU check: no CUDA device" in (tmp_path / "summary.md").read_text()
    assert "no CUDA device" in out.stdout


FAKE_CUDA = {
    "python": "3.12.3",
    "torch": "2.11.0+cu130",
    "cuda": "13.0",
    "cuda_available": True,
    "name": "FAKE GPU",
    "capability": "9.0",
    "memory_gib": 1.0,
    "device_count": 1,
    "driver": "0",
}


def fake_gpu(gc, monkeypatch, pytest_code: str, bench_code: str, packages: dict | None = None):
    monkeypatch.setattr(gc, "probe_device", lambda timeout, env: dict(FAKE_CUDA))
    ok = {"status": "ok", "message": "", "imports": {}, "installed": [], "site": None, "missing": {}}
    monkeypatch.setattr(gc, "check_packages", lambda *a, **k: packages or {**ok, "optional_missing": []})
    monkeypatch.setattr(gc, "pytest_command", lambda extra: [sys.executable, "-c", pytest_code])
    monkeypatch.setattr(gc, "bench_command", lambda extra: [sys.executable, "-c", bench_code])


def test_missing_packages_end_the_run_with_the_message(gc, monkeypatch, tmp_path):
    missing = {
        "status": "missing",
        "message": gc.missing_message({"hydra": "hydra-core"}),
        "imports": {},
        "installed": [],
        "site": None,
        "missing": {"hydra": "hydra-core"},
        "optional_missing": [],
    }
    fake_gpu(gc, monkeypatch, "raise SystemExit(9)", "raise SystemExit(9)", packages=missing)
    assert gc.main(["--out", str(tmp_path)]) == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "missing packages"
    assert "hydra-core (import hydra)" in summary["message"]
    assert [s["name"] for s in summary["steps"]] == ["device", "packages"]


def test_passing_run_with_faked_steps(gc, monkeypatch, tmp_path):
    log = PYTEST_LOG.replace("FAILED", "PASSED").replace("ERROR", "PASSED").replace("1 failed, ", "")
    log = log.replace(", 1 error", "")
    bench = (
        "print('  engine  bs=8  10.0 samples/s'); print('samples/s  engine/reference:  2.00x  (target >= 1)')"
    )
    fake_gpu(gc, monkeypatch, f"print({log!r})", bench)
    assert gc.main(["--out", str(tmp_path), "--time-limit", "60"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "pass"
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 4
    assert summary["tests"]["counts"]["passed"] == 2
    assert "engine/reference:  2.00x" in summary["steps"][-1]["detail"]
    assert summary["bench"]["lines"][0] == "engine  bs=8  10.0 samples/s"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flow_speed.log",
        "pytest.log",
        "summary.json",
        "summary.md",
    ]


def test_time_limit_cuts_a_step_and_still_reports(gc, monkeypatch, tmp_path):
    """A hanging pytest is killed at its share of a 12 s limit; the bench then gets the rest; the report
    says the limit was reached, and the run ends within the limit."""
    hang = "import time; print('tests/test_gpu.py::test_a PASSED  [ 50%]', flush=True); time.sleep(600)"
    fake_gpu(gc, monkeypatch, hang, "print('flow_speed: done')")
    monkeypatch.setattr(gc, "RESERVE_S", 1.0)
    t0 = time.monotonic()
    code = gc.main(["--out", str(tmp_path), "--time-limit", "12"])
    took = time.monotonic() - t0
    assert code == 4
    assert took < 12 + 6, f"took {took:.0f} s"  # the limit, plus at most the SIGTERM grace of the kill
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["status"] == "incomplete (time limit)"
    assert steps["pytest -m gpu"]["status"] == "timeout"
    assert steps["pytest -m gpu"]["detail"] == "1 passed (cut short)"
    assert steps["flow benchmark"]["status"] == "ok"


def test_failing_tests_fail_the_run(gc, monkeypatch, tmp_path):
    fake_gpu(gc, monkeypatch, f"print({PYTEST_LOG!r}); raise SystemExit(1)", "print('ok')")
    assert gc.main(["--out", str(tmp_path), "--time-limit", "60", "--no-bench"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "fail"
    assert summary["steps"][-1]["status"] == "skipped (--no-bench)"
    assert "| `tests/test_gpu.py::test_c` | FAILED |" in (tmp_path / "summary.md").read_text()
