"""The runs of a sweep directory, each read from the files its run wrote.

Runs are found as every directory below ``sweep_dir`` that holds ``.hydra/config.yaml`` (the
``analysis/`` output is skipped). A run is *finished* when it wrote ``metrics.json``; the others
(failed, killed, still running) are listed and left out of the tables. With Hydra's basic sweeper the
jobs a sweep was meant to run are rebuilt from each ``multirun.yaml`` below ``sweep_dir``
(``hydra.sweeper.params`` plus the command-line sweep, parsed by Hydra's public override parser; a
study may be several sweeps in sub-folders), so jobs that never started (a sweep stops at its first
failed job) are listed too.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mre.config import load_run_config
from mre.ending import Ending
from mre.errors import ConfigError, MissingInputError
from mre.flow.files import read_layers
from mre.rundir import ANALYSIS, CHECKPOINTS, CSV_METRICS, ENDING, FLOW, METRICS, OVERRIDES
from mre.setting import Setting
from mre.stats import LayerStats
from mre.stopping import above_majority

log = logging.getLogger(__name__)

MULTIRUN = "multirun.yaml"


@dataclass(frozen=True)
class RunFlow:
    """A run's per-layer flow and the file it came from (relative to the run directory)."""

    source: str
    layers: dict[str, LayerStats] = field(compare=False)


@dataclass
class Run:
    path: Path
    name: str  # relative to the sweep directory
    cfg: DictConfig | None
    flat: dict[str, Any]
    overrides: list[str]
    metrics: dict[str, float] | None
    problem: str | None = None
    index: int = 0

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def get(self, key: str, default: Any = None) -> Any:
        return self.flat.get(key, default)

    @property
    def f1(self) -> float | None:
        return None if self.metrics is None else self.metrics.get("test/f1")

    @property
    def setting(self) -> str:
        """`text + shuffled WLI -> TLI` for a generative run, `verbalizer=knowledgeable` for a few-shot
        one, `—` for a run whose config is unreadable: one label for every table and figure of runs."""
        if self.get("task") == "fewshot":
            return f"verbalizer={self.get('verbalizer.kind')}"
        if "direction.name" not in self.flat:
            return "—"
        return Setting.from_flat(self.flat).describe()

    @cached_property
    def dev_checks(self) -> list[DevCheck]:
        """The run's validations (csv/metrics.csv), by step; empty when it logged none."""
        return read_dev_checks(self.path / CSV_METRICS)

    @cached_property
    def dev_below_majority(self) -> bool | None:
        """True when no validation of the run reached a dev F1 above the dev majority baseline by the
        learning margin (`val/f1` against `val/majority_f1` in csv/metrics.csv, `mre.stopping.
        above_majority`): the run never learned more than the most frequent answer; None when the run
        logged neither."""
        return dev_below_majority(self.dev_checks)

    @cached_property
    def ending(self) -> Ending | None:
        """How the run's training ended (`ending.json`: budget, early stopping, ...), so a table of
        runs trained to convergence says which stopped and which ran out of budget; None without one."""
        path = self.path / ENDING
        if not path.exists():
            return None
        try:
            return Ending.read(path)
        except (ValueError, KeyError) as e:
            log.warning("%s cannot be read (%s): the run's ending is left out", path, e)
            return None

    @cached_property
    def flow_file(self) -> str | None:
        """The run's flow file (see `flow_source`) relative to the run directory, looked up once."""
        src = flow_source(self.path)
        return None if src is None else str(src.relative_to(self.path))

    @cached_property
    def flow(self) -> RunFlow | None:
        """The run's flow, read once: the tables, the flow-gain points and the grids all ask for it."""
        return (
            None
            if self.flow_file is None
            else RunFlow(self.flow_file, read_layers(self.path / self.flow_file))
        )


@dataclass(frozen=True)
class DevCheck:
    """One validation of a run: its global step, dev F1 and the dev majority baseline (None when the
    run did not log one)."""

    step: int
    f1: float
    majority_f1: float | None


def read_dev_checks(path: Path) -> list[DevCheck]:
    """A run's validations from its CSV log (`val/f1`, `val/majority_f1`), by step. Lightning's CSV
    logger may write a step's metrics on more than one row, and a resumed run logs again from its last
    checkpoint: the last value logged for a step wins."""
    if not path.exists():
        return []
    f1: dict[int, float] = {}
    majority: dict[int, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            if row.get("val/f1"):
                f1[step] = float(row["val/f1"])
            if row.get("val/majority_f1"):
                majority[step] = float(row["val/majority_f1"])
    return [DevCheck(step, f1[step], majority.get(step)) for step in sorted(f1)]


def dev_below_majority(checks: list[DevCheck]) -> bool | None:
    """See `Run.dev_below_majority`."""
    baselines = [c.majority_f1 for c in checks if c.majority_f1 is not None]
    if not checks or not baselines:
        return None
    return not above_majority(max(c.f1 for c in checks), max(baselines))


def run_flow(run: Run) -> RunFlow | None:
    """The per-layer flow of a run and its file's name relative to the run, or None when it has none."""
    return run.flow


def flow_source(run_dir: Path) -> Path | None:
    """analysis/flow.csv (analyze.py run_dir=...) when present, else the callback's last epoch file."""
    p = run_dir / ANALYSIS / "flow.csv"
    if p.exists():
        return p
    epochs = []
    for f in (run_dir / FLOW).glob("epoch_*.csv"):
        try:
            epochs.append((int(f.stem.split("_", 1)[1]), f))
        except ValueError:
            continue  # epoch_<k>_samples.csv
    return max(epochs)[1] if epochs else None


def describe_sources(sources: list[str]) -> str:
    """One flow file name, or each with its count when the runs' flow comes from different files
    (a run with its own flow analysis next to runs with only the callback's): said, not hidden."""
    counts = Counter(sources)
    if len(counts) == 1:
        return sources[0]
    return ", ".join(f"{name} ({n} of {len(sources)} runs)" for name, n in sorted(counts.items()))


def _plain(v: Any) -> Any:
    v = getattr(v, "value", v)  # enums
    if isinstance(v, list | tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _plain(x)) for k, x in v.items()))
    return v


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """Dotted keys -> values, interpolations resolved where they can be (kept as written otherwise)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}

    def resolve(key: str, node: Any) -> Any:
        try:
            v = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception:
            return node
        if isinstance(v, DictConfig | list) or OmegaConf.is_config(v):
            return OmegaConf.to_container(v, resolve=False)
        return v

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
            return
        if (isinstance(node, str) and "${" in node) or isinstance(node, list):
            node = resolve(prefix, node)
        out[prefix] = _plain(node)

    walk(raw, "")
    return out


def read_run(path: Path, root: Path) -> Run:
    """The run in `path` (its name relative to the sweep directory `root`) and what is wrong with it."""
    name = str(path.relative_to(root)) if path != root else "."
    problem = None
    try:
        cfg = load_run_config(path)
        flat = flatten(cfg)
    except Exception as e:
        cfg, flat, problem = None, {}, f"unreadable config: {e}"
    ov_path = path / OVERRIDES
    overrides = [str(x) for x in OmegaConf.load(ov_path)] if ov_path.exists() else []
    metrics = None
    mpath = path / METRICS
    if mpath.exists():
        try:
            metrics = {k: float(v) for k, v in json.loads(mpath.read_text()).items()}
        except (ValueError, OSError) as e:
            problem = f"unreadable metrics.json: {e}"
    if metrics is None and problem is None:
        problem = "no metrics.json (failed, killed or still running)"
        if any((path / CHECKPOINTS).glob("*.ckpt")):
            problem += f"; it has checkpoints: python train.py resume={path}"
    return Run(path, name, cfg, flat, overrides, metrics, problem)


def _natural_path(path: Path) -> list[tuple[int, int | str]]:
    """Sort key of a path with numbers compared as numbers (`2_a` < `10_a`)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", str(path)) if t]


def _analysis_output(folder: Path, root: Path, hydra_yaml: Path) -> bool:
    """A folder analyze.py wrote (it has Hydra's files too, a run's `.hydra/hydra.yaml` or a sweep's
    `multirun.yaml`): below an `analysis/` folder, or any folder whose Hydra job was `analyze`
    (`output_dir=<run>/analysis_layers`, `analyze.py -m` into a study's folder)."""
    if ANALYSIS.name in folder.relative_to(root).parts:
        return True
    return hydra_yaml.exists() and OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.name") == "analyze"


def discover_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run below sweep_dir (``.hydra/config.yaml``), in natural path order (job `2_...` before
    `10_...`, so a single sweep's run #k is its job k); analyze.py's own outputs skipped."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise MissingInputError(f"sweep_dir {root} is not a directory")
    runs = []
    found = sorted(root.rglob(".hydra/config.yaml"), key=lambda p: _natural_path(p.relative_to(root)))
    for cfg_path in found:
        run_dir = cfg_path.parent.parent
        if not _analysis_output(run_dir, root, run_dir / ".hydra" / "hydra.yaml"):
            runs.append(read_run(run_dir, root))
    for i, r in enumerate(runs):
        r.index = i
    return runs


def _job_lists(overrides: list[str]) -> list[list[str]]:
    """Per key, its `key=value` choices (a later override of a key replaces an earlier one), as the
    basic sweeper combines them; a sweep it cannot enumerate (an interval) raises ValueError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    per_key: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if not o.is_sweep_override():
            per_key[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            per_key[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            raise ConfigError(f"{key}: a {o.value_type.name} sweep names no list of jobs")
    return list(per_key.values())


def expected_jobs(sweep_dir: str | Path) -> list[list[str]] | None:
    """The jobs a basic-sweeper multirun was meant to run (override lists), from multirun.yaml: the
    sweeper's `params` and then the command line's overrides, every combination of their choices."""
    path = Path(sweep_dir) / MULTIRUN
    if not path.exists():
        return None
    try:
        conf = OmegaConf.load(path)
        target = str(OmegaConf.select(conf, "hydra.sweeper._target_", default=""))
        if not target.endswith("BasicSweeper"):
            return None
        params = OmegaConf.select(conf, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params, resolve=False) if OmegaConf.is_config(params) else {}
        task = OmegaConf.select(conf, "hydra.overrides.task", default=None)
        args = [f"{k}={v}" for k, v in (params or {}).items()]
        args += [str(x) for x in (OmegaConf.to_container(task) if OmegaConf.is_config(task) else [])]
        return [list(job) for job in itertools.product(*_job_lists(args))]
    except Exception as e:  # an unusual sweep: list only the runs that exist
        log.warning("could not rebuild the job list from %s: %s", path, e)
        return None


def never_started(sweep_dir: str | Path, runs: list[Run]) -> list[str]:
    """The jobs that left no run directory, as their override lists, from every multirun below
    sweep_dir: a study launched as several sweeps into sub-folders (one per data draw or seed, as
    docs/results' scripts do) is read as one. A sub-folder's jobs are prefixed with its path and
    matched only against the runs inside it, so two sub-sweeps with the same jobs do not hide each
    other's gaps."""
    root = Path(sweep_dir)
    multiruns = sorted(root.rglob(MULTIRUN), key=lambda p: _natural_path(p.relative_to(root)))
    out: list[str] = []
    for sub in (m.parent for m in multiruns if not _analysis_output(m.parent, root, m)):
        jobs = expected_jobs(sub) or []
        present = {frozenset(r.overrides) for r in runs if r.path.is_relative_to(sub)}
        where = "" if sub == root else f"{sub.relative_to(root).as_posix()}/: "
        out += [where + " ".join(j) for j in jobs if frozenset(j) not in present]
    return out
