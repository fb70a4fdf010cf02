"""Tiny random-weight models of the real architectures and flow batches built from synthetic samples,
shared by the flow engine's tests (test_flow_engine.py, test_flow_blockwise.py, test_gpu.py)."""

from __future__ import annotations

import random

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 200
BOS = 1
U32 = 2.0**-24  # unit roundoff of float32
# the size every tiny decoder shares: 3 layers, 4 query heads over 2 key-value heads (grouped-query)
DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny_llama(seed: int = 0, attn: str | None = None, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        **DECODER,
        vocab_size=vocab,
        max_position_embeddings=128,
    )
    if attn is not None:
        cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).double()


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        **DECODER,
        vocab_size=VOCAB,
        max_position_embeddings=128,
    )
    return Qwen2ForCausalLM(cfg).double()


def tiny_mistral(seed: int = 0) -> MistralForCausalLM:
    """With a sliding window shorter than the prompts, so the sliding-window mask path is exercised."""
    torch.manual_seed(seed)
    cfg = MistralConfig(
        **DECODER,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        sliding_window=8,
    )
    return MistralForCausalLM(cfg).double()


def tiny_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """`overrides`: GPT2Config fields, e.g. `scale_attn_by_inverse_layer_idx=True`."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=128, **overrides)
    return GPT2LMHeadModel(cfg).double()


def tiny_gemma2(seed: int = 0) -> Gemma2ForCausalLM:
    """Attention-logit softcapping, its own query scaling and alternating sliding-window layers."""
    torch.manual_seed(seed)
    cfg = Gemma2Config(
        **DECODER,
        head_dim=16,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        sliding_window=8,
        attn_logit_softcapping=2.0,
        query_pre_attn_scalar=20,
    )
    return Gemma2ForCausalLM(cfg).double()


def tiny_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    """Gemma 3's attention: query pre-attention scaling, QK norm, one key-value head for all query
    heads, sliding-window layers (window 8, shorter than the prompts of 10-22 tokens) before a global
    one, each kind with its own rotary base."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        **{**DECODER, "num_key_value_heads": 1},
        head_dim=16,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=20,
    )
    model = Gemma3ForCausalLM(cfg).double()
    with torch.no_grad():  # QK norm weights start at 0 (scale 1): give them a scale of their own
        for layer in model.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                norm.weight.normal_(0.0, 0.5)
    return model


def make_samples(n: int, seed: int, anchor: bool = True, min_len: int = 10, max_len: int = 22) -> list[dict]:
    """Unpadded samples: [prefix][text][sep][anchor][suffix], q = last token."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(1, VOCAB) for _ in range(length)]
        t0 = rng.randint(0, 2)
        t1 = rng.randint(t0 + 2, length - 6)
        if anchor:
            a0 = rng.randint(t1, t1 + 1)
            a1 = rng.randint(a0 + 1, length - 2)
        else:
            a0 = a1 = 0
        out.append(
            {
                "input_ids": ids,
                "text": (t0, t1),
                "anchor": (a0, a1),
                "q": length - 1,
                "target": rng.randrange(VOCAB),
            }
        )
    return out


def collate(samples: list[dict], extra_pad: int = 0) -> dict[str, torch.Tensor]:
    """Left-pad to the longest sample (+ extra_pad), spans shifted to padded coordinates."""
    width = max(len(s["input_ids"]) for s in samples) + extra_pad
    ids, mask, text, anchor, q, target = [], [], [], [], [], []
    for s in samples:
        pad = width - len(s["input_ids"])
        ids.append([0] * pad + s["input_ids"])
        mask.append([0] * pad + [1] * len(s["input_ids"]))
        text.append([s["text"][0] + pad, s["text"][1] + pad])
        a = s["anchor"]
        anchor.append([a[0] + pad, a[1] + pad] if a[1] > a[0] else [0, 0])
        q.append(s["q"] + pad)
        target.append(s["target"])
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "text_range": torch.tensor(text),
        "anchor_range": torch.tensor(anchor),
        "q": torch.tensor(q),
        "target": torch.tensor(target),
    }


def hf_of(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def map_tolerance(maps: torch.Tensor) -> torch.Tensor:
    """[layers] absolute tolerance of a mean over one sample's map: the softmax runs in float32, so
    each probability carries a relative error up to (L + 1) u32 (a row sum of L terms, exp and
    division), which reaches every element of I_l at the scale of the layer's largest element (the
    padded batch and the unpadded reference round differently)."""
    n = maps.shape[-1]
    return (n + 1) * U32 * maps.flatten(1).amax(1)


# every departure option of the flow, alone and combined: the cases the backends are checked on
OPTION_CASES = [
    {"sources": "all_prior"},
    {"loss": "label_restricted"},
    {"normalize": "per_sample"},
    {"exclude_bos": True},
    {"sources": "all_prior", "normalize": "per_sample", "exclude_bos": True},
]
OPTION_IDS = ["all_prior", "label_restricted", "per_sample", "exclude_bos", "combined"]
