"""What the real-model tests share (`test_real_model.py`: SmolLM2-135M-Instruct; `test_real_gemma.py`:
Gemma 3 270M): the model's packages or a skip that names their install command, the hub kept offline,
the SNIPS context of the span tests, and the base-model flow analysis end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mre.analysis import analyze
from mre.config import compose
from mre.data.context import TaskContext, build_context
from mre.hub import gguf_files
from tests.conftest import shared_data


def require_packages(model: str, install: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip unless the model's GGUF packages are installed; never a download (the hub is not reachable
    here anyway)."""
    if gguf_files(compose([f"model={model}"]).model.gguf) is None:
        pytest.skip(f"{model}'s packages are not installed ({install})")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def snips_context(model: str, direction: str) -> TaskContext:
    """100 SNIPS test prompts with the gold anchor, under the model's tokenizer and prompt layout."""
    cfg = compose(
        [f"model={model}", "dataset=snips", f"dataset.path={shared_data('snips')}", f"direction={direction}",
         "with_anchor=true", "dataset.n_train=200", "dataset.n_test=100", "dataset.n_dev=20"]
    )  # fmt: skip
    return build_context(cfg)


def check_base_flow(model: str, n_layers: int, out: Path) -> None:
    """`analyze.py` on the base model: S_pq defined on all 4 samples at each of its layers, every
    metric finite and non-negative, the figures written."""
    cfg = compose(
        [f"model={model}", "dataset=snips", f"dataset.path={shared_data('snips')}", "direction=tli",
         "with_anchor=true", "dataset.n_train=100", "dataset.n_test=20", "dataset.n_dev=10",
         "flow.n_samples=4", "flow.batch_size=4", "flow.n_examples=1", "flow.n_boot=50",
         "flow.progress=false", f"output_dir={out}"],
        config_name="analyze",
    )  # fmt: skip
    res = analyze(cfg)
    pq = res.stats["S_pq"]
    assert all(n == 4 for n in pq.n) and len(pq.mean) == n_layers
    for name, st in res.stats.items():
        assert all(math.isfinite(v) and v >= 0 for v in st.mean), name
    assert (out / "flow.png").exists() and len(list((out / "examples").glob("*.png"))) == 1
