"""Every config composes; bad option names, types and paths fail at start-up with clear messages."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from mre.config import (
    CONF_DIR,
    OptimConfig,
    compose,
    register_configs,
)
from mre.data.context import build_context
from mre.data.options import DatasetConfig, DirectionConfig
from mre.data.prompts import PromptError
from mre.model_options import ModelConfig
from mre.tasks.fewshot.options import VerbalizerConfig
from tests.conftest import REPO, shared_data

DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
PAPER = ["scnm", "scpos_rw", "scpos_n", "scpos_adj", "scpos_adj_n", "tcree"]


def test_config_groups_present():
    assert {"synthetic_en", "synthetic_ja", "snips", "slurp", "ner_wikipedia_ja", *PAPER} <= set(DATASETS)
    assert {
        "tiny_llama",
        "tiny_qwen2",
        "llama2_7b_chat",
        "llama2_7b_chat_lora",
        "llama2_7b_chat_qlora",
    } <= set(MODELS)


def _check_composed(cfg, dataset: str, direction: str, model: str) -> None:
    assert cfg.dataset.name == dataset and cfg.model.name == model
    assert str(cfg.direction.name) == direction
    for key in ("dataset", "direction", "prompt", "model", "optim", "data", "eval", "flow"):
        OmegaConf.to_container(cfg[key], resolve=True)  # every interpolation resolves
    assert cfg.dataset.language in cfg.prompt.fields and cfg.dataset.language in cfg.direction.instruction


def test_every_dataset_and_model_composes():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for dataset, direction in itertools.product(DATASETS, ["wli", "tli"]):
            cfg = hydra_compose("config", [f"dataset={dataset}", f"direction={direction}"])
            _check_composed(cfg, dataset, direction, "tiny_llama")
        for model in MODELS:
            _check_composed(hydra_compose("config", [f"model={model}"]), "synthetic_en", "wli", model)


@pytest.mark.slow
def test_every_combination_composes():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for dataset, direction, model in itertools.product(DATASETS, ["wli", "tli"], MODELS):
            cfg = hydra_compose("config", [f"dataset={dataset}", f"direction={direction}", f"model={model}"])
            _check_composed(cfg, dataset, direction, model)


def _leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a plain YAML mapping."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


GROUP_SCHEMA = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "verbalizer": VerbalizerConfig,
    "direction": DirectionConfig,
}


@pytest.mark.parametrize("group", sorted(GROUP_SCHEMA))
def test_group_files_do_not_restate_schema_defaults(group):
    """Defaults live once, in the options each layer owns: a group file sets what makes its choice differ."""
    schema = OmegaConf.structured(GROUP_SCHEMA[group])
    restated = []
    for path in sorted((CONF_DIR / group).rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        raw.pop("defaults", None)
        for key, value in _leaves(raw):
            default = OmegaConf.select(schema, key, throw_on_missing=False, default="<absent>")
            if OmegaConf.is_config(default):
                default = OmegaConf.to_container(default)
            if value == default and not (isinstance(default, str) and default == "???"):
                restated.append(f"{path.relative_to(CONF_DIR)}: {key}")
    assert not restated, f"these restate the schema default: {restated}"


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("model.kind=tinyy", "tiny, pretrained"),
        ("model.dtype=fp32", "float32, bfloat16, float16"),
        ("model.quantization=4bits", "4bit, 8bit"),
        ("model.tokenizer.kind=sentencepiece", "bpe, llama"),
        ("task=fewshoot", "generative, fewshot"),
        ("prompt.code_scheme=numbers", "auto, digits, letters, lower"),
        ("dataset.tli_field=slot", "scenario, intent, action"),
        ("prompt.chat_template=yes", "auto, on, off"),
        ("flow.sources=everything", "text, all_prior"),
        ("flow.loss=ce", "full_vocab, label_restricted"),
        ("flow.backend=flash", "eager, blockwise"),
        ("verbalizer.aggregate=vote", "mean_logprob, sum_prob"),
        ("dataset.lang=fr", "ja, en, zh"),
        ("dataset.task=ner", "scnm, scpos_rw, scpos_adj_n, scpos_n, scpos_adj, tcree, oie"),
    ],
)
def test_a_typo_in_a_choice_fails_listing_the_valid_values(override, valid):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose([override])
    assert valid in str(e.value.__cause__ or e.value)


def test_an_unknown_architecture_fails_before_any_work():
    from mre.models import ModelLoadError, check_model_config

    with pytest.raises(ModelLoadError, match=r"model\.arch='llamma'.*'llama'"):
        check_model_config(compose(["model.arch=llamma"]).model)
    check_model_config(compose(["model=tiny_qwen2"]).model)


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["dataset=snipz"])
    assert "snips" in str(e.value) and "synthetic_en" in str(e.value)


def test_unknown_key_and_wrong_type_fail():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["dataset.n_trian=5"])
    assert "n_trian" in str(e.value.__cause__ or e.value)
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose(["dataset.n_train=many"])
    assert "n_train" in str(e.value.__cause__ or e.value)
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose(["dataset.on_bad_row=ignore"])
    assert "error, skip" in str(e.value.__cause__ or e.value)
    cfg = compose([])
    with pytest.raises(ConfigAttributeError):
        cfg.model.hiden_size  # noqa: B018  (struct mode: typos fail on read too)


@pytest.mark.parametrize("dataset", PAPER)
def test_paper_dataset_local_copy_missing_says_what_is_expected(dataset, monkeypatch):
    """MRE_PAPER_DATA names the folder of local copies; without it the set comes from the hub
    (tests/test_hub_data.py)."""
    monkeypatch.setenv("MRE_PAPER_DATA", "/nonexistent/data/mre")
    cfg = compose([f"dataset={dataset}"])
    with pytest.raises(FileNotFoundError, match=r"dataset\.path=") as e:
        build_context(cfg)
    assert "/nonexistent/data/mre/" in str(e.value) and "does not exist" in str(e.value)
    assert ("csv" in str(e.value)) or ("json" in str(e.value))


def test_missing_path_names_the_path(tmp_path):
    cfg = compose(["dataset=scnm", f"dataset.path={tmp_path}/nope.csv"])
    with pytest.raises(FileNotFoundError, match=r"nope\.csv does not exist"):
        build_context(cfg)


REAL_SETS = [("snips", "MRE_SNIPS"), ("slurp", "MRE_SLURP"), ("ner_wikipedia_ja", "MRE_NER_WIKIPEDIA_JA")]


@pytest.mark.parametrize(("name", "env"), REAL_SETS)
def test_real_data_sets_take_a_path_or_an_environment_variable(name, env, monkeypatch, tmp_path):
    """No path into a folder a user never has: without dataset.path or the variable, the error says
    what to get, where from and how to give it; the variable is read at composition."""
    monkeypatch.delenv(env, raising=False)
    cfg = compose([f"dataset={name}"])
    assert cfg.dataset.path is None
    with pytest.raises(FileNotFoundError, match=rf"no path was given.*github\.com/.*{env}="):
        build_context(cfg)
    monkeypatch.setenv(env, str(tmp_path / "mine"))
    assert compose([f"dataset={name}"]).dataset.path == str(tmp_path / "mine")


def test_ner_without_tli_refuses_anchor_setting():
    ner = ["dataset=ner_wikipedia_ja", f"dataset.path={shared_data('ner-wikipedia-ja') / 'ner.json'}"]
    cfg = compose([*ner, "with_anchor=true", "dataset.n_train=50", "dataset.n_test=50"])
    with pytest.raises(PromptError, match=r"only direction=wli with_anchor=false"):
        build_context(cfg)
    cfg = compose([*ner, "direction=tli", "with_anchor=false", "dataset.n_train=50"])
    with pytest.raises(PromptError, match="no text label"):
        build_context(cfg)


def _data_view(*overrides: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mre.data", *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_data_view_synthetic():
    out = _data_view("dataset=synthetic_en", "direction=tli", "with_anchor=true")
    assert "synthetic_en: splits" in out and "train" in out and "text labels (TLI)" in out
    assert out.count("«") == 4 and out.count("⟨") == 4  # the legend and three prompts


def test_data_view_help_and_a_malformed_override(capsys):
    """`--help` prints the usage (exit 0); an argument that is not `key=value` is one error naming it
    and the usage (exit 2), not a Hydra traceback."""
    from mre.data.__main__ import main

    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m mre.data dataset=<name>")
    assert main(["dataset=synthetic_en", "direction"]) == 2
    out = capsys.readouterr().out
    assert "Error parsing override 'direction'" in out and "usage: python -m mre.data" in out


@pytest.mark.slow
def test_data_view_real_sets():
    out = _data_view("dataset=snips", f"dataset.path={shared_data('snips')}")
    assert "snips: splits" in out and "PlayMusic" in out and "playlist" in out
    out = _data_view("dataset=slurp", f"dataset.path={shared_data('slurp')}", "direction=tli")
    assert "slurp: splits" in out and "calendar" in out and "place_name" in out and "R=weather" in out
    ner = shared_data("ner-wikipedia-ja") / "ner.json"
    out = _data_view("dataset=ner_wikipedia_ja", f"dataset.path={ner}")
    assert "showing with_anchor=false instead" in out and "人名" in out
