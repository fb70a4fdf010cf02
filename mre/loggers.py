"""A CSV logger that can append to the metrics.csv of an earlier process.

Lightning's CSV writer only knows the columns it wrote itself; a new process writing to an
existing file (a run resumed with `ckpt_path=last`, or the test stage of `ddp_spawn` after fit)
rewrites the header without the earlier columns and fails. Reading the existing header first
makes both cases append cleanly.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger as _CSVLogger


class CSVLogger(_CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` that keeps the columns of an existing metrics.csv."""

    @property
    def experiment(self):
        exp = super().experiment
        path = getattr(exp, "metrics_file_path", None)
        if path and not exp.metrics_keys and os.path.isfile(path):
            with open(path, newline="") as f:
                exp.metrics_keys = sorted(next(csv.reader(f), []))
        return exp
