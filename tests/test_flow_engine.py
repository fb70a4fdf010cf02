"""FlowEngine against the plain reference (tests/flow_reference.py) on tiny random models.

float64 everywhere it is possible; the 4-bit model is float32 (bitsandbytes has no float64 compute).
The engine must match the definition to relative error 1e-5, up to the float32 rounding that the
models' eager softmax adds whatever the model dtype (see `map_tolerance`).
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
from flow_reference import reference_flow

from mre.data.batches import Collator
from mre.data.prompts import PromptBuilder
from mre.data.synthetic import generate
from mre.data.tokenizer import train_tiny_tokenizer
from mre.flow.engine import FlowEngine, FlowResult
from mre.flow.files import METRICS, result_values, summarize
from mre.flow.options import FlowOptions
from mre.flow.samples import flow_batch
from mre.setting import Direction, Setting
from tests.flow_models import (
    BOS,
    OPTION_CASES,
    OPTION_IDS,
    U32,
    collate,
    hf_of,
    make_samples,
    map_tolerance,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mistral,
    tiny_qwen2,
)
from tests.test_prompts import FIELDS, INSTR, corpus

RTOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


def reference(model, samples, **opts):
    """Reference metrics for each sample, run with eager attention (then the previous one is restored)."""
    hf = hf_of(model)
    before = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        return [reference_flow(model, s, **opts) for s in samples]
    finally:
        hf.set_attn_implementation(before)


def assert_matches(res: FlowResult, refs, rtol: float = RTOL) -> None:
    for b, ((s_wp, s_pq, s_ww), (n_wp, n_pq, n_ww), maps) in enumerate(refs):
        assert (int(res.n_wp[b]), int(res.n_pq[b]), int(res.n_ww[b])) == (n_wp, n_pq, n_ww), f"counts {b}"
        atol = map_tolerance(maps)
        for name, got, want in (
            ("wp", res.s_wp[b], s_wp),
            ("pq", res.s_pq[b], s_pq),
            ("ww", res.s_ww[b], s_ww),
        ):
            want = torch.tensor(want, dtype=torch.float64)
            assert got.shape == want.shape, name
            assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{name}[{b}] NaN pattern"
            ok = ~torch.isnan(want)
            excess = (got[ok] - want[ok]).abs() - (rtol * want[ok].abs() + atol[ok])
            assert (excess <= 0).all(), f"S_{name}[{b}]: {got[ok].tolist()} vs {want[ok].tolist()}"
            # not degenerate (S_wp of the LAST layer is exactly 0: only row q reaches the loss there)
            assert (want[ok][:-1] > 0).all() and (want[ok] >= 0).all(), f"degenerate reference S_{name}"


def check(
    model, samples, extra_pad: int = 0, rtol: float = RTOL, label_token_ids=None, bos_token_id=None, **opts
) -> FlowResult:
    batch = collate(samples, extra_pad)
    if label_token_ids is not None:
        batch["label_token_ids"] = torch.tensor(label_token_ids)
    res = FlowEngine(model, FlowOptions(**opts), bos_token_id=bos_token_id).compute(batch)
    refs = reference(model, samples, label_token_ids=label_token_ids, bos_token_id=bos_token_id, **opts)
    assert_matches(res, refs, rtol)
    return res


# ------------------------------------------------------------------------------------------------
# exactness
# ------------------------------------------------------------------------------------------------


def test_batch_size_one():
    res = check(tiny_llama(), make_samples(1, seed=1))
    assert res.s_wp.shape == (1, 3) and res.maps is None


def test_batched_left_padding_and_maps():
    """Element-wise maps: LLaMA's eager softmax runs in float32 even for a float64 model, and a padded
    row is summed in another order than the unpadded one, so each probability carries a relative
    error up to (L + 1) u32 (the row sum of L terms, exp and division). An element of I_l =
    |sum_h A_h G_h| then differs by at most (L + 1) u32 * sum_h |A_h G_h| from its own probabilities,
    plus the same relative error at the scale of the layer's map through the gradient G, which the
    float32 softmaxes of the layers above feed. Elements near 0 (cancelling heads) therefore get an
    absolute tolerance, never a relative one; measured here: at most 7 u32 on either scale."""
    model = tiny_llama(seed=2)
    samples = make_samples(5, seed=2)
    assert len({len(s["input_ids"]) for s in samples}) > 2  # different padding lengths
    batch = collate(samples, extra_pad=3)
    res = FlowEngine(model, keep_maps="layer").compute(batch)
    refs = reference(model, samples)
    assert_matches(res, refs)
    width = batch["input_ids"].shape[1]
    assert res.maps.shape == (5, 3, width, width)
    head = FlowEngine(model, keep_maps="head").compute(batch)
    assert head.maps.shape == (5, 3, 4, width, width)
    for b, s in enumerate(samples):  # the padded map restricted to real tokens is the unpadded map
        n = len(s["input_ids"])
        got, want = res.maps[b, :, -n:, -n:].double(), refs[b][2]
        per_head = head.maps[b, :, :, -n:, -n:].double().sum(1)  # sum_h |A_h G_h|
        layer_max = want.flatten(1).amax(1).view(-1, 1, 1)
        tol = (n + 1) * U32 * (per_head + layer_max)
        excess = ((got - want).abs() - tol).max()
        assert excess <= 0, f"sample {b}: a map element differs by {float(excess):.3g} more than allowed"
    # sum over heads then abs <= sum of per-head abs
    assert (head.maps.sum(2) + 1e-12 >= res.maps).all()


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gpt2", "gemma3"])
def test_other_architectures(arch):
    """gemma3: one key-value head, QK norm, a sliding window (8) shorter than every prompt."""
    model = {"qwen2": tiny_qwen2, "mistral": tiny_mistral, "gpt2": tiny_gpt2, "gemma3": tiny_gemma3}[arch](
        seed=3
    )
    check(model, make_samples(3, seed=3), extra_pad=1)


@pytest.mark.parametrize("opts", OPTION_CASES, ids=OPTION_IDS)
def test_options(opts):
    model = tiny_llama(seed=4)
    samples = make_samples(3, seed=4)
    labels = None
    if opts.get("loss") == "label_restricted":
        labels = [7, 19, 33, 101, 150]
        for i, s in enumerate(samples):
            s["target"] = labels[i % len(labels)]
    samples[0]["input_ids"][0] = BOS  # one sample starts with a BOS, the others (most likely) not
    res = check(model, samples, label_token_ids=labels, bos_token_id=BOS, **opts)
    if opts.get("normalize") == "per_sample":
        torch.testing.assert_close(res.s_wp + res.s_pq + res.s_ww, torch.ones_like(res.s_ww))


def _by_metric(values: dict[str, np.ndarray]) -> np.ndarray:
    """[metric, sample, layer] of per-metric [sample, layer] values."""
    return np.stack([values[m] for m in METRICS])


def _means(stats: dict) -> np.ndarray:
    """[metric, layer] of a summary's means."""
    return np.stack([stats[m].mean for m in METRICS])


def test_of_means_rescales_the_summary_and_per_sample_the_samples():
    model = tiny_llama(seed=17)
    batch = collate(make_samples(4, seed=17))
    raw = result_values([FlowEngine(model).compute(batch)])
    of_means = result_values([FlowEngine(model, FlowOptions(normalize="of_means")).compute(batch)])
    per_sample = result_values([FlowEngine(model, FlowOptions(normalize="per_sample")).compute(batch)])
    r = _by_metric(raw)
    assert np.array_equal(_by_metric(of_means), r)  # raw per-sample values: the samples file
    np.testing.assert_allclose(_by_metric(per_sample), r / r.sum(0), rtol=1e-12)
    mean_of_ratios = _means(summarize(per_sample, 50, 0, "per_sample"))
    ratio_of_means = _means(summarize(of_means, 50, 0, "of_means"))
    np.testing.assert_allclose(mean_of_ratios, (r / r.sum(0)).mean(1), rtol=1e-12)
    np.testing.assert_allclose(ratio_of_means, r.mean(1) / r.mean(1).sum(0), rtol=1e-12)
    assert np.abs(mean_of_ratios - ratio_of_means).max() > 1e-3


def _without_bos(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The same vocabulary as a GPT-2 style tokenizer: no BOS token, nothing added to a text."""
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = None
    out = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    out.padding_side = "left"
    return out


def test_exclude_bos_drops_a_real_bos_only(tmp_path):
    recs = generate(80, n_classes=3, seed=16)
    with_bos = train_tiny_tokenizer(corpus(recs, "en"), kind="bpe", vocab_size=800, cache_dir=tmp_path)
    no_bos = _without_bos(with_bos)
    model = tiny_llama(seed=16, vocab=len(with_bos))
    labels = sorted({r.tli for r in recs})
    for tok, has_bos in ((with_bos, True), (no_bos, False)):
        b = PromptBuilder(tok, Setting(Direction.tli, True), INSTR["tli"], FIELDS["en"], labels)
        items = [b.encode(r, i) for i, r in enumerate(recs[:3])]
        assert [e.prompt_ids[0] == tok.bos_token_id for e in items] == [has_bos] * 3
        batch = flow_batch(Collator(tok.pad_token_id)(items))
        plain = FlowEngine(model).compute(batch)
        excluding = FlowEngine(model, FlowOptions(exclude_bos=True), bos_token_id=tok.bos_token_id)
        without = excluding.compute(batch)
        # a BOS is the source of one pair per later position up to q, all of them in C_ww
        dropped = [len(e.prompt_ids) - 1 if has_bos else 0 for e in items]
        assert (plain.n_ww - without.n_ww).tolist() == dropped
        assert torch.equal(plain.n_wp, without.n_wp) and torch.equal(plain.n_pq, without.n_pq)
        assert has_bos or torch.equal(plain.s_ww, without.s_ww)


def test_no_anchor_gives_nan_and_zero_counts():
    model = tiny_llama(seed=5)
    samples = make_samples(2, seed=5, anchor=False) + make_samples(1, seed=6)
    res = check(model, samples, normalize="per_sample")
    assert res.n_wp.tolist()[:2] == [0, 0] and res.n_pq.tolist()[:2] == [0, 0]
    assert torch.isnan(res.s_wp[:2]).all() and torch.isnan(res.s_pq[:2]).all()
    assert not torch.isnan(res.s_ww).any() and not torch.isnan(res.s_wp[2]).any()
    torch.testing.assert_close(res.s_ww[:2], torch.ones_like(res.s_ww[:2]))


def test_lora_adapters():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(7)
    base = tiny_llama(seed=7).float()
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    model = get_peft_model(base, cfg).double()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.2)  # non-zero B: the adapters change the model
    samples = make_samples(3, seed=7)
    batch = collate(samples)
    with_lora = FlowEngine(model).compute(batch)
    with model.disable_adapter():
        without = FlowEngine(model).compute(batch)
    assert all(p.grad is None for p in model.parameters())
    assert not torch.allclose(with_lora.s_ww, without.s_ww)
    assert_matches(with_lora, reference(model, samples))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # flags restored (LoRA only)


def test_4bit_model(tmp_path):
    """4-bit weights, float32 compute (bitsandbytes has no float64): engine vs reference on the same model.
    rtol 1e-5 holds here (even 1e-6 did when written), although batching and padding change the float32
    summation order."""
    from transformers import BitsAndBytesConfig

    tiny_llama(seed=8).float().save_pretrained(tmp_path)
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=qcfg, device_map="cpu")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    check(model, make_samples(3, seed=8), extra_pad=1)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(reentrant):
    model = tiny_llama(seed=9)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    samples = make_samples(3, seed=9)
    engine = FlowEngine(model)
    res = engine.compute(collate(samples))
    stats = engine.last_stats
    assert stats["fills"] == [1, 1, 1]  # each layer's slot filled exactly once per backward
    assert stats["attention_calls"] == 6  # 3 forward + 3 recomputed: checkpointing was really active
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(layer.gradient_checkpointing for layer in model.model.layers)
    assert_matches(res, reference(model, samples))


# ------------------------------------------------------------------------------------------------
# state restored, no weight gradients, inference mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_state_restored_and_no_weight_grads(attn):
    model = tiny_llama(seed=10, attn=attn)
    assert model.config._attn_implementation == attn
    model.train()
    model.model.layers[1].eval()
    frozen = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    engine = FlowEngine(model)
    engine.compute(collate(make_samples(2, seed=10)))
    assert engine.last_stats["fills"] == [1, 1, 1]
    assert model.config._attn_implementation == attn
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_under_inference_mode():
    model = tiny_llama(seed=11)
    samples = make_samples(2, seed=11)
    with torch.inference_mode():
        batch = collate(samples)  # inference tensors, as in Lightning validation
        res = FlowEngine(model).compute(batch)
    assert_matches(res, reference(model, samples))
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def _bad(batch, b, **changes):
    batch = {k: v.clone() for k, v in batch.items()}
    for k, v in changes.items():
        batch[k][b] = torch.as_tensor(v)
    return batch


def test_batch_errors():
    model = tiny_llama(seed=12)
    samples = make_samples(3, seed=12)
    batch = collate(samples, extra_pad=2)
    width = batch["input_ids"].shape[1]
    first = int(batch["attention_mask"][1].nonzero()[0])
    engine = FlowEngine(model)
    cases = [
        (_bad(batch, 1, anchor_range=[first, first + 2]), r"sample 1.*first non-pad"),
        (_bad(batch, 1, q=width), r"sample 1.*q=.*beyond"),
        (_bad(batch, 1, text_range=[first + 2, first + 2]), r"sample 1.*empty text range"),
        (_bad(batch, 1, q=0), r"sample 1.*not attended"),
    ]
    # sample 2: the anchor right after the first token, the text after it: no text precedes the anchor
    first2 = int(batch["attention_mask"][2].nonzero()[0])
    moved = _bad(batch, 2, anchor_range=[first2 + 1, first2 + 2], text_range=[first2 + 2, width - 2])
    cases.append((moved, r"sample 2.*C_wp is empty"))
    with_labels = dict(batch, label_token_ids=torch.tensor([1, 2, 3]))
    for bad, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            engine.compute(bad)
    with pytest.raises(ValueError, match=r"sample 0.*not among label_token_ids"):
        FlowEngine(model, FlowOptions(loss="label_restricted")).compute(with_labels)
    no_text_first = _bad(batch, 0, text_range=[int(batch["anchor_range"][0, 1]), width - 1])
    with pytest.raises(ValueError, match=r"sample 0.*C_wp is empty"):
        engine.compute(no_text_first)
    with pytest.raises(ValueError, match="sources"):
        FlowEngine(model, FlowOptions(sources="everything"))
    assert model.config._attn_implementation == "sdpa"


def test_anchor_with_no_text_before_it():
    model = tiny_llama(seed=13)
    s = make_samples(1, seed=13)[0]
    n = len(s["input_ids"])
    s["anchor"], s["text"] = (2, 4), (5, n - 2)  # the anchor precedes the text: C_wp empty
    with pytest.raises(ValueError, match=r"sample 0.*no text position precedes the anchor"):
        FlowEngine(model).compute(collate([s]))
    FlowEngine(model, FlowOptions(sources="all_prior")).compute(collate([s]))  # all prior positions: fine


class _NoSwitchLlama(LlamaForCausalLM):
    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return False


def test_model_that_cannot_run_eager():
    torch.manual_seed(14)
    model = _NoSwitchLlama(tiny_llama().config)
    batch = collate(make_samples(1, seed=14))
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="eager attention"):
        FlowEngine(model).compute(batch)
    assert model.config._attn_implementation == before

    # attention that bypasses the AttentionInterface dispatch (e.g. a hand-written sdpa module)
    model = tiny_llama(seed=14)
    for layer in model.model.layers:
        layer.self_attn.forward = types.MethodType(
            lambda self, hidden_states, **kw: (torch.zeros_like(hidden_states), None), layer.self_attn
        )
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="eager attention"):
        FlowEngine(model).compute(batch)
    assert model.config._attn_implementation == "sdpa"
    assert [p.requires_grad for p in model.parameters()] == flags

    with pytest.raises(RuntimeError, match="eager attention"):
        FlowEngine(nn.Linear(3, 3)).compute(batch)


def test_nan_only_where_counts_are_zero():
    model = tiny_llama(seed=15)
    res = FlowEngine(model).compute(collate(make_samples(4, seed=15)))
    for s, n in ((res.s_wp, res.n_wp), (res.s_pq, res.n_pq), (res.s_ww, res.n_ww)):
        assert not torch.isnan(s[n > 0]).any()
        assert all(math.isfinite(v) for v in s.flatten().tolist())
