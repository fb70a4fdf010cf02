"""The blockwise flow backend (mre/flow/blockwise.py) against the eager one, on tiny float64 models.

Both backends run the module's own eager attention function on the same rows, so they differ only in
summation order: dK, dV and the pair sums are summed over blocks, and a block's products may be
blocked differently by BLAS. In float64 that is ~1e-16. Where the model's eager softmax runs in float32
(the LLaMA family, even for a float64 model), a score that differs in its last float64 bit can round to
the neighbouring float32, i.e. a probability is re-rounded: the case `map_tolerance` bounds ((L + 1)
u32 relative, reaching each element of I_l at the scale of the layer's largest element, taken from the
eager backend's own maps). So every metric must agree to relative 1e-6 plus that absolute bound, and
the input-embedding gradient (what the layers below receive) to relative 1e-6 plus that bound once
per layer at the gradient's scale.
"""

from __future__ import annotations

import types
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn
from transformers.masking_utils import causal_mask_function, eager_mask
from transformers.models.gemma3 import modeling_gemma3
from transformers.models.gpt2 import modeling_gpt2
from transformers.models.llama import modeling_llama

from mre.config import compose
from mre.flow.blockwise import BlockwiseAttention, BlockwiseLayer, RowMask, mask_rows
from mre.flow.engine import FlowEngine, FlowResult
from mre.flow.options import Backend, FlowOptions, Normalize
from mre.flow.pairs import PairSets, saliency
from tests.flow_models import (
    BOS,
    OPTION_CASES,
    OPTION_IDS,
    U32,
    collate,
    make_samples,
    tiny_gemma2,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mistral,
    tiny_qwen2,
)

RTOL = 1e-6
pytestmark = pytest.mark.usefixtures("one_thread")


def run(model: nn.Module, batch: dict, options: FlowOptions, keep_maps: str | None = None):
    """(result, gradient at the input embeddings, engine) of one pass."""
    grabbed: dict[str, Tensor] = {}

    def grab(module, args, kwargs):
        grabbed["embeds"] = kwargs["inputs_embeds"]

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        engine = FlowEngine(model, options, keep_maps=keep_maps, bos_token_id=BOS)
        res = engine.compute(batch)
    finally:
        handle.remove()
    return res, grabbed["embeds"].grad, engine


def metric_tolerance(model: nn.Module, batch: dict, options: FlowOptions) -> Tensor:
    """[B, layers] absolute tolerance of every metric (module docstring), from the eager maps; a
    per-sample share s_k = m_k / sum(m) moves by at most (d_k + s_k sum(d)) / sum(m) <= 4 d / sum(m)."""
    raw_opts = replace(options, normalize=Normalize.none, backend=Backend.eager)
    raw, _, _ = run(model, batch, raw_opts, keep_maps="layer")
    seq = batch["input_ids"].shape[1]
    atol = (seq + 1) * U32 * raw.maps.flatten(2).amax(-1).double()
    if options.normalize == Normalize.per_sample:
        total = torch.stack([raw.s_wp, raw.s_pq, raw.s_ww]).nansum(0)
        atol = 4 * atol / total
    return atol


def assert_same(
    model: nn.Module, batch: dict, options: FlowOptions | None = None, block_size: int = 4
) -> FlowResult:
    """The blockwise backend gives the eager backend's metrics and input-embedding gradient."""
    options = options or FlowOptions()
    eager, g_eager, _ = run(model, batch, replace(options, backend=Backend.eager))
    blockwise = replace(options, backend=Backend.blockwise, block_size=block_size)
    block, g_block, engine = run(model, batch, blockwise)
    n_layers = eager.n_layers
    assert engine.last_stats["fills"] == [1] * n_layers
    for name in ("n_wp", "n_pq", "n_ww"):
        assert torch.equal(getattr(block, name), getattr(eager, name)), name
    atol = metric_tolerance(model, batch, options)
    for name in ("s_wp", "s_pq", "s_ww"):
        got, want = getattr(block, name), getattr(eager, name)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{name}: NaN pattern"
        ok = ~torch.isnan(want)
        excess = (got - want).abs() - (RTOL * want.abs() + atol)
        assert (excess[ok] <= 0).all(), f"{name}: {got.tolist()} vs {want.tolist()}"
    seq = batch["input_ids"].shape[1]
    g_atol = n_layers * (seq + 1) * U32 * float(g_eager.abs().max())
    torch.testing.assert_close(g_block, g_eager, rtol=RTOL, atol=g_atol)
    return block


# ------------------------------------------------------------------------------------------------
# the attention function itself: output, dQ, dK, dV and the saliency sums
# ------------------------------------------------------------------------------------------------


def _attention_case(arch: str):
    """(attention module, its eager function, heads, key-value heads) of a tiny model's layer 1."""
    if arch == "llama":  # grouped-query heads (4 query heads, 2 key-value heads), float32 softmax
        attn = tiny_llama(seed=20).model.layers[1].self_attn
        return attn, modeling_llama.eager_attention_forward, 4, 2
    if arch == "gemma3":  # one key-value head for four query heads, query_pre_attn_scalar scaling
        attn = tiny_gemma3(seed=20).model.layers[1].self_attn
        return attn, modeling_gemma3.eager_attention_forward, 4, 1
    attn = tiny_gpt2(seed=20, scale_attn_by_inverse_layer_idx=True).transformer.h[1].attn
    return attn, modeling_gpt2.eager_attention_forward, 4, 4  # softmax in the input dtype


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_attention_gradients_and_sums_equal_autograd_through_eager(arch, block_size):
    module, eager, heads, kv_heads = _attention_case(arch)
    gen = torch.Generator().manual_seed(21)
    bsz, seq, dim = 2, 11, 16
    q = torch.randn(bsz, heads, seq, dim, dtype=torch.float64, generator=gen)
    k = torch.randn(bsz, kv_heads, seq, dim, dtype=torch.float64, generator=gen)
    v = torch.randn(bsz, kv_heads, seq, dim, dtype=torch.float64, generator=gen)
    d_out = torch.randn(bsz, seq, heads, dim, dtype=torch.float64, generator=gen)
    valid = torch.ones(bsz, seq, dtype=torch.bool)
    valid[1, :3] = False  # left padding
    mask_kwargs = {
        "batch_size": bsz,
        "q_length": seq,
        "kv_length": seq,
        "mask_function": causal_mask_function,
        "attention_mask": valid,
        "dtype": torch.float64,
    }
    full_mask = eager_mask(**mask_kwargs)
    full_mask.diagonal(dim1=-2, dim2=-1).zero_()  # the flow's mask: padding rows attend to themselves
    kwargs = {"scaling": module.scaling, "dropout": 0.0}
    pairs = PairSets(
        valid=valid,
        q=torch.tensor([seq - 1, seq - 1]),
        text=torch.tensor([[1, 5], [4, 7]]),
        anchor=torch.tensor([[6, 9], [8, 10]]),
        sink=torch.tensor([-1, 3]),
        all_prior=False,
    )

    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, probs = eager(module, *leaves, full_mask, **kwargs)
    probs.retain_grad()
    out.backward(d_out)
    _, sal = saliency(probs.detach(), probs.grad)
    want_sums = masked_sums(pairs, sal, 0)

    stored: list[Tensor] = []
    rows = mask_rows(RowMask(mask_kwargs))
    layer = BlockwiseLayer(eager, module, rows, kwargs, block_size, pairs, stored.append)
    block_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    block_out = BlockwiseAttention.apply(*block_leaves, layer)
    block_out.backward(d_out)

    scale = (seq + 1) * U32  # a float32 softmax may re-round a probability (module docstring)
    torch.testing.assert_close(block_out, out, rtol=RTOL, atol=scale * float(out.detach().abs().max()))
    for name, got, want in zip("qkv", block_leaves, leaves, strict=True):
        atol = scale * float(want.grad.abs().max())
        torch.testing.assert_close(got.grad, want.grad, rtol=RTOL, atol=atol, msg=f"d{name}")
    assert len(stored) == 1  # one store per layer backward
    torch.testing.assert_close(stored[0], want_sums, rtol=RTOL, atol=scale * float(want_sums.abs().max()))
    assert (want_sums[:, 0] > 0).all() and (want_sums[:, 2] > 0).all()  # not degenerate


def masked_sums(pairs: PairSets, sal: Tensor, start: int) -> Tensor:
    """[B, 3] sums of saliency rows start.. over the pair masks: the definition `PairSets.sums` computes
    by prefix sums."""
    masks = pairs.rows(start, start + sal.shape[1]).double()
    return (masks * sal.double().unsqueeze(1)).sum((-2, -1))


@pytest.mark.parametrize("all_prior", [False, True])
def test_pair_sums_by_prefix_sums_equal_the_masked_sums(all_prior):
    """Any block of rows, any window of columns (saliency outside it is 0, as for masked keys), left
    padding, a sink, a sample without anchor, q before the end."""
    gen = torch.Generator().manual_seed(22)
    bsz, seq = 3, 17
    valid = torch.ones(bsz, seq, dtype=torch.bool)
    valid[1, :4] = False
    pairs = PairSets(
        valid=valid,
        q=torch.tensor([16, 16, 13]),
        text=torch.tensor([[1, 6], [4, 9], [0, 5]]),
        anchor=torch.tensor([[7, 11], [10, 14], [0, 0]]),
        sink=torch.tensor([0, 4, -1]),
        all_prior=all_prior,
    )
    sal = torch.rand(bsz, seq, seq, dtype=torch.float64, generator=gen)
    for start, stop, col0, col1 in [(0, seq, 0, seq), (5, 12, 2, 12), (12, 17, 9, 17), (16, 17, 0, 17)]:
        window = torch.zeros_like(sal)
        window[:, start:stop, col0:col1] = sal[:, start:stop, col0:col1]
        got = pairs.sums(sal[:, start:stop, col0:col1], start, col0)
        want = masked_sums(pairs, window[:, start:stop], start)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_row_mask_rows_are_the_rows_of_the_full_mask():
    """Sliding window, left padding and the allowed diagonal, block by block."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[0, :4] = False
    mask = RowMask(
        {
            "batch_size": 2,
            "q_length": 13,
            "kv_length": 13,
            "mask_function": sliding_window_causal_mask_function(5),
            "attention_mask": valid,
            "dtype": torch.float32,
        }
    )
    full = mask.full()
    assert full.shape == (2, 1, 13, 13) and (full.diagonal(dim1=-2, dim2=-1) == 0).all()
    assert (full[0, 0, 2, :2] < 0).all()  # a padding row still masks the other padding columns
    assert torch.equal(torch.cat([mask.rows(s, min(s + 4, 13)) for s in range(0, 13, 4)], dim=2), full)


# ------------------------------------------------------------------------------------------------
# whole models: blockwise = eager
# ------------------------------------------------------------------------------------------------

MODELS = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "mistral": tiny_mistral,  # sliding window 8, prompts of 10-22 tokens
    "gpt2": tiny_gpt2,
    "gpt2_layer_scaled": lambda seed: tiny_gpt2(seed, scale_attn_by_inverse_layer_idx=True),
    "gemma2": tiny_gemma2,  # attention-logit softcapping
    "gemma3": tiny_gemma3,  # one key-value head, QK norm, sliding window 8 before a global layer
}


@pytest.mark.parametrize("arch", list(MODELS))
def test_architectures_batched_with_left_padding(arch):
    model = MODELS[arch](seed=3)
    samples = make_samples(4, seed=3)
    assert len({len(s["input_ids"]) for s in samples}) > 2  # different padding lengths
    assert_same(model, collate(samples, extra_pad=2))


@pytest.mark.parametrize("block_size", [1, 7, 128])
def test_block_sizes(block_size):
    """One row per block, blocks that do not divide the length, one block for everything."""
    assert_same(tiny_llama(seed=4), collate(make_samples(3, seed=4), extra_pad=1), block_size=block_size)


@pytest.mark.parametrize("opts", OPTION_CASES, ids=OPTION_IDS)
def test_options(opts):
    samples = make_samples(3, seed=5)
    batch = collate(samples, extra_pad=1)
    if opts.get("loss") == "label_restricted":
        labels = [7, 19, 33, 101, 150]
        batch["target"] = torch.tensor([labels[i % len(labels)] for i in range(len(samples))])
        batch["label_token_ids"] = torch.tensor(labels)
    first = batch["attention_mask"][0].nonzero()[0]
    batch["input_ids"][0, first] = BOS  # one sample starts with a BOS
    assert_same(tiny_llama(seed=5), batch, FlowOptions(**opts))


def test_no_anchor():
    samples = make_samples(2, seed=6, anchor=False) + make_samples(1, seed=7)
    res = assert_same(tiny_llama(seed=6), collate(samples))
    assert torch.isnan(res.s_wp[:2]).all() and not torch.isnan(res.s_ww).any()


def test_lora_adapters():
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    model = get_peft_model(tiny_llama(seed=8).float(), cfg).double()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.2)  # non-zero B: the adapters change the model
    assert_same(model, collate(make_samples(3, seed=8)))
    assert all(p.grad is None for p in model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(reentrant):
    model = tiny_llama(seed=9)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    batch = collate(make_samples(3, seed=9))
    assert_same(model, batch)
    _, _, engine = run(model, batch, FlowOptions(backend=Backend.blockwise, block_size=4))
    assert engine.last_stats["fills"] == [1, 1, 1]
    assert engine.last_stats["attention_calls"] == 6  # 3 forward + 3 recomputed: checkpointing was active
    assert model.training and all(layer.gradient_checkpointing for layer in model.model.layers)


@pytest.mark.parametrize("backend", ["eager", "blockwise"])
def test_nothing_quadratic_is_kept_for_the_backward(backend):
    """No tensor whose last two dimensions are L x L is saved for the backward (forward graph or the
    blockwise backward's own block graphs); the eager backend does save them (the check can see them)."""
    batch = collate(make_samples(2, seed=10), extra_pad=6)
    seq = batch["input_ids"].shape[1]
    shapes: list[tuple[int, ...]] = []

    def pack(t: Tensor) -> Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        FlowEngine(tiny_llama(seed=10), FlowOptions(backend=backend, block_size=4)).compute(batch)
    quadratic = [s for s in shapes if len(s) >= 2 and s[-2:] == (seq, seq)]
    assert bool(quadratic) == (backend == "eager"), quadratic[:3]


# ------------------------------------------------------------------------------------------------
# options and refusals
# ------------------------------------------------------------------------------------------------


def test_backend_is_how_not_what():
    """Results agree across backends, so the backend is not part of a result's identity (the analysis
    resume check); both fields are config options with a typo refused."""
    blockwise = FlowOptions(backend=Backend.blockwise, block_size=64)
    assert blockwise.measurement() == FlowOptions().measurement()
    assert "backend" not in FlowOptions().measurement()
    cfg = compose(["flow.backend=blockwise", "flow.block_size=32"])
    assert (cfg.flow.backend, cfg.flow.block_size) == (Backend.blockwise, 32)


def test_refusals_name_the_eager_backend():
    model = tiny_llama(seed=11)
    with pytest.raises(ValueError, match=r"keep_maps.*flow\.backend=eager"):
        FlowEngine(model, FlowOptions(backend="blockwise"), keep_maps="layer")
    with pytest.raises(ValueError, match=r"flow\.block_size must be a positive"):
        FlowEngine(model, FlowOptions(backend="blockwise", block_size=0))
    with pytest.raises(ValueError, match=r"backend='flash' is not one of \['eager', 'blockwise'\]"):
        FlowEngine(model, FlowOptions(backend="flash"))
    with pytest.raises(TypeError, match=r"mask of type str.*flow\.backend=eager"):
        mask_rows("causal")


def test_a_model_that_reads_the_mask_itself_is_refused():
    """Attention code that slices the mask before the attention function cannot get a lazy mask."""
    model = tiny_llama(seed=12)
    for layer in model.model.layers:
        forward = layer.self_attn.forward

        def slicing(self, hidden_states, attention_mask=None, _forward=forward, **kw):
            return _forward(hidden_states, attention_mask=attention_mask[:, :, :, :], **kw)

        layer.self_attn.forward = types.MethodType(slicing, layer.self_attn)
    batch = collate(make_samples(2, seed=12))
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(TypeError, match=r"indexes it.*flow\.backend=eager"):
        FlowEngine(model, FlowOptions(backend="blockwise")).compute(batch)
    assert model.config._attn_implementation == "sdpa"
    assert [p.requires_grad for p in model.parameters()] == flags
    FlowEngine(model).compute(batch)  # the eager backend runs it
