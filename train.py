"""Fine-tune and evaluate: `python train.py [dataset=...] [direction=wli|tli] [with_anchor=...] [model=...]`.

A thin Hydra entry point; everything happens in `mre.runner`. See README.md for examples.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mre.config import register_configs
from mre.errors import exit_status_of_errors
from mre.loggers import quiet_dependencies
from mre.runner import run

register_configs()
quiet_dependencies()  # module level: a spawned DDP worker re-imports this file


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns test/f1 so Hydra sweepers (e.g. Optuna) can optimize it."""
    with exit_status_of_errors():
        return run(cfg).get("test/f1", float("nan"))


if __name__ == "__main__":
    main()
