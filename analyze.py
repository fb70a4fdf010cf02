"""Flow analysis and the paper's tables: a thin Hydra entry point (config: conf/analyze.yaml).

    python analyze.py run_dir=outputs/synthetic_en/wli-anchor_True/<time>     # flow of a trained model
    python analyze.py model=tiny_llama dataset=snips direction=tli            # flow of a base model
    python analyze.py sweep_dir=multirun/<time>                               # Tables 2-4, figures, report.md

Everything happens in `mre.analysis`; see README.md for the files each mode writes.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mre.analysis import analyze
from mre.config import register_configs
from mre.errors import exit_status_of_errors
from mre.loggers import quiet_dependencies

register_configs()
quiet_dependencies()  # module level: a spawned DDP worker re-imports this file


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    with exit_status_of_errors():
        analyze(cfg)


if __name__ == "__main__":
    main()
