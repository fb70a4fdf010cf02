#!/usr/bin/env python3
"""Prove the GPU paths in one prepared run, within a time limit, and leave a report.

    python3 scripts/gpu_check.py                   # or: bash scripts/gpu_check.sh
    python3 scripts/gpu_check.py --time-limit 300  # seconds for everything (default 420: 7 minutes)

Steps, each with its share of the time limit (what a step leaves unused goes to the next ones; RESERVE_S
are kept for the report, so a run cut short still leaves one):

1. device    prints the GPU, its driver, torch and CUDA versions. No CUDA device: the report says
             "no CUDA device" and the script ends (within seconds).
2. packages  imports every package the GPU tests need (and the project's own modules). Nothing is ever
             installed from the network: when some are missing and `--wheels` (default .whl/, filled by
             `bash scripts/fetch_gpu_wheels.sh` on a machine with network) holds wheels, they are installed
             offline (`pip install --no-index --no-deps --target <--site>`) and put on PYTHONPATH of the
             later steps. Still missing: the report names them and the fetch step, and the script ends.
3. pytest    `python -m pytest -m gpu` (tests/test_gpu.py: flow engine, flow callback, bf16-mixed fit,
             QLoRA, FSDP / DeepSpeed, batched generation), killed at its timeout.
4. bench     `python bench/flow_speed.py --device cuda` (the flow engine's speed and peak memory against
             the reference and a training step), killed at its timeout.

Writes `summary.json`, `summary.md` (a Markdown table), `pytest.log` and `flow_speed.log` into `--out`,
else `$OUT` when set, else `gpu_check/`; the summary is rewritten after every step.
Exit status: 0 pass, 1 a step failed, 2 packages missing, 3 no CUDA device, 4 time limit reached before
every step ended, 130 interrupted (SIGINT / SIGTERM; the report is written first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TIME_LIMIT_S = 420.0
RESERVE_S = 5.0  # kept back for writing the report
MIN_STEP_S = 2.0  # a step offered less than this is not started

# import name -> the distribution that provides it
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "lightning": "lightning",
    "peft": "peft",
    "torchmetrics": "torchmetrics",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "rich": "rich",
    "yaml": "pyyaml",
    "pytest": "pytest",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
}
# tests that need these skip (with the reason) when they are absent
OPTIONAL = {"bitsandbytes": "bitsandbytes (QLoRA tests)", "deepspeed": "deepspeed (trainer=deepspeed tests)"}
PROJECT_MODULES = ["mre.runner", "mre.flow.engine", "mre.tasks.generative"]
FETCH_STEP = (
    "fetch them on a machine with network with `bash scripts/fetch_gpu_wheels.sh` (it fills .whl/), bring "
    ".whl/ along and run this script again: it installs them from there without network"
)

# name, fixed cap in seconds (None: a weighted share of the time left), weight
STEPS: list[tuple[str, float | None, float]] = [
    ("device", 60.0, 0.0),
    ("packages", 120.0, 0.0),
    ("pytest", None, 3.0),
    ("bench", None, 2.0),
]

PROBE = r"""
import json, platform
info = {"python": platform.python_version()}
try:
    import torch
except Exception as e:
    info["error"] = f"torch is not importable ({type(e).__name__}: {e})"
else:
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if info["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        info.update(
            device_count=torch.cuda.device_count(), name=p.name, capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
        )
print(json.dumps(info))
"""

IMPORTS = r"""
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        m = importlib.import_module(name)
        out[name] = {"ok": True, "version": str(getattr(m, "__version__", "") or "")}
    except BaseException as e:  # ImportError, or a broken install raising anything at import
        out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
print(json.dumps(out))
"""


class Interrupted(Exception):
    """SIGTERM / SIGINT: stop the step, write the report, exit 130."""


# ------------------------------------------------------------------------------------------------
# time budget
# ------------------------------------------------------------------------------------------------


class Budget:
    """The run's time limit: what is left, and each step's share of it."""

    def __init__(
        self, limit_s: float, reserve_s: float = RESERVE_S, clock: Callable[[], float] = time.monotonic
    ):
        self.limit_s, self.reserve_s, self.clock = float(limit_s), float(reserve_s), clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return max(0.0, self.limit_s - self.elapsed())

    def allot(self, cap: float | None = None, weight: float = 1.0, weights_left: float = 1.0) -> float:
        """Seconds for the next step: `cap` (at most what is left after the reserve), or its `weight`
        share of what is left, `weights_left` being the weights of the steps still to run, its own
        included (so time an earlier step did not use goes to the later ones)."""
        available = max(0.0, self.remaining() - self.reserve_s)
        if cap is not None:
            return min(cap, available)
        if weights_left <= 0:
            return available
        return available * min(1.0, weight / weights_left)


# ------------------------------------------------------------------------------------------------
# child processes (each in its own process group, killed with it at its timeout)
# ------------------------------------------------------------------------------------------------

_CHILD: subprocess.Popen | None = None


def _kill(proc: subprocess.Popen) -> None:
    """End the child's process group (the child and what it started): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_child(cmd: list[str], timeout: float, env: dict[str, str], log: Path | None = None) -> dict:
    """Run `cmd` in REPO; stdout+stderr into `log` (appended) or captured. Returns
    {"status": ok|failed|timeout, "rc", "seconds", "output" (captured only)}."""
    global _CHILD
    t0 = time.monotonic()
    out = None
    with open(log, "ab") if log else open(os.devnull, "wb") as sink:
        stdout = sink if log else subprocess.PIPE
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
        )
        _CHILD = proc
        try:
            out, _ = proc.communicate(timeout=max(timeout, 0.1))
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(proc)
            status = "timeout"
        finally:
            if proc.poll() is None:
                _kill(proc)
            _CHILD = None
    res = {"status": status, "rc": proc.returncode, "seconds": round(time.monotonic() - t0, 1)}
    if not log:
        res["output"] = (out or b"").decode("utf-8", "replace")
    return res


def child_env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(site)] if site else []
    paths += [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
        PYTHONUNBUFFERED="1",
        COLUMNS="1000",  # pytest's lines unwrapped and skip reasons untrimmed (the log is not a terminal)
        HF_HUB_OFFLINE="1",  # no network there: never wait on the hub
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    return env


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# ------------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------------


def driver_version(timeout: float = 15.0) -> str:
    """The NVIDIA driver version (nvidia-smi, else /proc/driver/nvidia/version), or why it is unknown."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        m = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    return "unknown (no nvidia-smi, no /proc/driver/nvidia/version)"


def probe_device(timeout: float, env: dict[str, str]) -> dict:
    """torch, CUDA and the first GPU, from a child process (so a hung driver cannot hang this script)."""
    res = run_child([sys.executable, "-c", PROBE], timeout, env)
    info = _last_json(res["output"]) if res["status"] == "ok" else None
    if info is None:
        why = "timed out" if res["status"] == "timeout" else f"exit {res['rc']}"
        return {"error": f"device probe {why}: {res['output'][-500:].strip()}", "cuda_available": False}
    if info.get("cuda_available"):
        info["driver"] = driver_version()
    return info


def import_status(modules: list[str], timeout: float, env: dict[str, str]) -> dict[str, dict]:
    """{module: {"ok": bool, "version" | "error"}} from importing each in a child process."""
    res = run_child([sys.executable, "-c", IMPORTS, *modules], timeout, env)
    found = _last_json(res["output"]) if res["status"] == "ok" else None
    if found is None:
        why = "timed out" if res["status"] == "timeout" else f"exit {res['rc']}"
        found = {m: {"ok": False, "error": f"import check {why}"} for m in modules}
    return found


def install_wheels(wheels: Path, site: Path, timeout: float) -> dict:
    """pip install the wheels in `wheels` into `site` without network (no index, no dependencies)."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        return {"status": "none", "wheels": []}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(site), *files]
    res = run_child(cmd, timeout, dict(os.environ))
    return {**res, "wheels": [Path(f).name for f in files]}


def missing_message(missing: dict[str, str]) -> str:
    """What to do when required packages are missing: their names and the fetch step."""
    names = ", ".join(f"{dist} (import {mod})" for mod, dist in missing.items())
    return f"missing packages: {names}; {FETCH_STEP}."


def check_packages(timeout_s: float, wheels: Path, site: Path, clock=time.monotonic) -> dict:
    """Import what the GPU tests need; install the offline wheels when something required is missing.
    Returns {"status": ok|missing, "imports", "missing" {module: dist}, "installed", "message", "site"}."""
    t0 = clock()
    modules = [*REQUIRED, *OPTIONAL, *PROJECT_MODULES]
    env = child_env(site if site.is_dir() else None)
    found = import_status(modules, timeout_s, env)
    installed: list[str] = []
    use_site = site.is_dir()
    if any(not found[m]["ok"] for m in REQUIRED) and any(wheels.glob("*.whl")):
        res = install_wheels(wheels, site, max(1.0, timeout_s - (clock() - t0)))
        if res.get("status") == "ok":
            installed, use_site = res["wheels"], True
            env = child_env(site)
            found = import_status(modules, max(1.0, timeout_s - (clock() - t0)), env)
    missing = {m: REQUIRED[m] for m in REQUIRED if not found[m]["ok"]}
    broken = [m for m in PROJECT_MODULES if not found[m]["ok"]]
    out = {
        "imports": found,
        "installed": installed,
        "site": str(site) if use_site else None,
        "missing": missing,
        "optional_missing": [OPTIONAL[m] for m in OPTIONAL if not found[m]["ok"]],
    }
    if missing:
        return {**out, "status": "missing", "message": missing_message(missing)}
    if broken:
        errors = "; ".join(f"{m}: {found[m]['error']}" for m in broken)
        return {**out, "status": "failed", "message": f"the project does not import: {errors}"}
    return {**out, "status": "ok", "message": ""}


# ------------------------------------------------------------------------------------------------
# pytest output
# ------------------------------------------------------------------------------------------------

_VERBOSE = re.compile(
    r"^(\S+::\S+?)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)(?:\s+\((.*)\))?\s+\[\s*\d+%\]"
)
_SHORT = re.compile(r"^(FAILED|ERROR)\s+(\S+::\S+)(?:\s+-\s+(.*))?$")
_DURATION = re.compile(r"^([\d.]+)s\s+(setup|call|teardown)\s+(\S+::\S+)")
_FINAL = re.compile(r"^=+ (.*?) in ([\d.]+)s")
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)")


def parse_pytest(text: str) -> dict:
    """Per-test outcomes (with skip and failure reasons and durations) and the counts from a `-vv -rA
    --durations=0` log, also from a log cut short (then "complete" is False)."""
    items: dict[str, dict] = {}
    counts: dict[str, int] = {}
    complete = False
    for line in text.splitlines():
        if m := _VERBOSE.match(line):
            item = items.setdefault(m.group(1), {"id": m.group(1)})
            item["outcome"] = m.group(2)  # the last line wins: an ERROR in teardown follows PASSED
            if m.group(3):
                item["reason"] = m.group(3)
        elif m := _SHORT.match(line):
            item = items.setdefault(m.group(2), {"id": m.group(2)})
            item["outcome"] = m.group(1)
            if m.group(3):
                item["reason"] = m.group(3)[:300]
        elif m := _DURATION.match(line):
            item = items.setdefault(m.group(3), {"id": m.group(3)})
            item["seconds"] = round(item.get("seconds", 0.0) + float(m.group(1)), 2)
        elif (m := _FINAL.match(line)) and _COUNT.search(m.group(1)):
            complete = True
            for n, kind in _COUNT.findall(m.group(1)):
                counts[kind.rstrip("s") if kind.startswith(("error", "warning")) else kind] = int(n)
    if not complete:  # cut short: count what ran
        for item in items.values():
            if "outcome" in item:
                key = {"ERROR": "error"}.get(item["outcome"], item["outcome"].lower())
                counts[key] = counts.get(key, 0) + 1
    return {"complete": complete, "counts": counts, "items": [i for i in items.values() if "outcome" in i]}


def counts_text(counts: dict[str, int]) -> str:
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no tests ran"


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def device_line(device: dict) -> str:
    if not device:
        return "device not probed"
    if device.get("error"):
        return str(device["error"])
    torch_part = f"torch {device.get('torch')}, CUDA {device.get('cuda') or 'none (CPU build)'}"
    if not device.get("cuda_available"):
        return f"no CUDA device ({torch_part}, Python {device.get('python')})"
    return (
        f"{device.get('name')} (compute {device.get('capability')}, {device.get('memory_gib')} GiB, "
        f"{device.get('device_count')} visible), driver {device.get('driver')}, {torch_part}, "
        f"Python {device.get('python')}"
    )


def render_markdown(summary: dict) -> str:
    lines = [
        f"# GPU check: {summary['status']}",
        "",
        f"{device_line(summary.get('device') or {})}  ",
        f"{summary['started']}, {summary['elapsed_s']:.0f} s of the {summary['time_limit_s']:.0f} s limit",
    ]
    if summary.get("message"):
        lines += ["", f"**{_md(summary['message'])}**"]
    lines += ["", "| step | status | time | detail |", "|---|---|---|---|"]
    for s in summary["steps"]:
        took = f"{s['seconds']:.0f} s" if s.get("seconds") is not None else ""
        limit = f" (limit {s['timeout_s']:.0f} s)" if s.get("timeout_s") is not None else ""
        lines.append(f"| {s['name']} | {s['status']} | {took}{limit} | {_md(s.get('detail', ''))} |")
    tests = summary.get("tests") or {}
    if tests.get("items"):
        lines += ["", "| test | outcome | time | reason |", "|---|---|---|---|"]
        for t in tests["items"]:
            took = f"{t['seconds']:.1f} s" if "seconds" in t else ""
            lines.append(f"| `{t['id']}` | {t['outcome']} | {took} | {_md(t.get('reason', ''))} |")
    bench = summary.get("bench") or {}
    if bench.get("lines"):
        lines += [
            "",
            "Flow benchmark (`bench/flow_speed.py --device cuda`):",
            "",
            "```text",
            *bench["lines"],
            "```",
        ]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out_dir: Path) -> None:
    """summary.json and summary.md in out_dir (each written whole, then renamed into place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("summary.json", json.dumps(summary, indent=2, default=str) + "\n"),
        ("summary.md", render_markdown(summary)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)


def out_dir_of(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return REPO / "gpu_check"


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def pytest_command(extra: list[str]) -> list[str]:
    return [
        *[sys.executable, "-m", "pytest", "-m", "gpu", "-vv", "-rA", "--durations=0", "--color=no"],
        *["-p", "no:cacheprovider", "--continue-on-collection-errors", *extra],
    ]


def bench_command(extra: list[str]) -> list[str]:
    return [sys.executable, "bench/flow_speed.py", "--device", "cuda", *extra]


BENCH_LINE = re.compile(
    r"^\s*(\S.*(samples/s|engine/|agreement|best engine|total wall time|device |flow_speed:).*)$"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, help="seconds for everything")
    ap.add_argument("--out", help="report folder (default: $OUT when set, else gpu_check/)")
    ap.add_argument(
        "--wheels", default=str(REPO / ".whl"), help="offline wheels (scripts/fetch_gpu_wheels.sh)"
    )
    ap.add_argument("--site", default="/tmp/mre-gpu-site", help="where those wheels are installed")
    ap.add_argument("--pytest-args", default="", help='extra pytest arguments, e.g. "-k flow"')
    ap.add_argument("--bench-args", default="", help="extra bench/flow_speed.py arguments, e.g. --smoke")
    ap.add_argument("--no-bench", action="store_true", help="skip the flow benchmark")
    args = ap.parse_args(argv)

    budget = Budget(args.time_limit)
    out = out_dir_of(args.out)
    summary: dict = {
        "status": "running",
        "message": "",
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "time_limit_s": args.time_limit,
        "elapsed_s": 0.0,
        "device": {},
        "steps": [],
        "tests": {},
        "bench": {},
    }

    def save(status: str | None = None, message: str | None = None) -> None:
        if status:
            summary["status"] = status
        if message is not None:
            summary["message"] = message
        summary["elapsed_s"] = round(budget.elapsed(), 1)
        write_report(summary, out)

    def step(name: str, status: str, timeout_s: float | None, seconds: float | None, detail: str, **extra):
        summary["steps"].append(
            {
                "name": name,
                "status": status,
                "timeout_s": timeout_s,
                "seconds": seconds,
                "detail": detail,
                **extra,
            }
        )
        save()

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run(args, budget, out, summary, save, step)
    except Interrupted as e:
        if _CHILD is not None:
            _kill(_CHILD)
        save("interrupted", f"interrupted by {e} after {budget.elapsed():.0f} s; the steps above had ended")
        return 130
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _run(args, budget: Budget, out: Path, summary: dict, save, step) -> int:
    weights_left = sum(w for _, cap, w in STEPS if cap is None)
    caps = {name: cap for name, cap, _ in STEPS}
    weight = {name: w for name, _, w in STEPS}
    save()

    # 1. device
    t = budget.allot(cap=caps["device"])
    t0 = time.monotonic()
    device = probe_device(t, child_env(None))
    summary["device"] = device
    print(f"gpu_check: {device_line(device)}", flush=True)
    took = round(time.monotonic() - t0, 1)
    if device.get("error"):
        step("device", "failed", t, took, device["error"])
        save("fail", device["error"])
        return 1
    if not device.get("cuda_available"):
        step("device", "no CUDA device", t, took, device_line(device))
        save("no CUDA device", "no CUDA device: nothing to check here (torch.cuda.is_available() is False)")
        print(f"gpu_check: no CUDA device; report in {out}", flush=True)
        return 3
    step("device", "ok", t, took, device_line(device))

    # 2. packages
    t = budget.allot(cap=caps["packages"])
    t0 = time.monotonic()
    pk = check_packages(t, Path(args.wheels), Path(args.site))
    took = round(time.monotonic() - t0, 1)
    summary["packages"] = pk
    detail = f"{len(REQUIRED)} required importable" if pk["status"] == "ok" else pk["message"]
    if pk["installed"]:
        detail += f"; installed offline from {args.wheels}: {', '.join(pk['installed'])}"
    if pk["optional_missing"]:
        detail += f"; absent (their tests skip): {', '.join(pk['optional_missing'])}"
    step("packages", pk["status"], t, took, detail)
    if pk["status"] != "ok":
        print(f"gpu_check: {pk['message']}", file=sys.stderr, flush=True)
        save("missing packages" if pk["status"] == "missing" else "fail", pk["message"])
        return 2 if pk["status"] == "missing" else 1
    env = child_env(Path(pk["site"]) if pk["site"] else None)

    incomplete = failed = False
    # 3. pytest -m gpu
    t = budget.allot(weight=weight["pytest"], weights_left=weights_left)
    weights_left -= weight["pytest"]
    if t < MIN_STEP_S:
        step("pytest -m gpu", "not run (time limit)", t, None, "")
        incomplete = True
    else:
        log = out / "pytest.log"
        log.unlink(missing_ok=True)
        print(f"gpu_check: python -m pytest -m gpu (limit {t:.0f} s) -> {log}", flush=True)
        res = run_child(pytest_command(shlex.split(args.pytest_args)), t, env, log)
        parsed = parse_pytest(log.read_text(errors="replace"))
        summary["tests"] = parsed
        counts = parsed["counts"]
        status = res["status"]
        if status == "ok" and not counts.get("passed"):
            status = "failed"  # nothing passed: the GPU paths are not proven
        incomplete |= status == "timeout"
        failed |= status == "failed"
        detail = counts_text(counts) + ("" if parsed["complete"] else " (cut short)")
        step("pytest -m gpu", status, t, res["seconds"], detail, log=log.name)

    # 4. flow benchmark on CUDA
    t = budget.allot(weight=weight["bench"], weights_left=weights_left)
    if args.no_bench:
        step("flow benchmark", "skipped (--no-bench)", None, None, "")
    elif t < MIN_STEP_S:
        step("flow benchmark", "not run (time limit)", t, None, "")
        incomplete = True
    else:
        log = out / "flow_speed.log"
        log.unlink(missing_ok=True)
        cmd = bench_command(shlex.split(args.bench_args))
        print(f"gpu_check: {' '.join(cmd[1:])} (limit {t:.0f} s) -> {log}", flush=True)
        res = run_child(cmd, t, env, log)
        text = log.read_text(errors="replace").splitlines()
        lines = [m.group(1) for line in text if (m := BENCH_LINE.match(line))]
        summary["bench"] = {"lines": lines or text[-20:]}
        incomplete |= res["status"] == "timeout"
        failed |= res["status"] == "failed"
        ratio = next((x.strip() for x in lines if "engine/reference" in x and "samples/s" in x), "")
        step("flow benchmark", res["status"], t, res["seconds"], ratio, log=log.name)

    if failed:
        save("fail", "a step failed: see the table and its log")
        code = 1
    elif incomplete:
        save("incomplete (time limit)", f"the {args.time_limit:.0f} s limit ended a step before it finished")
        code = 4
    else:
        save("pass")
        code = 0
    print(f"gpu_check: {summary['status']} in {budget.elapsed():.0f} s; report in {out}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
