"""The CUDA paths (marker `gpu`): skipped without a CUDA device, with the reason; on a GPU machine
`python -m pytest -m gpu` or `python scripts/gpu_check.py` runs them. Each takes seconds on an H200.

- the flow engine on CUDA in float32 and bf16 against the CPU float64 reference (tolerances from the
  arithmetic: `cuda_tolerance`);
- the flow callback inside a `trainer=gpu` run (flow/epoch_*.csv);
- a tiny LLaMA fit + test with `trainer=gpu` (bf16-mixed) through `mre.runner.run`, both directions;
- QLoRA (`model=tiny_llama_qlora`, 4-bit NF4 + LoRA): forward/backward on CUDA and a Lightning run
  (skipped when bitsandbytes is not installed);
- `trainer=fsdp` and `trainer=deepspeed` on one device, without and with the flow callback (skipped when
  the strategy's package is not installed);
- batched WLI generation on CUDA equal to one sample at a time.

The runs use `logger=csv` (tests.test_train.small_cfg): W&B is not needed.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from mre.data.batches import Collator
from mre.flow.engine import FlowEngine
from mre.results import read_jsonl
from mre.runner import run
from mre.tasks import generative
from tests.flow_models import collate, make_samples, tiny_llama
from tests.test_flow_callback import FAST, read_csv
from tests.test_flow_engine import reference
from tests.test_train import small_cfg

CUDA = torch.cuda.is_available()
DEVICE = "cuda"
GPU = "trainer=gpu"  # accelerator gpu, one device, precision bf16-mixed
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason="no CUDA device (torch.cuda.is_available() is False)"),
]

U32 = 2.0**-24  # unit roundoff of float32 (24-bit significand)
U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand: 7 stored bits + the implicit one)


def roundings(n_layers: int) -> int:
    """Rounded tensors on the longest path into one element of a saliency map I_l.

    Per LLaMA decoder layer, forward: input RMSNorm, q/k/v projection, rotary embedding, scores, softmax
    (float32, then cast to the model dtype), A @ V, o-projection, residual add, post-attention RMSNorm,
    gate/up projections, SiLU * up, down projection, residual add: 14. Then the final norm, the LM head and
    the float32 cross-entropy: 3. The backward pass (dL/dA) rounds as many again: 2 (14 n + 3) in all.
    """
    return 2 * (14 * n_layers + 3)


def cuda_tolerance(maps: torch.Tensor, u: float, width: int) -> torch.Tensor:
    """[layers] absolute tolerance of the engine in precision `u` against the float64 reference, per layer,
    for an element of I_l and hence for any mean of elements (S_wp, S_pq, S_ww).

    Each rounding adds a relative error of at most u to the tensor it rounds; to first order these add up
    along the N = `roundings(n_layers)` roundings of the path. The worst case N u is useless in bf16 (90 u =
    35 % of the scale for 3 layers), and rounding errors of different operations are independent in sign:
    the probabilistic bound (Higham & Mary, "A new approach to probabilistic rounding error analysis",
    2019) is lambda sqrt(N) u with a small lambda; lambda = 2 here. The errors are relative to the terms of
    the sums, not to the (possibly cancelling: heads, residuals) results, so they are taken at the scale of
    the layer's largest element, as `tests.flow_models.map_tolerance` does. The float64 reference
    itself runs LLaMA's eager softmax in float32 (`map_tolerance`): (width + 1) u32 on the same scale.

    For 3 layers (N = 90): 19 u + (width + 1) u32, times max(I_l). Measured on the CPU (6 seeds, 4 samples,
    batched with extra padding): at most 5.1 u32 (float32, S) / 18 u32 (float32, elements), and 2.8 u_bf16
    (bf16, S) / 4.3 u_bf16 (bf16, elements).
    """
    n_layers = maps.shape[0]
    scale = maps.flatten(1).amax(1)
    return (2.0 * math.sqrt(roundings(n_layers)) * u + (width + 1) * U32) * scale


@pytest.fixture
def ieee_float32():
    """float32 matmuls without TF32 (torch's default, restated: a TF32 run would need u = 2^-11)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def to_cuda(batch: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class DeviceProbe(L.Callback):
    """Where the first training batch really ran: written to <run dir>/device_probe.json."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0 and trainer.is_global_zero:
            info = {
                "module_device": str(pl_module.device),
                "batch_device": str(batch["input_ids"].device),
                "param_devices": sorted({str(p.device) for p in pl_module.parameters()}),
                "precision": str(trainer.precision),
                "strategy": type(trainer.strategy).__name__,
            }
            Path(trainer.default_root_dir, "device_probe.json").write_text(json.dumps(info))


PROBE = "+callbacks.probe._target_=tests.test_gpu.DeviceProbe"


def assert_ran_on_cuda(run_dir: Path, precision: str = "bf16-mixed") -> dict:
    info = json.loads((run_dir / "device_probe.json").read_text())
    assert info["module_device"].startswith(DEVICE) and info["batch_device"].startswith(DEVICE), info
    assert all(d.startswith(DEVICE) for d in info["param_devices"]), info
    assert info["precision"] == precision, info
    return info


def assert_test_metrics(metrics: dict[str, float], cfg) -> None:
    run_dir = Path(cfg.paths.output_dir)
    assert "test/f1" in metrics, metrics
    for k, v in metrics.items():
        assert math.isfinite(v), k
        if k != "test/loss":
            assert 0.0 <= v <= 1.0, (k, v)
    assert json.loads((run_dir / "metrics.json").read_text()).keys() == metrics.keys()
    assert len(read_jsonl(run_dir / "predictions.jsonl")) == cfg.dataset.n_test


# ------------------------------------------------------------------------------------------------
# the flow engine on CUDA
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_flow_engine_on_cuda_matches_the_float64_reference(dtype, ieee_float32):
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} does not support bfloat16")
    u = U32 if dtype is torch.float32 else U_BF16
    low = tiny_llama(seed=21).to(dtype)  # the weights rounded to `dtype` once ...
    ref_model = copy.deepcopy(low).double()  # ... and exactly the same weights in float64 on the CPU
    model = low.to(DEVICE)
    samples = make_samples(6, seed=21)
    batch = collate(samples, extra_pad=2)
    width = batch["input_ids"].shape[1]
    res = FlowEngine(model, keep_maps="layer").compute(to_cuda(batch))
    assert res.s_ww.dtype == torch.float64 and res.s_ww.device.type == "cpu"
    assert all(p.grad is None for p in model.parameters())
    refs = reference(ref_model, samples)
    maps = res.maps.double().cpu()
    for b, ((s_wp, s_pq, s_ww), counts, ref_maps) in enumerate(refs):
        assert (int(res.n_wp[b]), int(res.n_pq[b]), int(res.n_ww[b])) == counts, f"counts {b}"
        atol = cuda_tolerance(ref_maps, u, width)
        for name, got, want in (
            ("wp", res.s_wp[b], s_wp),
            ("pq", res.s_pq[b], s_pq),
            ("ww", res.s_ww[b], s_ww),
        ):
            want = torch.tensor(want, dtype=torch.float64)
            assert torch.equal(torch.isnan(got), torch.isnan(want)), f"S_{name}[{b}] NaN pattern"
            ok = ~torch.isnan(want)
            excess = ((got - want).abs() - atol)[ok]
            assert (excess <= 0).all(), f"S_{name}[{b}] {dtype}: {got[ok].tolist()} vs {want[ok].tolist()}"
        n = len(samples[b]["input_ids"])
        excess = ((maps[b, :, -n:, -n:] - ref_maps).abs() - atol.view(-1, 1, 1)).max()
        assert excess <= 0, f"sample {b}: a map element is {float(excess):.3g} beyond the tolerance"


# ------------------------------------------------------------------------------------------------
# Lightning runs with trainer=gpu
# ------------------------------------------------------------------------------------------------


def test_flow_callback_on_cuda_writes_every_epoch(tmp_path):
    run(small_cfg(tmp_path, *FAST, GPU, PROBE))
    assert_ran_on_cuda(tmp_path)
    for epoch in (-1, 0, 1):
        rows = read_csv(tmp_path / "flow" / f"epoch_{epoch}.csv")
        assert [int(r["layer"]) for r in rows] == [0, 1]
        for r in rows:
            for m in ("S_wp", "S_pq", "S_ww"):
                assert int(r[f"{m}_n"]) == 16
                assert math.isfinite(float(r[m])) and 0 <= float(r[f"{m}_lo"]) <= float(r[m])
        assert len(read_csv(tmp_path / "flow" / f"epoch_{epoch}_samples.csv")) == 16 * 2
    assert (tmp_path / "flow" / "evolution.png").exists()


@pytest.mark.parametrize("direction", ["wli", "tli"])
def test_fit_and_test_on_cuda_bf16_mixed(tmp_path, direction):
    cfg = small_cfg(tmp_path, GPU, f"direction={direction}", "trainer.max_epochs=1", PROBE)
    assert cfg.trainer.precision == "bf16-mixed"
    metrics = run(cfg)
    assert_ran_on_cuda(tmp_path)
    assert_test_metrics(metrics, cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "model" / "config.json").exists()
    losses = [
        float(r["train/loss"]) for r in read_csv(tmp_path / "csv" / "metrics.csv") if r.get("train/loss")
    ]
    assert losses and all(math.isfinite(x) for x in losses)


# ------------------------------------------------------------------------------------------------
# QLoRA
# ------------------------------------------------------------------------------------------------


def needs_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (scripts/fetch_gpu_wheels.sh fetches its wheel)")


def test_qlora_forward_backward_on_cuda(tmp_path):
    needs_bitsandbytes()
    parts = generative.build(small_cfg(tmp_path, "model=tiny_llama_qlora"), tmp_path)
    module = parts.module
    with torch.device(DEVICE):  # as Lightning builds it (configure_model under the strategy's device)
        module.configure_model()
    module.to(DEVICE)
    quantized = [m for m in module.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "no 4-bit layers"
    for m in quantized:
        assert m.weight.device.type == DEVICE and m.weight.quant_state.quant_type == "nf4"
    batch = to_cuda(next(iter(parts.datamodule.train_dataloader())))
    loss = module(batch)[1]
    assert torch.isfinite(loss)
    loss.backward()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    grads = [p.grad for p in trainable.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # lora_B starts at 0, so lora_A's gradient is 0 at first
    assert all(p.grad is None for n, p in module.named_parameters() if n not in trainable)


def test_qlora_run_with_flow_on_cuda(tmp_path):
    needs_bitsandbytes()
    cfg = small_cfg(tmp_path, *FAST, "model=tiny_llama_qlora", GPU, "trainer.max_epochs=1", PROBE)
    metrics = run(cfg)
    assert_ran_on_cuda(tmp_path)
    assert_test_metrics(metrics, cfg)
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert len(read_csv(tmp_path / "flow" / "epoch_0.csv")) == 2


# ------------------------------------------------------------------------------------------------
# sharded strategies on one device
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [False, True], ids=["fit", "flow"])
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategy_on_one_device(tmp_path, strategy, flow):
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install deepspeed; trainer=deepspeed needs it)")
    if not (torch.distributed.is_available() and torch.distributed.is_nccl_available()):
        pytest.skip("torch.distributed with NCCL is not available")
    args = [*FAST, f"trainer={strategy}", "trainer.devices=1", "trainer.max_epochs=1", PROBE]
    cfg = small_cfg(tmp_path, *args, f"flow.enabled={str(flow).lower()}")
    metrics = run(cfg)
    assert_ran_on_cuda(tmp_path)
    assert_test_metrics(metrics, cfg)
    if flow:
        for epoch in (-1, 0):
            rows = read_csv(tmp_path / "flow" / f"epoch_{epoch}.csv")
            assert len(rows) == 2 and all(math.isfinite(float(r["S_pq"])) for r in rows)
    else:  # the exported model loads as a plain transformers model, every weight present
        from transformers import AutoModelForCausalLM

        _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "model", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info


# ------------------------------------------------------------------------------------------------
# batched generation
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def first_divergence(module, batched: dict, row: int, single: dict) -> tuple[float, float, float]:
    """At the first step where the greedy paths of one sample part: the top-2 logit gap of the per-sample
    layout, the largest logit difference between the two layouts and the largest |logit| at that step."""
    gen = dict(
        max_new_tokens=module.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=module.builder.stop_ids,
        pad_token_id=module.tokenizer.pad_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    a = module.model.generate(input_ids=batched["prompt_ids"], attention_mask=batched["prompt_mask"], **gen)
    b = module.model.generate(input_ids=single["prompt_ids"], attention_mask=single["prompt_mask"], **gen)
    for sa, sb in zip(a.scores, b.scores, strict=False):
        if sa[row].argmax() != sb[0].argmax():
            top = sb[0].float().topk(2).values
            return float(top[0] - top[1]), float((sa[row] - sb[0]).abs().max()), float(sb[0].abs().max())
    raise AssertionError("the decoded answers differ but the greedy paths never do")


def test_batched_wli_generation_on_cuda_equals_one_at_a_time(tmp_path, ieee_float32):
    """The left-padded batch (mask + explicit positions, KV cache) decodes exactly what each sample decodes
    alone. A difference is accepted only as a rounding near-tie: at the first divergent step the two
    layouts' logits differ by delta <= 1e-4 max(1, max |logit|) (the padded and unpadded layouts sum in
    other orders and may run other attention kernels; float32 rounding of this 2-layer model is ~1e-6 of
    the scale) and the per-sample top-2 gap is <= 2 delta, so rounding alone flipped the arg-max."""
    parts = generative.build(small_cfg(tmp_path, "direction=wli", "flow.enabled=false"), tmp_path)
    module = parts.module
    with torch.device(DEVICE):
        module.configure_model()
    module.to(DEVICE).train()

    def batches():
        while True:
            yield from parts.datamodule.train_dataloader()

    # train briefly (as bench/wli_generation.py does) so that answers end at EOS, at realistic lengths
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    for batch in itertools.islice(batches(), 100):
        opt.zero_grad(set_to_none=True)
        module(to_cuda(batch))[1].backward()
        opt.step()
    module.eval()
    context = module.context
    items = context.items("test")[:32]
    collate_items = Collator(context.tokenizer.pad_token_id)
    bs = 16
    batched = [to_cuda(collate_items(items[i : i + bs])) for i in range(0, len(items), bs)]
    single = [to_cuda(collate_items([it])) for it in items]
    together = [text for b in batched for text in module.generate(b)]
    alone = [module.generate(s)[0] for s in single]
    assert len(together) == len(alone) == 32
    assert any(alone), "every answer is empty"
    for i in (i for i in range(len(items)) if together[i] != alone[i]):
        gap, delta, scale = first_divergence(module, batched[i // bs], i % bs, single[i])
        assert delta <= 1e-4 * max(1.0, scale) and gap <= 2 * delta, (
            f"sample {i}: batched {together[i]!r} vs alone {alone[i]!r}: top-2 gap {gap:.3g}, logits differ "
            f"by {delta:.3g} (not a rounding near-tie)"
        )
