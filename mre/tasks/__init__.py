"""Tasks. Each task is a module with a `build(cfg, run_dir) -> TaskParts` function that says how to make
its data module, its LightningModule and the callbacks that apply to it; `mre.config.TASK_MODULES`
names them (and so the valid values of `task:`). The runner (`mre.runner`) fits, tests and writes
every task the same way, so a new task is one module here and one line in that registry."""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig

from mre.config import TASK_MODULES
from mre.tasks.base import TaskParts


def build_task(cfg: DictConfig, run_dir: Path) -> TaskParts:
    """The parts of the config's task (`task:` is checked against the registry at start-up); only that
    task's module is imported."""
    return importlib.import_module(TASK_MODULES[str(cfg.task)]).build(cfg, run_dir)
