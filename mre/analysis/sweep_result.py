"""The result of a sweep analysis: its runs, the jobs that never started, the studies' tables, the
known-answer checks, the learning curves, the flow-gain analysis, the knockouts against relative
depth and the runs' dev F1 paths.

`write(dir)` writes each part's files and ``sweep.json`` (what the sweep holds: its directory, the
jobs that never started, the statistics' settings and which studies have a table or a check);
`read(dir)` reads them back and the runs again from the sweep directory, and gives an equal object.
`mre.analysis.report` renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mre.analysis.depth_profile import FILE as DEPTH_FILE
from mre.analysis.depth_profile import DepthProfile
from mre.analysis.dev_curves import FILE as DEV_FILE
from mre.analysis.dev_curves import DevCurves
from mre.analysis.flow_gain import CORRELATIONS, FlowGain
from mre.analysis.known_answer import KnownAnswer
from mre.analysis.learning_curve import LearningCurve
from mre.analysis.runs import Run, discover_runs
from mre.analysis.tables import SweepTable

SUMMARY = "sweep.json"


@dataclass
class SweepResult:
    sweep_dir: Path
    runs: list[Run]
    missing: list[str]  # jobs that never started (their overrides)
    n_boot: int  # bootstrap resamples of each row's interval
    n_perm: int  # permutations of each row's test
    tables: dict[str, SweepTable]  # by study key, in the order of `STUDIES`
    known: dict[str, KnownAnswer]  # by study key
    flow_gain: FlowGain | None
    curves: dict[str, LearningCurve] = field(default_factory=dict)  # by study key: sweeps of n_train
    collapse_share: float = 0.95  # the share of one answer at which a run counts as collapsed
    depth: DepthProfile | None = None  # layer-resolved knockouts against relative depth
    dev: DevCurves | None = None  # the runs' dev F1 at each validation check

    @property
    def unfinished(self) -> list[Run]:
        return [r for r in self.runs if not r.finished]

    def run(self, name: str) -> Run:
        """The run of that name (relative to the sweep directory)."""
        return next(r for r in self.runs if r.name == name)

    def write(self, out_dir: Path) -> list[Path]:
        """Every part's files and `sweep.json`."""
        files = [p for t in self.tables.values() for p in t.write(out_dir)]
        files += [k.write(out_dir) for k in self.known.values()]
        files += [c.write(out_dir) for c in self.curves.values()]
        if self.flow_gain is not None:
            files += self.flow_gain.write(out_dir)
        if self.depth is not None:
            files += self.depth.write(out_dir)
        if self.dev is not None:
            files.append(self.dev.write(out_dir))
        summary = {
            "sweep_dir": str(self.sweep_dir),
            "missing": self.missing,
            "n_boot": self.n_boot,
            "n_perm": self.n_perm,
            "tables": list(self.tables),
            "known_answer": list(self.known),
            "learning_curves": list(self.curves),
            "collapse_share": self.collapse_share,
        }
        path = out_dir / SUMMARY
        path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return [*files, path]

    @classmethod
    def read(cls, out_dir: Path) -> SweepResult:
        s = json.loads((out_dir / SUMMARY).read_text(encoding="utf-8"))
        sweep_dir = Path(s["sweep_dir"])
        return cls(
            sweep_dir,
            discover_runs(sweep_dir),
            s["missing"],
            s["n_boot"],
            s["n_perm"],
            {k: SweepTable.read(out_dir, k) for k in s["tables"]},
            {k: KnownAnswer.read(out_dir, k) for k in s["known_answer"]},
            FlowGain.read(out_dir) if (out_dir / CORRELATIONS).exists() else None,
            {k: LearningCurve.read(out_dir, k) for k in s.get("learning_curves", [])},
            s.get("collapse_share", 0.95),
            DepthProfile.read(out_dir) if (out_dir / DEPTH_FILE).exists() else None,
            DevCurves.read(out_dir) if (out_dir / DEV_FILE).exists() else None,
        )
