"""A CSV logger whose file survives a resumed run.

Lightning's CSV writer deletes an existing `metrics.csv` when a new process opens the folder (a run
resumed in place, or the test stage of `ddp_spawn` after fit) and only knows the columns it wrote
itself. This one keeps the file and its columns, so the history of a resumed run is whole; the rows
a killed run wrote after its last checkpoint are cut by `truncate_after` before the run continues
(they are logged again, from the checkpoint on).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer, minus the deletion; the file's own header joins the known columns at every
    save (another process may have written the file since: the test stage of `ddp_spawn`, a resume)."""

    def _check_log_dir_exists(self) -> None:
        """Keep an existing file (Lightning deletes it here)."""

    def _record_new_keys(self) -> set[str]:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` that appends to the metrics.csv of an earlier process."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def truncate_after(path: Path, step: int) -> int:
    """Drop the rows of `path` logged after optimizer step `step` (a resumed run logs them again);
    returns how many were dropped."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= step]
    if len(kept) < len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, path)
    return len(rows) - len(kept)
