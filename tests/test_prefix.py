"""Computing a batch's shared prompt prefix once (`mre.tasks.prefix`) gives the logits and gradients of
a plain forward, on every tiny architecture, with left padding of any depth.

The tiny models run in float64, but LLaMA's and Qwen2's RMSNorm compute in float32 (GPT-2's LayerNorm
does not). The shared layout sums the rows' gradients of the prefix before its norms, the plain one
after, so gradients differ by float32 rounding: at most about one unit roundoff (2^-24) per norm
crossed, 7 norms (2 per layer, 3 layers, and the final one), relative to the largest entry of each
tensor. The test allows 16 units (observed: about 2); a wrong mask, position or cache is an O(1)
difference. Dropout is off (eval mode): the two layouts draw different masks.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from mre.data.batches import position_ids
from mre.tasks.prefix import MIN_PREFIX, causal_lm_logits, common_prefix_length
from tests.flow_models import U32, VOCAB, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_mistral, tiny_qwen2

TOL = 16 * U32
PAD = 0
KEEP = 3  # q and two answer tokens


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask, position_ids(mask)


def prompts(prefix_len: int = 12, seed: int = 0) -> list[list[int]]:
    """Rows sharing `prefix_len` tokens, then 4-11 tokens of their own (the first differs per row)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, VOCAB, (prefix_len,), generator=g).tolist()
    rows = []
    for i, n in enumerate([4, 11, 7, 5]):
        own = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        own[0] = 3 + i  # distinct right after the prefix
        rows.append(prefix + own)
    return rows


def test_the_common_prefix_is_found_under_left_padding_and_capped_before_the_read_positions():
    ids, mask, _ = left_padded(prompts(prefix_len=12))
    assert common_prefix_length(ids, mask, keep=KEEP) == 12
    twins = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11, 12]]
    ids, mask, _ = left_padded(twins)
    assert common_prefix_length(ids, mask, keep=KEEP) == 6 - KEEP  # the shortest row keeps its last 3
    ids, mask, _ = left_padded([[5, 6, 7], [9, 6, 7]])
    assert common_prefix_length(ids, mask, keep=1) == 0


def _calls(model: torch.nn.Module) -> list[int]:
    """The sequence length of each forward call the model receives."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    return seen


def tiny_llama_lora(seed: int = 0) -> torch.nn.Module:
    """LoRA adapters (peft) on the query and value projections, B non-zero so they change the outputs."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(tiny_llama(seed), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    return model


def wide_window(make):
    """The model with its sliding window (8) widened to 64, past the batch's 23 columns."""

    def build(seed: int = 0) -> torch.nn.Module:
        model = make(seed)
        model.config.sliding_window = 64
        return model

    return build


@pytest.mark.parametrize(
    "make",
    [tiny_llama, tiny_qwen2, tiny_gpt2, tiny_llama_lora, wide_window(tiny_mistral), wide_window(tiny_gemma3)],
    ids=["llama", "qwen2", "gpt2", "llama+lora", "mistral-window64", "gemma3-window64"],
)
def test_sharing_the_prefix_gives_a_plain_forwards_logits_and_gradients(make):
    ids, mask, pos = left_padded(prompts(prefix_len=12))
    weights = torch.randn(ids.shape[0], KEEP, VOCAB, generator=torch.Generator().manual_seed(1)).double()

    def run(share: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        model = make(seed=0).eval()
        calls = _calls(model)
        logits = causal_lm_logits(model, ids, mask, pos, keep=KEEP, share_prefix=share)
        (logits * weights).sum().backward()
        return logits.detach(), [p.grad for p in model.parameters() if p.requires_grad], calls

    plain, plain_grads, plain_calls = run(share=False)
    shared, shared_grads, shared_calls = run(share=True)
    assert plain_calls == [ids.shape[1]]
    assert shared_calls == [12, ids.shape[1] - 12]  # the prefix once, then the longest row's rest
    torch.testing.assert_close(shared, plain, rtol=TOL, atol=TOL * plain.abs().max().item())
    for got, want in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL * want.abs().max().item())


@pytest.mark.parametrize("make", [tiny_mistral, tiny_gemma3], ids=["mistral", "gemma3"])
def test_a_sliding_window_shorter_than_the_batch_runs_the_plain_forward(make):
    """Their window (8) counts columns, which the two layouts place differently: no sharing."""
    ids, mask, pos = left_padded(prompts(prefix_len=12))
    model = make(seed=0)
    calls = _calls(model)
    with torch.no_grad():
        shared = causal_lm_logits(model, ids, mask, pos, keep=KEEP, share_prefix=True)
        plain = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=KEEP).logits
    assert calls == [ids.shape[1], ids.shape[1]]
    torch.testing.assert_close(shared, plain, rtol=0, atol=0)


def test_a_short_prefix_is_not_worth_a_second_call():
    ids, mask, pos = left_padded(prompts(prefix_len=MIN_PREFIX - 1))
    model = tiny_llama(seed=0)
    calls = _calls(model)
    with torch.no_grad():
        causal_lm_logits(model, ids, mask, pos, keep=KEEP)
    assert calls == [ids.shape[1]]
