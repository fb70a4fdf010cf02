"""Speed and peak memory of the flow engine versus two baselines (run by hand, not a test).

    python bench/flow_speed.py            # ~2-3 minutes on 2 CPU cores
    python bench/flow_speed.py --smoke    # toy sizes, seconds: a rot check, numbers mean nothing
    python bench/flow_speed.py --device cuda   # on a GPU: larger sizes (CUDA_SIZES), ~2 minutes on an H200
    python bench/flow_speed.py --model smollm2_135m_lora   # a real model (also gemma3_270m_lora)

Same tiny LLaMA (8 layers x 256 hidden, 4 heads, intermediate 688, vocab 2000, random weights, float32)
and the same 32 samples of 256 tokens for every method:

  (a) engine     FlowEngine.compute at batch sizes 1, 4, 8, 16 (the best is the one with most samples/s);
  (b) reference  the "Label Words are Anchors" method: a ones tensor with requires_grad multiplied onto the
                 attention probabilities (eager), one sample at a time, weights NOT frozen (weight
                 gradients are computed, then zeroed), every layer's full saliency map copied out and the
                 three means computed from the maps;
  (c) train step one ordinary training step (LM loss on all tokens, forward + backward with weight
                 gradients, default sdpa attention) at the engine's best batch size;
  (d) floor      what any exact method must at least do, for scale: eager forward + activation-only
                 backward of the target loss, frozen weights, no saliency (engine/floor = the engine's
                 own overhead).

The engine's best batch size is the fastest one whose peak memory stays within the reference's (the
memory target is a constraint); the fastest overall is printed too.

Each method runs in its own subprocess (torch.set_num_threads(2)). Peak memory = the peak resident set
size (VmHWM, reset through /proc/self/clear_refs after the model and data are built) minus the resident
size at that moment, i.e. what the method itself adds, allocator caching included. One warm-up batch runs
before the timed loops (and counts for memory); the fastest of FLOW_BENCH_REPEATS (default 2) timed
loops over all samples counts, which keeps the numbers usable on a machine that is not idle. CPU time
(process_time, all threads) is reported too: on a busy machine it is the steadier measure of work
(with FLOW_BENCH_THREADS=1 it has no spin-waiting in it).
FLOW_BENCH_THREADS (default 2) sets the torch threads; OMP_WAIT_POLICY defaults to PASSIVE (see below).

`--smoke`: a 2-layer x 64 model, 4 samples of 32 tokens, batch sizes 1 and 2, one timed loop (the workers
get `--smoke` too); every method and ratio line runs, the numbers mean nothing.

`--device cuda` (default `cpu`): every method runs on the GPU (the workers get `--device` too), float32
without TF32 (torch's default), with the larger CUDA_SIZES (a 12-layer x 768 LLaMA with a 32,000-token
vocabulary, 64 samples of 512 tokens, batch sizes 1, 8, 32) unless `--smoke` or `--model` sets the sizes.
Peak memory is then `torch.cuda.max_memory_allocated()` (reset after the model and data are on the device)
minus the memory allocated at that moment, i.e. the tensors the method itself adds (the caching
allocator's reserve is not counted); every timed loop ends with `torch.cuda.synchronize()`. CPU time on
CUDA is the host's time (kernel launches and waiting), not the work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _memory import PeakMemory, check_device, sync

# the measured sizes; --smoke replaces them with SMOKE_SIZES (see `_configure`)
SIZES = {
    "n_samples": 32,
    "seq": 256,
    "batch_sizes": (1, 4, 8, 16),
    "text": (4, 180),  # text token range [start, end) of every sample
    "anchor": (190, 240),  # anchor token range; q = seq - 1
    "model": {
        "num_hidden_layers": 8,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 688,
        "vocab_size": 2000,
    },
}
# --device cuda: a GPU finishes the CPU sizes in milliseconds; these take about two minutes on an H200
# (mostly the workers' start-up: importing torch and transformers, CUDA initialisation)
CUDA_SIZES = {
    "n_samples": 64,
    "seq": 512,
    "batch_sizes": (1, 8, 32),
    "text": (4, 380),
    "anchor": (390, 480),
    "model": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "intermediate_size": 2048,
        "vocab_size": 32000,
    },
}
SMOKE_SIZES = {
    "n_samples": 4,
    "seq": 32,
    "batch_sizes": (1, 2),
    "text": (2, 20),
    "anchor": (22, 28),
    "model": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 200,
    },
}
# --model <conf/model name>: a real model (e.g. smollm2_135m_lora: SmolLM2-135M-Instruct + LoRA,
# gemma3_270m_lora: Gemma 3 270M + LoRA); the train step is then the model's own training step (LoRA:
# adapter gradients only; the loss on the last ANSWER_TOKENS positions' logits only, as the project's
# training loss keeps them: with Gemma's 262k vocabulary the output head over every position would
# otherwise be most of the step), random token ids
REAL_SIZES = {
    "n_samples": 8,
    "seq": 128,
    "batch_sizes": (1, 4, 8),
    "text": (4, 90),
    "anchor": (95, 120),
}
ANSWER_TOKENS = 16  # --model: the train step's loss positions (about a WLI answer)
MATMUL_N = 2048  # the machine's rate: float32 matmuls of two N x N matrices
SMOKE = False
MODEL: str | None = None
DEVICE = "cpu"
N_SAMPLES = SIZES["n_samples"]
SEQ = SIZES["seq"]
BATCH_SIZES = SIZES["batch_sizes"]
THREADS = int(os.environ.get("FLOW_BENCH_THREADS", "2"))
REPEATS = int(os.environ.get("FLOW_BENCH_REPEATS", "2"))  # timed loops per method; the fastest counts
# sleeping (not spinning) OpenMP threads: on a machine shared with other jobs, spinning 2-thread barriers
# made every method 10x slower and the comparison meaningless; applied to every method alike
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
SMOKE_NOTE = "SMOKE RUN (toy sizes, 1 repeat): checks that the benchmark runs; its numbers mean nothing"


def _configure(smoke: bool, model: str | None = None, device: str = "cpu") -> None:
    """Switch the module's sizes to the smoke, real-model or CUDA ones (driver and workers alike)."""
    global SMOKE, MODEL, DEVICE, N_SAMPLES, SEQ, BATCH_SIZES, REPEATS, SIZES
    DEVICE = device
    if device != "cpu" and not smoke and not model:
        SIZES = CUDA_SIZES
    if model:
        MODEL, SIZES = model, {**REAL_SIZES, "model": None}
    if smoke:
        SMOKE, REPEATS = True, 1
        SIZES = SMOKE_SIZES if not model else {**SIZES, "n_samples": 2, "batch_sizes": (1, 2)}
    N_SAMPLES, SEQ, BATCH_SIZES = SIZES["n_samples"], SIZES["seq"], SIZES["batch_sizes"]


def _cuda() -> bool:
    return DEVICE != "cpu"


def _sync() -> None:
    sync(DEVICE)


# ------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------


def _build():
    import torch

    torch.manual_seed(0)
    if MODEL:
        from mre.config import compose
        from mre.data.tokenizer import load_tokenizer
        from mre.hub import model_folder
        from mre.models import build_model

        cfg = compose([f"model={MODEL}"])
        model = build_model(cfg.model, load_tokenizer(model_folder(cfg.model)), seed=0)
        vocab = model.get_input_embeddings().num_embeddings
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**SIZES["model"], max_position_embeddings=512)
        model, vocab = LlamaForCausalLM(config).float(), config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (N_SAMPLES, SEQ), generator=g)
    target = torch.randint(0, vocab, (N_SAMPLES,), generator=g)
    text = torch.tensor([list(SIZES["text"])] * N_SAMPLES)
    anchor = torch.tensor([list(SIZES["anchor"])] * N_SAMPLES)
    model, ids, target = model.to(DEVICE), ids.to(DEVICE), target.to(DEVICE)
    return model, ids, target, text, anchor


def _batch(ids, target, text, anchor, lo: int, hi: int) -> dict:
    import torch

    n = hi - lo
    return {
        "input_ids": ids[lo:hi],
        "attention_mask": torch.ones(n, SEQ, dtype=torch.long, device=ids.device),
        "text_range": text[lo:hi],
        "anchor_range": anchor[lo:hi],
        "q": torch.full((n,), SEQ - 1, device=ids.device),
        "target": target[lo:hi],
    }


def _means_from_maps(maps, text, anchor, q):
    """The three means of one sample from its full maps [layers, L, L] (reference side)."""
    import torch

    seq = maps.shape[-1]
    i = torch.arange(seq).view(seq, 1)
    j = torch.arange(seq).view(1, seq)
    causal = (j < i) & (i <= q)
    in_p = (i >= anchor[0]) & (i < anchor[1])
    wp = causal & in_p & (j >= text[0]) & (j < text[1])
    pq = causal & (i == q) & (j >= anchor[0]) & (j < anchor[1])
    ww = causal & ~wp & ~pq
    return [[float(m[c].mean()) for c in (wp, pq, ww)] for m in maps]


def _register_lwa():
    """Eager LLaMA attention with the LWA trick: probs * ones(requires_grad) -> ones.grad = A * dL/dA."""
    import torch
    from torch import nn
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.llama.modeling_llama import repeat_kv

    adapters: list = []

    def lwa_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key_states = repeat_kv(key, module.num_key_value_groups)
        value_states = repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
        ones = torch.ones_like(w, requires_grad=True)
        adapters.append(ones)
        w = w * ones
        out = torch.matmul(w, value_states).transpose(1, 2).contiguous()
        return out, w

    AttentionInterface.register("lwa_ref", lwa_attention)
    AttentionMaskInterface.register("lwa_ref", eager_mask)
    return adapters


def _hf(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def worker(method: str, bs: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    model, ids, target, text, anchor = _build()
    results: list = []

    if method == "engine":
        from mre.flow.engine import FlowEngine

        engine = FlowEngine(model)  # default FlowOptions: the DESIGN.md measurement

        def run(lo, hi):
            r = engine.compute(_batch(ids, target, text, anchor, lo, hi))
            results.extend(torch.stack([r.s_wp, r.s_pq, r.s_ww], -1).tolist())

    elif method == "reference":
        adapters = _register_lwa()
        _hf(model).set_attn_implementation("lwa_ref")
        model.eval()

        def run(lo, hi):
            for b in range(lo, hi):
                adapters.clear()
                logits = model(input_ids=ids[b : b + 1], use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits[0, SEQ - 1][None], target[b : b + 1])
                loss.backward()
                maps = torch.stack([a.grad[0].sum(0).abs().detach().cpu().clone() for a in adapters])
                results.append(_means_from_maps(maps, text[b].tolist(), anchor[b].tolist(), SEQ - 1))
                model.zero_grad(set_to_none=True)

    elif method == "floor":
        _hf(model).set_attn_implementation("eager")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def run(lo, hi):
            emb = model.get_input_embeddings()(ids[lo:hi]).detach().requires_grad_(True)
            logits = model(inputs_embeds=emb, use_cache=False, logits_to_keep=1).logits
            torch.nn.functional.cross_entropy(logits[:, -1], target[lo:hi], reduction="sum").backward()

    elif method == "train" and MODEL:  # with LoRA only the adapters get gradients: a LoRA training step
        model.train()

        def run(lo, hi):
            logits = model(input_ids=ids[lo:hi], use_cache=False, logits_to_keep=ANSWER_TOKENS).logits
            gold = ids[lo:hi, SEQ - ANSWER_TOKENS + 1 :]
            torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), gold.flatten()).backward()
            model.zero_grad(set_to_none=True)

    elif method == "train":
        model.train()

        def run(lo, hi):
            out = model(input_ids=ids[lo:hi], labels=ids[lo:hi], use_cache=False)
            out.loss.backward()
            model.zero_grad(set_to_none=True)

    else:
        raise ValueError(method)

    memory = PeakMemory(DEVICE)
    memory.start()
    run(0, bs)  # warm-up (counts for memory, not for time)
    _sync()
    elapsed = cpu = float("inf")
    for _ in range(REPEATS):  # the fastest of REPEATS loops: robust to a busy machine
        results.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, N_SAMPLES, bs):
            run(lo, min(lo + bs, N_SAMPLES))
        _sync()
        elapsed = min(elapsed, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return {
        "method": method,
        "bs": bs,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "samples_per_s": N_SAMPLES / elapsed,
        "peak_mb": memory.peak_mb(),
        "means": results,
    }


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def matmul_rate() -> float:
    """GFLOP/s of float32 MATMUL_N x MATMUL_N matmuls on DEVICE with THREADS threads (best of 3 loops):
    the machine's yardstick beside the models' rates, measured in the same run."""
    import torch

    torch.set_num_threads(THREADS)
    n, reps = MATMUL_N, 3 if SMOKE else 10
    a = torch.randn(n, n, device=DEVICE)
    b = torch.randn(n, n, device=DEVICE)
    best = float("inf")
    a @ b  # warm-up
    for _ in range(3):
        _sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best / 1e9


def _spawn(method: str, bs: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    cmd = [sys.executable, __file__, "--worker", method, "--bs", str(bs), *(["--smoke"] if SMOKE else [])]
    cmd += ["--model", MODEL] if MODEL else []
    cmd += ["--device", DEVICE]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {method} bs={bs} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _max_rel(a: list, b: list) -> float:
    import math

    worst = 0.0
    for x, y in zip(_flat(a), _flat(b), strict=True):
        if math.isnan(x) and math.isnan(y):
            continue
        worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
    return worst


def _flat(x):
    if isinstance(x, list):
        for v in x:
            yield from _flat(v)
    else:
        yield x


def main() -> None:
    t_start = time.perf_counter()
    m = SIZES["model"]
    if SMOKE:
        print(SMOKE_NOTE)
    what = (
        f"model={MODEL}"
        if MODEL
        else (
            f"tiny LLaMA {m['num_hidden_layers']} layers x {m['hidden_size']} hidden, "
            f"{m['num_attention_heads']} heads"
        )
    )
    target = 1.0 if MODEL else 0.8  # a LoRA step skips the base weights' gradients: a cheaper yardstick
    print(
        f"flow_speed: {what}, {N_SAMPLES} samples x {SEQ} tokens, "
        f"{THREADS} threads (OMP_WAIT_POLICY={OMP_WAIT_POLICY}), best of {REPEATS} loops, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if _cuda():
        import torch

        print(
            f"device {DEVICE}: {torch.cuda.get_device_name(DEVICE)}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}; peak memory = torch.cuda.max_memory_allocated"
        )
    rows = []

    def show(name: str, r: dict) -> None:
        print(
            f"  {name:<10s} bs={r['bs']:<3d} {r['samples_per_s']:7.2f} samples/s  "
            f"{1000 * r['cpu_seconds'] / N_SAMPLES:7.1f} CPU-ms/sample   peak +{r['peak_mb']:7.1f} MB"
        )

    for bs in BATCH_SIZES:
        rows.append(_spawn("engine", bs))
        show("engine", rows[-1])
    ref = _spawn("reference", 1)
    show("reference", ref)
    # best batch size: the fastest among those within the reference's peak memory (the memory target is a
    # constraint); the fastest overall if none is
    fastest = max(rows, key=lambda r: r["samples_per_s"])
    fitting = [r for r in rows if r["peak_mb"] <= ref["peak_mb"]]
    best = max(fitting, key=lambda r: r["samples_per_s"]) if fitting else fastest
    train = _spawn("train", best["bs"])
    show("train step", train)
    train_fast = train
    if fastest["bs"] != best["bs"]:
        train_fast = _spawn("train", fastest["bs"])
        show("train step", train_fast)
    floor = _spawn("floor", best["bs"])
    show("floor", floor)
    gflops = _spawn("matmul", 1)["gflops"]
    step = f"LoRA/model training step (loss on the last {ANSWER_TOKENS} positions)" if MODEL else "train step"
    print(
        f"{step} at bs={train['bs']}: {N_SAMPLES * SEQ / train['seconds']:.0f} tokens/s; this machine's "
        f"float32 matmul rate ({MATMUL_N}x{MATMUL_N}, {THREADS} threads): {gflops:.1f} GFLOP/s"
    )
    print(
        f"best engine batch size: {best['bs']} (fastest within the reference's peak memory; fastest overall: "
        f"bs={fastest['bs']}, {fastest['samples_per_s']:.2f} samples/s, peak +{fastest['peak_mb']:.1f} MB)"
    )
    for unit, key in (("wall", "seconds"), ("CPU", "cpu_seconds")):
        ratio = best[key] / train[key]
        print(f"{unit:>4s} time per sample  engine/train-step: {ratio:.3f}  (target <= {target})")
        print(f"{unit:>4s} time per sample  engine/reference:  {best[key] / ref[key]:.3f}  (target <= 1)")
    speedup = best["samples_per_s"] / ref["samples_per_s"]
    print(f"samples/s            engine/reference:  {speedup:.2f}x  (target >= 1)")
    print(f"peak memory          engine/reference:  {best['peak_mb'] / ref['peak_mb']:.3f}   (target <= 1)")
    print(f"peak memory          engine/train-step: {best['peak_mb'] / train['peak_mb']:.3f}")
    print(f" CPU time per sample  engine/floor:      {best['cpu_seconds'] / floor['cpu_seconds']:.3f}")
    if train_fast is not train:
        for unit, key in (("wall", "seconds"), ("CPU", "cpu_seconds")):
            ratio = fastest[key] / train_fast[key]
            print(f"{unit:>4s} time per sample  engine/train-step at bs={fastest['bs']}: {ratio:.3f}")
    agree = _max_rel(best["means"], ref["means"])
    print(f"agreement            max rel. diff engine vs reference metrics: {agree:.2e}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["engine", "reference", "train", "floor", "matmul"])
    ap.add_argument("--bs", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="toy sizes, one repeat: a seconds-long rot check")
    ap.add_argument("--model", help="a conf/model name (e.g. smollm2_135m_lora) instead of the tiny LLaMA")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every method runs")
    args = ap.parse_args()
    _configure(args.smoke, args.model, check_device(args.device, "flow_speed"))
    if args.worker == "matmul":
        print(json.dumps({"gflops": matmul_rate()}))
    elif args.worker:
        print(json.dumps(worker(args.worker, args.bs)))
    else:
        main()
