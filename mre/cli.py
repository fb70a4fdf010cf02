"""Config composition and the builders shared by every entry point (train.py, analyze.py, the data view)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from mre.config import register_configs
from mre.data.datamodule import MREDataModule

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose conf/ with command-line style overrides, outside a Hydra run (no run directory)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def make_datamodule(cfg: DictConfig) -> MREDataModule:
    """The DataModule of a composed config."""
    return MREDataModule(
        dataset=cfg.dataset,
        direction=cfg.direction,
        prompt=cfg.prompt,
        data=cfg.data,
        tokenizer_cfg=cfg.model.tokenizer,
        with_anchor=cfg.with_anchor,
        seed=cfg.seed,
        pretrained_path=cfg.model.pretrained_path if cfg.model.kind == "pretrained" else None,
        cache_dir=cfg.paths.cache_dir,
    )
