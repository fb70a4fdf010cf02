"""The task registry: each task is one `build(cfg, run_dir) -> TaskParts` function that says how to
make its data module, its LightningModule and the callbacks that apply to it. The runner
(`mre.runner`) fits, tests and writes every task the same way; a new task is a module with such a
function and one line here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from mre.config import TaskName
from mre.tasks import generative
from mre.tasks.base import TaskParts
from mre.tasks.fewshot import task as fewshot

TASKS: dict[TaskName, Callable[[DictConfig, Path], TaskParts]] = {
    TaskName.generative: generative.build,
    TaskName.fewshot: fewshot.build,
}


def build_task(cfg: DictConfig, run_dir: Path) -> TaskParts:
    """The parts of the config's task (`task:` is checked against TaskName at start-up)."""
    return TASKS[TaskName(str(cfg.task))](cfg, run_dir)
