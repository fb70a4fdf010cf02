"""Checkpoints that survive faults: written atomically, read back only when whole, and carrying the
random state, so a run killed at any point resumes to the numbers of an uninterrupted one.

* `AtomicCheckpointIO`: each checkpoint is written to a temporary file in its own directory, flushed
  to disk and renamed over the old one; a full disk or a kill mid-write leaves the previous
  checkpoint intact (and no partial file behind).
* `newest_readable`: the newest checkpoint of a run directory that reads back as a whole file; a
  truncated or corrupt one is skipped with a message naming it.
* `StepCheckpoint`: `last.ckpt` every few optimizer steps, and at the step during which SIGTERM came
  (what SLURM sends before it preempts a job: the resume loses no step), never at an epoch's last
  batch (Lightning resumes from a checkpoint taken there as if the epoch had ended: its validation
  and epoch-end hooks would never run).
* `RandomState`: a callback whose state is the Python, NumPy and torch random generators, restored
  on resume (dropout masks then continue as in the uninterrupted run).
"""

from __future__ import annotations

import io
import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def _write_bytes(handle, data: bytes) -> None:
    """One write (a seam for the full-disk test)."""
    handle.write(data)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to `<path>.tmp-<pid>` beside the target, fsync, then `os.replace`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                _write_bytes(f, buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def is_whole(path: str | Path) -> bool:
    """Whether a checkpoint file reads back as a whole torch archive (a truncated zip has no directory)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist()) and z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def newest_readable(folder: Path) -> Path | None:
    """The newest whole `*.ckpt` in `folder` (None when there is none), naming every one skipped."""
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for p in candidates:
        if is_whole(p):
            return p
        log.warning("checkpoint %s is truncated or corrupt: skipped (an older one is used)", p)
    return None


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint was taken at (memory-mapped: the weights are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])


class StepCheckpoint(ModelCheckpoint):
    """A `ModelCheckpoint` with `every_n_train_steps` that skips an epoch's last batch and also saves at
    the end of the step during which SIGTERM came (see above).

    Lightning stops the loop on SIGTERM only after the step's batch-end hooks (and a validation due
    then), so the checkpoint is taken here, where the scheduled ones are: a resume from either is the
    same tested path. A SIGTERM during validation stops the run before the next batch end: the
    scheduled checkpoint is then the newest. Ctrl+C (SIGINT) raises wherever the process is, between
    any two operations of a step, so it gets no checkpoint of its own."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kw: Any
    ) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if _sigterm_received(trainer):
            trainer.save_checkpoint(self.format_checkpoint_name({}))
            log.warning("SIGTERM: saved %s at step %d", self.filename, trainer.global_step)
        else:
            super().on_train_batch_end(trainer, pl_module, *args, **kw)


def _sigterm_received(trainer: L.Trainer) -> bool:
    """Whether any process received SIGTERM (all ranks take part in saving a sharded checkpoint)."""
    got = bool(getattr(trainer, "received_sigterm", False))
    return trainer.strategy.reduce_boolean_decision(got, all=False)


class RandomState(L.Callback):
    """Saves the random generators' states in every checkpoint and restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # tensors and plain values only:
        return {  # checkpoints stay loadable with torch.load(weights_only=True)
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
