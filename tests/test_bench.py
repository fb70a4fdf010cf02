"""The hand-run benchmarks in bench/ still run: each script's `--smoke` mode (toy sizes, seconds) in a
subprocess, checked for its result lines. Numbers are not checked (smoke runs measure nothing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))

NUM = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
NUM_OR_NAN = rf"(?:{NUM}|nan)"  # a ratio over a toy pass that added no page
# per script: lines that only appear when the measurement ran to the end (ratios with their targets,
# the per-method rows, the agreement checks); a new script only needs the smoke header and the total
EXPECTED: dict[str, list[str]] = {
    "flow_speed.py": [
        rf"engine\s+bs=1\s+{NUM} samples/s",
        rf"reference\s+bs=1\s+{NUM} samples/s",
        rf"train step\s+bs=\d+\s+{NUM} samples/s",
        rf"floor\s+bs=\d+\s+{NUM} samples/s",
        rf"wall time per sample\s+engine/train-step: {NUM}\s+\(target <= 0\.8\)",
        rf"engine/reference:\s+{NUM}\s+\(target <= 1\)",
        rf"samples/s\s+engine/reference:\s+{NUM}x\s+\(target >= 1\)",
        rf"peak memory\s+engine/reference:\s+{NUM}\s+\(target <= 1\)",
        rf"CPU time per sample\s+engine/floor:\s+{NUM}",
        rf"agreement\s+max rel\. diff engine vs reference metrics: {NUM}",
        rf"tokens/s; this machine's float32 matmul rate \(2048x2048, \d+ threads\): {NUM} GFLOP/s",
    ],
    "flow_memory.py": [
        rf"eager\s+L=\d+\s+peak \+\s*{NUM} MB",
        rf"blockwise\s+L=\d+\s+peak \+\s*{NUM} MB",
        rf"blockwise\+ckpt\s+L=\d+\s+peak \+\s*{NUM} MB",
        r"memory slope blockwise\s+\(log-log fit of the peak",
        rf"target: blockwise memory slope {NUM_OR_NAN} <= 1\.2: (PASS|FAIL)",
        rf"target: blockwise peak at L=\d+ / eager's {NUM_OR_NAN} <= 0\.1: (PASS|FAIL)",
        rf"target: blockwise\+ckpt peak at L=\d+ / eager's {NUM_OR_NAN} <= 0\.1: (PASS|FAIL)",
        rf"target: blockwise time per sample at L=\d+ / eager's {NUM} <= 1\.2: (PASS|FAIL)",
        r"target: blockwise time per sample / eager's < 1 at L >= \d+ \(.*\): (PASS|FAIL)",
    ],
    "lightning_overhead.py": [
        rf"plain\s+{NUM} s wall .* ms/step",
        rf"lightning\s+{NUM} s wall .* ms/step",
        rf"Lightning overhead: {NUM}% wall, {NUM}% wall inside the epoch, {NUM}% CPU\s+\(target <= 10%\)",
        r"steps run: plain (\d+), lightning \1\b",
        rf"max \|loss diff\| over all \d+ steps: {NUM}",
        rf"max \|weight diff\| after the epoch: {NUM}",
    ],
    "prefix_sharing.py": [
        rf"\d+ batches of \d+ \(tli, with anchor\): {NUM} tokens per sample, of which a shared prefix of",
        rf"plain\s+{NUM} samples/s",
        rf"shared\s+{NUM} samples/s",
        rf"samples/s shared/plain: {NUM}x \(target >= 1\.5x on the real model\)",
        rf"agreement \(eval mode\) \|loss diff\| {NUM}, max rel\. grad diff {NUM}",
    ],
    "tli_scoring.py": [
        rf"scoring\s+{NUM} samples/s",
        rf"generate\s+{NUM} samples/s",
        rf"full\s+{NUM} samples/s",
        rf"speed-up scoring/generate: {NUM}x wall, {NUM}x CPU\s+\(target >= 10x\)",
        rf"speed-up full/generate:\s+{NUM}x wall",
        rf"speed-up scoring/full:\s+{NUM}x wall",
        r"full agrees with the module's scoring: \d+/\d+ predictions, max \|loss diff\|",
        rf"accuracy vs gold: scoring {NUM}, generate {NUM}",
    ],
    "wli_generation.py": [
        rf"batched bs=\d+\s+{NUM} samples/s",
        rf"per-sample bs=1\s+{NUM} samples/s",
        rf"speed-up batched/per-sample: {NUM}x wall, {NUM}x CPU\s+\(target >= 3x on CPU\)",
        r"identical decoded answers batched vs per-sample: \d+/\d+",
        rf"exact match vs gold \(batched\): {NUM}",
        r"divergence|differs #",  # the near-tie diagnosis (always run once in smoke mode)
    ],
}


def test_bench_scripts_found():
    assert {
        "flow_memory.py",
        "flow_speed.py",
        "lightning_overhead.py",
        "prefix_sharing.py",
        "tli_scoring.py",
        "wli_generation.py",
    } <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke(script: str) -> None:
    # one thread everywhere (the scripts default to 2 torch threads: BENCH_THREADS / FLOW_BENCH_THREADS)
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_THREADS="1", FLOW_BENCH_THREADS="1")
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    out = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, f"bench/{script} --smoke failed (exit {out.returncode}):\n{log[-6000:]}"
    assert "SMOKE RUN" in out.stdout, out.stdout
    assert re.search(r"total wall time \d+ s", out.stdout), out.stdout
    missing = [p for p in EXPECTED.get(script, []) if not re.search(p, out.stdout)]
    assert not missing, f"bench/{script} --smoke printed no line matching {missing}:\n{out.stdout}"


@pytest.mark.parametrize("script", ["flow_speed.py", "flow_memory.py"])
def test_flow_bench_device_cuda_without_cuda_says_so(script: str) -> None:
    """`--device cuda` on a machine without CUDA stops at once, saying why (on a GPU machine
    scripts/gpu_check.py runs flow_speed.py for real; flow_memory.py is run by hand)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark runs on it")
    out = subprocess.run(
        [sys.executable, f"bench/{script}", "--device", "cuda", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0 and "no CUDA device" in out.stderr, out.stdout + out.stderr
