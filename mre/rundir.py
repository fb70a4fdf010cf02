"""The layout of a run directory, shared by the runner that writes it and the tools that read it.

<run dir>/.hydra/config.yaml      the composed config (overrides.yaml: the command-line overrides)
<run dir>/checkpoints/            last.ckpt and the best checkpoint by val/f1
<run dir>/metrics.json            flat test metrics ({"test/f1": ...}); present = the run finished
<run dir>/ending.json             why training stopped (budget, early stopping, NaN guard, a signal) and where
<run dir>/.lock                   held by the process writing the run (mre.runlock)
<run dir>/predictions.jsonl       one row per test sample: id, prompt, gold, prediction, correct
<run dir>/model/                  save_pretrained format (adapters only for LoRA) + tokenizer
<run dir>/flow/                   the flow callback's per-epoch files
<run dir>/analysis/               what analyze.py run_dir=<run dir> writes
"""

from __future__ import annotations

from pathlib import Path

from mre.errors import MissingInputError

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINTS = Path("checkpoints")
METRICS = Path("metrics.json")
ENDING = Path("ending.json")
CSV_METRICS = Path("csv") / "metrics.csv"
PREDICTIONS = Path("predictions.jsonl")
MODEL = Path("model")
FLOW = Path("flow")
ANALYSIS = Path("analysis")


class RunDirError(MissingInputError):
    """A path that should name a run directory does not."""


def resolve_run_dir(run_dir: str | Path) -> Path:
    """A run directory, or `<sweep dir>/<job number>` for the sweep's job of that number (its directory
    is `<number>_<overrides>`)."""
    path = Path(run_dir)
    if path.exists() or not path.name.isdigit() or not path.parent.is_dir():
        return path
    hits = [p for p in path.parent.iterdir() if p.is_dir() and p.name.split("_", 1)[0] == path.name]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise RunDirError(f"{path.parent} has no job {path.name} (no directory named {path.name}_...)")
    raise RunDirError(f"{path.parent} has several directories of job {path.name}: {[h.name for h in hits]}")


def previous_wandb_id(run_dir: Path) -> str | None:
    """The id of the W&B run a run directory logged to (`wandb/[offline-]run-<time>-<id>`)."""
    runs = sorted((run_dir / "wandb").glob("*run-*-*"))
    return runs[-1].name.rsplit("-", 1)[1] if runs else None
