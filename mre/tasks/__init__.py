"""Tasks. Each task is a module with a `build(cfg, run_dir) -> TaskParts` function that says how to make
its data module, its LightningModule and the callbacks that apply to it; `TASK_MODULES` below names them
(and so the valid values of `task:`, the `TaskName` enum `mre.config` assembles into the schema). The
runner (`mre.runner`) fits, tests and writes every task the same way, so a new task is one module here
and one line in that registry.

Importing this package stays light (no torch, no task module): the config schema imports the registry."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from mre.setting import StrEnum

if TYPE_CHECKING:
    from mre.tasks.base import TaskParts

# the task registry: task name -> the module whose `build(cfg, run_dir) -> TaskParts` makes its parts
TASK_MODULES = {
    "generative": "mre.tasks.generative",  # causal-LM fine-tuning in the four MRE settings
    "fewshot": "mre.tasks.fewshot.task",  # the few-shot prompt classifier with a (knowledgeable) verbalizer
}
TaskName = StrEnum("TaskName", {name: name for name in TASK_MODULES})


def build_task(cfg: DictConfig, run_dir: Path) -> TaskParts:
    """The parts of the config's task (`task:` is checked against the registry at start-up); only that
    task's module is imported."""
    return importlib.import_module(TASK_MODULES[TaskName(cfg.task).value]).build(cfg, run_dir)
