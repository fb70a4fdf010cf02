"""Peak memory and time per sample of the two flow backends against the prompt length (run by hand).

    nice python bench/flow_memory.py            # L = 256 ... 8192 on the CPU, ~12 minutes, 1 thread
    python bench/flow_memory.py --smoke         # toy sizes, seconds: a rot check, numbers mean nothing
    python bench/flow_memory.py --device cuda   # a ~1.1B LLaMA in bf16, L up to the longest that fits

`mre.flow.engine.FlowEngine` (default `FlowOptions` otherwise) on one sample of L random tokens (text
[4, 0.7 L), anchor [0.75 L, 0.95 L), q = L - 1) of a random-weight LLaMA, in three series:

  eager            flow.backend=eager: every layer's L x L probabilities kept for the backward;
  blockwise        flow.backend=blockwise: q, k, v kept, probabilities recomputed `--block-size` query rows
                   at a time in the backward;
  blockwise+ckpt   the same with the model's gradient checkpointing on (non-reentrant): the layers' own
                   activations, which every exact method keeps for the backward otherwise, are recomputed.

Sizes: on the CPU 8 layers x 256 hidden, 4 heads, intermediate 688, vocabulary 2000, float32 (flow_speed.py's
model); with `--device cuda` TinyLlama-1.1B's shape (22 layers x 2048 hidden, 32 heads, 4 key-value heads,
intermediate 5632, vocabulary 32000) in bfloat16, L = 1024 ... 131072, a series stopping at its first
out-of-memory.

Every (series, L) point runs in its own subprocesses: build the model, one warm-up pass at L = 64, then
FLOW_MEMORY_REPEATS (default 2) timed passes: time per sample is the fastest (wall, synchronized on CUDA).
Peak memory (`bench/_memory.py`) is what a pass adds over what the process held before it:

* CUDA: `torch.cuda.max_memory_allocated` during the first timed pass;
* CPU, "peak": one pass in a second subprocess whose glibc maps every block of 64 KiB or more and
  unmaps it on free (MALLOC_MMAP_THRESHOLD_=65536, which also ends glibc's dynamic threshold), so the
  peak resident set size follows the live tensors, as CUDA's number does.
  This is what the memory model (bench/README.md, "Memory model") predicts, printed beside it.
* CPU, "RSS default malloc": the peak resident size during the first timed pass, with glibc's default
  dynamic threshold, which keeps freed blocks of up to 32 MB in the heap for reuse: what the machine
  had to provide, fragmentation included (up to ~2x the live peak here at short lengths). The timed
  passes run with this default allocator (the fixed threshold costs a page fault per fresh block).

On the CPU a point that would not fit is skipped and said so: before each eager point the peak is
predicted as the previous eager peak x (L / previous L)^2 (an upper bound: the linear part grows slower)
and the point is skipped above min(20 GB, 60 % of MemAvailable: the machine may be shared).

Targets (PASS/FAIL): blockwise peak at L=4096 <= 0.1 x eager's; log-log slope of the blockwise peak
against L <= 1.2 (eager's is ~2); blockwise time per sample at L=256 <= 1.2 x eager's, and below eager's
at every L >= 2048 where eager ran. The blockwise+ckpt series is judged on the memory targets too.
FLOW_BENCH_THREADS (default 2) sets the torch threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from _memory import PeakMemory, check_device, sync

CPU_SIZES = {
    "seqs": (256, 512, 1024, 2048, 4096, 8192),
    "model": {
        "num_hidden_layers": 8,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 688,
        "vocab_size": 2000,
    },
    "dtype": "float32",
}
CUDA_SIZES = {
    "seqs": (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
    "model": {
        "num_hidden_layers": 22,
        "hidden_size": 2048,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "intermediate_size": 5632,
        "vocab_size": 32000,
    },
    "dtype": "bfloat16",
}
SMOKE_SIZES = {
    "seqs": (32, 64),
    "model": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 200,
    },
    "dtype": "float32",
}
SERIES = ("eager", "blockwise", "blockwise+ckpt")
WARMUP_SEQ = 64
CPU_LIMIT_GB = 20.0
MMAP_THRESHOLD = 64 * 1024
TARGET_SEQ = 4096  # the memory-ratio target's length (the smoke run uses its longest)
LONG_SEQ = 2048  # from here on blockwise must be faster than eager (the smoke run: its longest)
SMOKE_NOTE = "SMOKE RUN (toy sizes, 1 repeat): checks that the benchmark runs; its numbers mean nothing"
THREADS = int(os.environ.get("FLOW_BENCH_THREADS", "2"))
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


class Setup:
    """The run's sizes (driver and workers alike)."""

    def __init__(self, smoke: bool, device: str, block_size: int):
        self.smoke, self.device, self.block_size = smoke, device, block_size
        self.sizes = SMOKE_SIZES if smoke else (CPU_SIZES if device == "cpu" else CUDA_SIZES)
        self.repeats = 1 if smoke else int(os.environ.get("FLOW_MEMORY_REPEATS", "2"))
        seqs = self.sizes["seqs"]
        self.target_seq = seqs[-1] if smoke else TARGET_SEQ
        self.long_seq = seqs[-1] if smoke else LONG_SEQ

    def args(self) -> list[str]:
        smoke = ["--smoke"] if self.smoke else []
        return ["--device", self.device, "--block-size", str(self.block_size), *smoke]


# ------------------------------------------------------------------------------------------------
# the memory model (bench/README.md, "Memory model")
# ------------------------------------------------------------------------------------------------


def predict_mb(sizes: dict, series: str, seq: int, block: int) -> float:
    """Predicted peak (MiB) that one flow pass of a LLaMA adds (bench/README.md, "Memory model")."""
    m = sizes["model"]
    d, inter, heads, n = (
        m["hidden_size"],
        m["intermediate_size"],
        m["num_attention_heads"],
        m["num_hidden_layers"],
    )
    kv = m["num_key_value_heads"] * (d // heads)  # key/value width
    e = 4 if sizes["dtype"] == "float32" else 2
    half = int(e != 4)  # half precision: float32 copies in RMSNorm and after the softmax
    mlp_norms = e * (3 * inter + 2 * d) + 16 * d * half  # saved per token and layer
    if series == "eager":
        act = mlp_norms + e * 3 * d  # q, and k, v repeated to every query head
        saved_a = 4 + e * half  # per probability: the float32 softmax output (+ its half-precision copy)
        transient = heads * (e + 4) + 16 + e  # one layer's dL/dA, A * dL/dA; I_l and its prefix sums; 4D mask
        return (seq * n * act + seq * seq * (n * heads * saved_a + transient)) / 2**20
    act = mlp_norms + e * (d + 2 * kv)  # q, k, v as the attention function got them
    # gradient checkpointing: every layer's input and one layer's activations at a time
    linear = seq * (n * e * d + act) if series.endswith("+ckpt") else seq * n * act
    layer_grads = seq * e * (3 * inter + 4 * d)  # the backward of one layer's MLP
    block_work = block * seq * (16 * heads + e + 16)  # a block's scores, A, dL/dA, A * dL/dA; mask, sums
    return (linear + max(layer_grads, block_work)) / 2**20


# ------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------


def _build(setup: Setup, checkpointing: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**setup.sizes["model"], max_position_embeddings=max(setup.sizes["seqs"]))
    with torch.device(setup.device):  # random init on the device itself (fast for 1B parameters on CUDA)
        model = LlamaForCausalLM(config)
    model = model.to(getattr(torch, setup.sizes["dtype"])).eval()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _batch(seq: int, vocab: int, device: str) -> dict:
    import torch

    g = torch.Generator().manual_seed(seq)
    batch = {
        "input_ids": torch.randint(1, vocab, (1, seq), generator=g),
        "attention_mask": torch.ones(1, seq, dtype=torch.long),
        "text_range": torch.tensor([[4, int(0.7 * seq)]]),
        "anchor_range": torch.tensor([[int(0.75 * seq), int(0.95 * seq)]]),
        "q": torch.tensor([seq - 1]),
        "target": torch.randint(0, vocab, (1,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def worker(setup: Setup, series: str, seq: int, measure: str) -> dict:
    """`measure="time"`: FLOW_MEMORY_REPEATS timed passes (and the peak of the first); `"memory"`: one pass
    for its peak only (on the CPU in a process whose malloc maps every large block: see `_spawn`)."""
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mre.flow.engine import FlowEngine
    from mre.flow.options import FlowOptions

    model = _build(setup, checkpointing=series.endswith("+ckpt"))
    vocab = setup.sizes["model"]["vocab_size"]
    engine = FlowEngine(model, FlowOptions(backend=series.split("+")[0], block_size=setup.block_size))
    engine.compute(_batch(WARMUP_SEQ, vocab, setup.device))
    batch = _batch(seq, vocab, setup.device)
    memory = PeakMemory(setup.device)
    times, peak = [], float("nan")
    try:
        for _ in range(1 if measure == "memory" else setup.repeats):
            if not times:
                memory.start()
            t0 = time.perf_counter()
            res = engine.compute(batch)
            sync(setup.device)
            times.append(time.perf_counter() - t0)
            if len(times) == 1:
                peak = memory.peak_mb()
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}
    metrics = torch.stack([res.s_wp, res.s_pq, res.s_ww], -1)[0].tolist()  # [layers, 3]
    return {"peak_mb": peak, "seconds": min(times), "metrics": metrics}


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def _spawn(setup: Setup, series: str, seq: int, measure: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    if measure == "memory":  # glibc: map every block of 64 KiB or more, unmap it on free
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        series,
        "--seq",
        str(seq),
        "--measure",
        measure,
        *setup.args(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {series} L={seq} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _point(setup: Setup, series: str, seq: int) -> dict:
    """{"peak_mb", "rss_default_mb", "seconds", "metrics"} of one point, or {"oom": True}."""
    timed = _spawn(setup, series, seq, "time")
    if timed.get("oom"):
        return timed
    peak = _spawn(setup, series, seq, "memory")["peak_mb"] if setup.device == "cpu" else timed["peak_mb"]
    return {**timed, "seq": seq, "peak_mb": peak, "rss_default_mb": timed["peak_mb"]}


def _available_gb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def _skip_reason(setup: Setup, last: dict | None, seq: int) -> str | None:
    """Why an eager point is not run on the CPU (None: run it); CUDA points just run out of memory."""
    if setup.device != "cpu" or last is None:
        return None
    known = last["peak_mb"] if not math.isnan(last["peak_mb"]) else last["rss_default_mb"]
    predicted = known / 1024 * (seq / last["seq"]) ** 2
    limit = min(CPU_LIMIT_GB, 0.6 * _available_gb())
    if predicted <= limit:
        return None
    why = f"min of {CPU_LIMIT_GB:.0f} GB, 60 % available"
    return f"predicted peak {predicted:.1f} GB > limit {limit:.1f} GB ({why})"


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(peak) against log(L) (non-positive peaks left out; NaN: < 2 left)."""
    pts = [(math.log(x), math.log(y)) for x, y in points if y > 0]
    if len({x for x, _ in pts}) < 2:
        return float("nan")
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _max_rel(a: list, b: list) -> float:
    """Largest relative difference over the values above 1e-6 of the largest (last-layer S_wp is 0)."""
    flat_a = [x for row in a for x in row]
    flat_b = [y for row in b for y in row]
    floor = 1e-6 * max(abs(y) for y in flat_b if not math.isnan(y))
    pairs = [(x, y) for x, y in zip(flat_a, flat_b, strict=True) if not math.isnan(y) and abs(y) > floor]
    return max(abs(x - y) / abs(y) for x, y in pairs)


def _measure(setup: Setup) -> dict[str, dict[int, dict]]:
    rows: dict[str, dict[int, dict]] = {s: {} for s in SERIES}
    stopped: set[str] = set()
    for seq in setup.sizes["seqs"]:
        for series in SERIES:
            if series in stopped:
                continue
            done = list(rows[series].values())
            why = _skip_reason(setup, done[-1] if done else None, seq) if series == "eager" else None
            if why:
                stopped.add(series)
                print(f"  {series:<15s} L={seq:<6d} skipped from here on: {why}", flush=True)
                continue
            r = _point(setup, series, seq)
            if r.get("oom"):
                stopped.add(series)
                print(f"  {series:<15s} L={seq:<6d} out of memory: stopped", flush=True)
                continue
            rows[series][seq] = r
            print(
                f"  {series:<15s} L={seq:<6d} peak +{r['peak_mb']:9.1f} MB  "
                f"(RSS default malloc +{r['rss_default_mb']:9.1f} MB)  {r['seconds']:8.3f} s/sample",
                flush=True,
            )
    return rows


def _table(setup: Setup, rows: dict[str, dict[int, dict]]) -> None:
    print(
        f"\n{'L':>6s}  {'series':<15s} {'peak MB':>9s} {'model MB':>9s} {'RSS default':>11s} {'s/sample':>9s}"
        f"   vs eager: {'peak':>6s} {'RSS':>6s} {'time':>6s}  {'max rel diff':>12s}"
    )
    for seq in setup.sizes["seqs"]:
        e = rows["eager"].get(seq)
        for series in SERIES:
            r = rows[series].get(seq)
            model = predict_mb(setup.sizes, series, seq, setup.block_size)
            if r is None:
                print(f"{seq:6d}  {series:<15s} {'-':>9s} {model:9.1f}")
                continue
            line = (
                f"{seq:6d}  {series:<15s} {r['peak_mb']:9.1f} {model:9.1f} {r['rss_default_mb']:11.1f} "
                f"{r['seconds']:9.3f}"
            )
            if e is not None and series != "eager":
                line += (
                    f"             {_ratio(r['peak_mb'], e['peak_mb']):6.3f} "
                    f"{_ratio(r['rss_default_mb'], e['rss_default_mb']):6.3f} "
                    f"{r['seconds'] / e['seconds']:6.3f}  {_max_rel(r['metrics'], e['metrics']):12.2e}"
                )
            print(line)


def _ratio(a: float, b: float) -> float:
    """a / b, NaN where b is not positive (a toy pass may add no page at all)."""
    return a / b if b > 0 else float("nan")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _targets(setup: Setup, rows: dict[str, dict[int, dict]]) -> None:
    seqs, eager = setup.sizes["seqs"], rows["eager"]
    for series in SERIES:
        points = [(s, r["peak_mb"]) for s, r in sorted(rows[series].items())]
        if len(points) >= 2:
            print(
                f"memory slope {series:<15s} (log-log fit of the peak, L={points[0][0]}..{points[-1][0]}): "
                f"{slope(points):.2f}   (last two points: {slope(points[-2:]):.2f})"
            )
    at = setup.target_seq
    for series in SERIES[1:]:
        points = [(s, r["peak_mb"]) for s, r in sorted(rows[series].items())]
        if len(points) >= 2:
            s = slope(points)
            print(f"target: {series} memory slope {s:.2f} <= 1.2: {_verdict(s <= 1.2)}")
        r = rows[series].get(at)
        if r is None or at not in eager:
            print(f"target: {series} peak at L={at} <= 0.1 x eager's: not measured for both")
            continue
        ratio = _ratio(r["peak_mb"], eager[at]["peak_mb"])
        rss = _ratio(r["rss_default_mb"], eager[at]["rss_default_mb"])
        print(
            f"target: {series} peak at L={at} / eager's {ratio:.3f} <= 0.1: {_verdict(ratio <= 0.1)}"
            f"   (RSS with the default malloc: {rss:.3f})"
        )
    block = rows["blockwise"]
    first = seqs[0]
    if first in eager and first in block:
        ratio = block[first]["seconds"] / eager[first]["seconds"]
        print(
            f"target: blockwise time per sample at L={first} / eager's {ratio:.3f} <= 1.2: "
            f"{_verdict(ratio <= 1.2)}"
        )
    long = [s for s in seqs if s >= setup.long_seq and s in eager and s in block]
    if long:
        ratios = [block[s]["seconds"] / eager[s]["seconds"] for s in long]
        shown = ", ".join(f"L={s}: {r:.3f}" for s, r in zip(long, ratios, strict=True))
        print(
            f"target: blockwise time per sample / eager's < 1 at L >= {long[0]} ({shown}): "
            f"{_verdict(max(ratios) < 1)}"
        )


def main(setup: Setup) -> None:
    t_start = time.perf_counter()
    if setup.smoke:
        print(SMOKE_NOTE)
    m = setup.sizes["model"]
    print(
        f"flow_memory: LLaMA {m['num_hidden_layers']} layers x {m['hidden_size']} hidden, "
        f"{m['num_attention_heads']} heads ({m['num_key_value_heads']} key-value), {setup.sizes['dtype']}, "
        f"1 sample per pass, block size {setup.block_size}, device {setup.device}, {THREADS} threads "
        f"(OMP_WAIT_POLICY={OMP_WAIT_POLICY}), fastest of {setup.repeats} passes, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if setup.device != "cpu":
        import torch

        print(f"device {setup.device}: {torch.cuda.get_device_name(setup.device)}, torch {torch.__version__}")
    rows = _measure(setup)
    _table(setup, rows)
    print()
    _targets(setup, rows)
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=SERIES)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--measure", choices=["time", "memory"], default="time")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, one pass: a seconds-long rot check")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--block-size", type=int, default=128, help="query rows per block (blockwise backend)")
    args = ap.parse_args()
    run = Setup(args.smoke, check_device(args.device, "flow_memory"), args.block_size)
    if args.worker:
        print(json.dumps(worker(run, args.worker, args.seq, args.measure)))
    else:
        main(run)
