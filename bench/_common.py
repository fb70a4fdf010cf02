"""Shared set-up for the hand-run benchmarks in bench/ (not a benchmark itself).

Builds the real objects from the real configs (`mre.config.compose` -> `mre.tasks.generative.build`),
with the run directory and caches in a temporary folder, and a plain PyTorch training loop that does what
the Lightning fit loop does for `GenerativeMRE`: same model init, same batches in the same order, AdamW +
linear warm-up stepped per batch (`mre.optim`), gradient-norm clipping at the trainer config's
`gradient_clip_val`.

`--smoke` (every script): toy sizes (a smaller data set and model, one repeat) so that a script runs in
seconds and every code path is exercised; its numbers mean nothing and the header says so.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

# Before torch loads OpenMP (import this module first): with the default (active, spinning) wait policy
# two OpenMP threads on a busy 2-core machine run a training step 3-30x slower than one thread does;
# PASSIVE costs a little on an idle machine and removes that cliff. Set OMP_WAIT_POLICY to override.
if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    warnings.warn("bench/_common.py imported after torch: OMP_WAIT_POLICY=PASSIVE not applied", stacklevel=2)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from torch.optim.lr_scheduler import LambdaLR  # noqa: E402

from mre.config import compose  # noqa: E402
from mre.data.batches import Collator  # noqa: E402
from mre.data.context import TaskContext  # noqa: E402
from mre.optim import linear_warmup_decay  # noqa: E402
from mre.tasks import generative  # noqa: E402
from mre.tasks.generative import GenerativeMRE  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", 2))
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the GPU/TPU lines and tips of each fit
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")  # lightning's own use of a deprecated torch pytree API

TMP = Path(tempfile.mkdtemp(prefix="mre-bench-"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)
RUN_DIR = TMP / "run"

# --smoke: a smaller data set (still every split), a 2-layer model and fewer tokenizer merges
SMOKE_OVERRIDES = (
    "dataset.n_train=48",
    "dataset.n_dev=8",
    "dataset.n_test=32",
    "dataset.synthetic.n=120",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=2",
    "model.tokenizer.vocab_size=500",
)
SMOKE_NOTE = "SMOKE RUN (toy sizes, 1 repeat): checks that the benchmark runs; its numbers mean nothing"


def add_smoke_flag(ap) -> None:
    ap.add_argument("--smoke", action="store_true", help="toy sizes, one repeat: a seconds-long rot check")


def setup(
    direction: str,
    extra: Iterable[str] = (),
    smoke: bool = False,
    model: str = "tiny_llama",
    dataset: str = "synthetic_en",
) -> tuple:
    """(cfg, parts, module with its model built) for `model=<model> dataset=<dataset>` (the tiny LLaMA on
    synthetic data unless told); `parts` is the task's `TaskParts` (`parts.datamodule`,
    `parts.module.context`). The flow callback is off."""
    torch.set_num_threads(THREADS)
    cfg = compose(
        [
            f"model={model}",
            f"dataset={dataset}",
            f"direction={direction}",
            "flow.enabled=false",
            f"paths.output_dir={RUN_DIR}",
            f"paths.cache_dir={TMP / 'cache'}",
            *(SMOKE_OVERRIDES if smoke else ()),
            *extra,
        ]
    )
    parts = generative.build(cfg, RUN_DIR)
    parts.module.configure_model()
    return cfg, parts, parts.module


def new_module(cfg, context: TaskContext) -> GenerativeMRE:
    """A fresh module on an existing context, model not yet built (a fit calls `configure_model`)."""
    return generative.make_module(cfg, context, RUN_DIR)


def build_module(cfg, context: TaskContext) -> GenerativeMRE:
    """A fresh module with its model built from the seeded random init, as `configure_model` does in a fit."""
    module = new_module(cfg, context)
    module.configure_model()
    return module


def make_optim(module: GenerativeMRE, cfg, total_steps: int):
    """The optimizer and per-step scheduler of `mre.optim.adamw_with_warmup` (what
    `GenerativeMRE.configure_optimizers` returns), built by hand for `total_steps` optimizer steps."""
    o = cfg.optim
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    total = max(1, int(total_steps))
    warmup = min(o.warmup_steps, total)
    sched = LambdaLR(opt, functools.partial(linear_warmup_decay, warmup=warmup, total=total))
    return opt, sched


def train_plain(
    module: GenerativeMRE, cfg, batches: Iterable[dict], total_steps: int, clip: float | None = None
) -> list[float]:
    """Plain PyTorch training over `batches` (at most `total_steps`); returns the per-step losses."""
    clip = cfg.trainer.gradient_clip_val if clip is None else clip
    opt, sched = make_optim(module, cfg, total_steps)
    module.train()
    losses: list[float] = []
    for step, batch in enumerate(batches):
        if step >= total_steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = module(batch)[1]  # forward returns (logits of the answer window, loss)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    module.eval()
    return losses


def cycle_batches(dm) -> Iterable[dict]:
    """Training batches epoch after epoch (a fresh loader per epoch, as the fit loop does)."""
    while True:
        yield from dm.train_dataloader()


def pretrain(module: GenerativeMRE, cfg, dm, steps: int) -> str:
    """Train the tiny model briefly (plain loop) so that generation stops at EOS as a trained model's does."""
    if steps <= 0:
        return "untrained (random weights)"
    t0 = time.perf_counter()
    losses = train_plain(module, cfg, cycle_batches(dm), steps)
    return (
        f"trained {steps} steps (batch {cfg.data.batch_size}) in {time.perf_counter() - t0:.0f} s, "
        f"mean loss of the last {min(20, len(losses))} steps {statistics.mean(losses[-20:]):.4f}"
    )


def first_batches(context: TaskContext, n: int, batch_size: int, split: str = "test") -> list[dict]:
    """The first `n` samples of a split collated into batches of `batch_size` (left padding)."""
    items = context.items(split)[:n]
    collate = Collator(context.tokenizer.pad_token_id)
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict, dict]:
    """One warm-up call of each method, then `repeats` rounds calling each in turn (so that load from
    other processes hits all alike). Returns the last results, the wall times of every round and the
    median CPU times (process time, all threads: less sensitive to other processes than wall time)."""
    results = {k: f() for k, f in methods.items()}
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for k, f in methods.items():
            w0, c0 = time.perf_counter(), time.process_time()
            results[k] = f()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return results, wall, {k: statistics.median(v) for k, v in cpu.items()}


def header(name: str, smoke: bool = False, model: str = "tiny_llama", dataset: str = "synthetic_en") -> str:
    line = (
        f"{name}: model={model} dataset={dataset}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    return f"{SMOKE_NOTE}\n{line}" if smoke else line
