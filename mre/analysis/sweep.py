"""Read a Hydra multirun directory and build the paper's comparisons from its runs.

Runs are found as every directory below ``sweep_dir`` that holds ``.hydra/config.yaml`` (the
``analysis/`` output is skipped). A run is *finished* when it wrote ``metrics.json``; the others
(failed, killed, still running) are listed and left out of the tables. With Hydra's basic sweeper the
jobs a sweep was meant to run are rebuilt from ``multirun.yaml`` (``hydra.sweeper.params`` plus the
command-line sweep), so jobs that never started (a sweep stops at its first failed job) are listed
too.

Comparisons (``STUDIES``): the paper's Table 2 (WLI F1: text only vs text + TLI), Table 3 (TLI F1:
text only vs text + WLI) and Table 4 (few-shot F1: manual verbalizer vs knowledgeable verbalizer).
Two runs are paired when their configs are equal except for the compared setting (``with_anchor``,
or the ``verbalizer`` node) and the keys that do not change the result (``sweep.ignore_keys``: paths,
loggers, callbacks, device placement). Keys other than the data set that vary between pairs (a model,
the synthetic generator's strengths) become extra label columns; runs that differ only in ``seed`` are
one row. Each row gets a seed-aware comparison of its F1 difference on the same test ids
(``mre.stats.compare``: hierarchical bootstrap interval, paired permutation test, Benjamini-Hochberg
across the table); two runs with different test ids are refused (``MismatchedTestSetError``), or,
with ``sweep.on_mismatch=skip``, reported as refused in their row.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mre.config import SweepOptions, load_run_config
from mre.data.wli_format import WLIFormat
from mre.flow.files import read_layers
from mre.results import read_jsonl
from mre.rundir import ANALYSIS, CHECKPOINTS, FLOW, METRICS, OVERRIDES, PREDICTIONS
from mre.setting import AnchorKind, Direction, Setting
from mre.stats import (
    Comparison,
    LayerStats,
    MismatchedTestSetError,
    PairCounts,
    adjust_bh,
    align_predictions,
    compare,
    pair_counts,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


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


def _read_run(path: Path, root: Path) -> Run:
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


def discover_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run below sweep_dir (``.hydra/config.yaml``), in natural path order (job `2_...` before
    `10_...`, so a single sweep's run #k is its job k); analysis dirs skipped."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep_dir {root} is not a directory")
    runs = []
    found = sorted(root.rglob(".hydra/config.yaml"), key=lambda p: _natural_path(p.relative_to(root)))
    for cfg_path in found:
        run_dir = cfg_path.parent.parent
        rel = run_dir.relative_to(root).parts
        if "analysis" in rel:  # this tool's own output (it has a .hydra/ too)
            continue
        runs.append(_read_run(run_dir, root))
    for i, r in enumerate(runs):
        r.index = i
    return runs


def expected_jobs(sweep_dir: str | Path) -> list[list[str]] | None:
    """The jobs a basic-sweeper multirun was meant to run (override lists), from multirun.yaml."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        conf = OmegaConf.load(path)
        target = str(OmegaConf.select(conf, "hydra.sweeper._target_", default=""))
        if not target.endswith("BasicSweeper"):
            return None
        params = OmegaConf.select(conf, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params, resolve=False) if OmegaConf.is_config(params) else {}
        task = OmegaConf.select(conf, "hydra.overrides.task", default=None)
        args = [f"{k}={v}" for k, v in (params or {}).items()]
        args += [str(x) for x in (OmegaConf.to_container(task) if OmegaConf.is_config(task) else [])]
        parsed = OverridesParser.create().parse_overrides(args)
        batches = BasicSweeper.split_arguments(parsed, None)
        return [list(job) for batch in batches for job in batch]
    except Exception as e:  # an unusual sweep: list only the runs that exist
        log.warning("could not rebuild the job list from %s: %s", path, e)
        return None


def never_started(sweep_dir: str | Path, runs: list[Run]) -> list[str]:
    jobs = expected_jobs(sweep_dir)
    if not jobs:
        return []
    present = {frozenset(r.overrides) for r in runs}
    return [" ".join(j) for j in jobs if frozenset(j) not in present]


# --------------------------------------------------------------------------------------------------
# studies (the paper's tables)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    kind: Direction  # the answers' level: how F1 is computed from predictions.jsonl
    compare: tuple[str, ...]  # config keys/prefixes that define the two sides
    label_a: str
    label_b: str
    select: Callable[[Run], bool]
    side: Callable[[Run], str | None]  # "a" | "b" | None
    anchored: bool = True  # the b side has an anchor: flow strength, flow grid, known-answer check
    figure: str | None = None  # the flow grid's file stem (None: no grid)
    known_answer: bool = False  # gold anchor vs none: the planted-strength check applies
    control: AnchorKind | None = None  # a control-anchor study: shown only when such runs exist


ANCHOR_KEYS = ("with_anchor", "anchor_kind")


def _generative(direction: Direction, kinds: tuple[AnchorKind | None, ...]) -> Callable[[Run], bool]:
    """Generative runs of a direction whose anchor is one of `kinds` (None: no anchor)."""

    def select(r: Run) -> bool:
        if r.get("task") != "generative":
            return False
        s = Setting.from_flat(r.flat)
        return s.direction is direction and (s.anchor if s.with_anchor else None) in kinds

    return select


def _anchor_side(b_kind: AnchorKind) -> Callable[[Run], str | None]:
    """b: the `b_kind` anchor; a: the other side of the study (no anchor, or another kind)."""

    def side(r: Run) -> str:
        s = Setting.from_flat(r.flat)
        return "b" if s.with_anchor and s.anchor is b_kind else "a"

    return side


def _kv_side(r: Run) -> str | None:
    return {"manual": "a", "knowledgeable": "b"}.get(str(r.get("verbalizer.kind")))


def _anchor_label(direction: Direction, kind: AnchorKind | None) -> str:
    level = Setting(direction, True).anchor_level
    if kind is None:
        return "Text only"
    return f"Text + {level}" if kind is AnchorKind.gold else f"Text + {kind.value} {level}"


def _anchor_study(key: str, title: str, direction: Direction, a: AnchorKind | None, b: AnchorKind) -> Study:
    """F1 of the `direction` output with anchor kind `b` against `a` (None: without an anchor)."""
    compare = ANCHOR_KEYS if a is None else ("anchor_kind",)
    main = a is None and b is AnchorKind.gold  # the paper's Table 2 or 3
    # a grid of the b side's flow; against gold (b) the main table already draws it
    figure = f"flow_grid_{direction.value}" if main else (f"flow_grid_{key}" if a is None else None)
    control = next((k for k in (a, b) if k not in (None, AnchorKind.gold)), None)
    return Study(
        key, title, direction, compare, _anchor_label(direction, a), _anchor_label(direction, b),
        _generative(direction, (a, b)), _anchor_side(b), True, figure, known_answer=main, control=control,
    )  # fmt: skip


def _control_studies() -> list[Study]:
    """Per direction and control kind: the control against no anchor (does a longer prompt or the
    anchor's format help?) and the gold anchor against the control (does the information help?)."""
    out = []
    for d in (Direction.wli, Direction.tli):
        for k in (AnchorKind.shuffled, AnchorKind.random):
            lk, lg, ln = (_anchor_label(d, x) for x in (k, AnchorKind.gold, None))
            out.append(
                _anchor_study(
                    f"control_{d.value}_{k.value}",
                    f"Control ({d.value.upper()} F1): {ln} vs {lk}",
                    d,
                    None,
                    k,
                )
            )
            out.append(
                _anchor_study(
                    f"control_{d.value}_{k.value}_vs_gold",
                    f"Control ({d.value.upper()} F1): {lk} vs {lg}",
                    d,
                    k,
                    AnchorKind.gold,
                )
            )
    return out


STUDIES = [
    _anchor_study(
        "table2_wli", "Table 2: WLI F1, text only vs text + TLI", Direction.wli, None, AnchorKind.gold
    ),
    _anchor_study(
        "table3_tli", "Table 3: TLI F1, text only vs text + WLI", Direction.tli, None, AnchorKind.gold
    ),
    Study(
        "table4_kv",
        "Table 4: few-shot TLI F1, without KV (manual verbalizer) vs KV (knowledgeable verbalizer)",
        Direction.tli,
        ("verbalizer",),
        "without KV",
        "KV",
        lambda r: r.get("task") == "fewshot",
        _kv_side,
        anchored=False,
    ),
    *_control_studies(),
]


@dataclass
class SeedPair:
    """The two runs of one training seed in a comparison (None: missing or unfinished)."""

    seed: Any
    a: Run | None
    b: Run | None


@dataclass
class Row:
    labels: dict[str, Any]  # dataset.name and the varying keys (never the seed: seeds are pooled)
    pairs: list[SeedPair]
    comparison: Comparison | None = None
    note: str = ""
    s_pq: float | None = None  # mean over layers (and seeds) of the b runs' S_pq
    s_pq_ratio: float | None = None  # that mean over the mean S_ww (the reference level): free of loss scale
    flow_source: str | None = None
    refused: str | None = None  # why the pair was refused (sweep.on_mismatch=skip)
    compared: list[SeedPair] = field(default_factory=list)  # the seeds of `comparison.per_seed`, in order

    @property
    def complete(self) -> list[SeedPair]:
        """The seeds whose two runs both finished."""
        return [
            p for p in self.pairs if p.a is not None and p.a.finished and p.b is not None and p.b.finished
        ]

    def _mean_f1(self, side: str) -> float | None:
        values = [
            getattr(p, side).f1
            for p in self.pairs
            if getattr(p, side) is not None and getattr(p, side).finished
        ]
        return float(np.mean(values)) if values else None

    @property
    def f1_a(self) -> float | None:
        return self.comparison.f1_a if self.comparison else self._mean_f1("a")

    @property
    def f1_b(self) -> float | None:
        return self.comparison.f1_b if self.comparison else self._mean_f1("b")

    @property
    def diff(self) -> float | None:
        if self.comparison:
            return self.comparison.diff
        if self.f1_a is None or self.f1_b is None or self.refused:
            return None
        return self.f1_b - self.f1_a

    def runs(self, side: str) -> list[Run]:
        return [getattr(p, side) for p in self.pairs if getattr(p, side) is not None]


@dataclass
class Table:
    study: Study
    label_keys: list[str]
    rows: list[Row]


def _ignored(key: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _label_keys(groups: dict[frozenset, list[Run]]) -> list[str]:
    """Keys whose value differs between groups; X.k hidden when X.name determines it."""
    dicts = [dict(g) for g in groups]
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({repr(d.get(k)) for d in dicts}) > 1]
    shown = []
    for k in varying:
        parts = k.split(".")
        name_keys = [".".join([*parts[:i], "name"]) for i in range(1, len(parts))]
        if any(nk != k and nk in varying and _determines(dicts, nk, k) for nk in name_keys):
            continue  # set by a group choice shown by its name (model.name, dataset.name, ...)
        shown.append(k)
    if "dataset.name" in shown:
        shown.remove("dataset.name")
    return ["dataset.name", *shown]


def _determines(dicts: list[dict[str, Any]], name_key: str, key: str) -> bool:
    by_name: dict[str, set[str]] = {}
    for d in dicts:
        by_name.setdefault(repr(d.get(name_key)), set()).add(repr(d.get(key)))
    return all(len(v) == 1 for v in by_name.values())


def _natural(v: Any) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _latest_finished(runs: list[Run]) -> Run | None:
    fin = [r for r in runs if r.finished]
    return max(fin, key=lambda r: (r.path / METRICS).stat().st_mtime) if fin else None


def _seed_pairs(study: Study, group: list[Run]) -> tuple[list[SeedPair], list[str]]:
    """The group's runs paired by training seed, and notes on what is missing."""
    by_seed: dict[Any, dict[str, list[Run]]] = {}
    for r in group:
        by_seed.setdefault(r.get("seed"), {"a": [], "b": []})[study.side(r)].append(r)
    pairs, notes = [], []
    for seed in sorted(by_seed, key=_natural):
        sides = by_seed[seed]
        chosen = {}
        for s, rs in sides.items():
            label = study.label_a if s == "a" else study.label_b
            chosen[s] = _latest_finished(rs)
            if not rs:
                notes.append(f"no {label} run (seed {seed})")
            elif chosen[s] is None:
                notes.append(f"{label} (seed {seed}): run #{rs[0].index} not finished")
            elif sum(r.finished for r in rs) > 1:
                notes.append(
                    f"{label} (seed {seed}): several finished runs; used #{chosen[s].index} (the latest)"
                )
        pairs.append(SeedPair(seed, chosen["a"], chosen["b"]))
    return pairs, notes


def _has_anchor(run: Run, kind: AnchorKind) -> bool:
    s = Setting.from_flat(run.flat)
    return s.with_anchor and s.anchor is kind


def build_table(study: Study, runs: list[Run], opts: SweepOptions) -> Table | None:
    """The study's rows: runs grouped by every setting but the compared one and the seed."""
    members = [r for r in runs if r.cfg is not None and study.select(r) and study.side(r) is not None]
    if not members or (study.control and not any(_has_anchor(r, study.control) for r in members)):
        return None
    ignore = [*opts.ignore_keys, *study.compare, "seed"]
    groups: dict[frozenset, list[Run]] = {}
    for r in members:
        base = frozenset((k, v) for k, v in r.flat.items() if not _ignored(k, ignore))
        groups.setdefault(base, []).append(r)
    label_keys = _label_keys(groups)
    rows = []
    for base, group in groups.items():
        d = dict(base)
        pairs, notes = _seed_pairs(study, group)
        rows.append(Row({k: d.get(k) for k in label_keys}, pairs, note="; ".join(notes)))
    rows.sort(key=lambda row: tuple(_natural(row.labels[k]) for k in label_keys))
    return Table(study, label_keys, rows)


def _wli_format(run: Run) -> WLIFormat:
    return WLIFormat(
        str(run.get("prompt.pair_sep", ";")),
        str(run.get("prompt.kv_sep", ":")),
        str(run.get("prompt.empty", "none")),
    )


def _pair_counts(table: Table, pair: SeedPair) -> PairCounts:
    ra, rb = align_predictions(
        read_jsonl(pair.a.path / PREDICTIONS),
        read_jsonl(pair.b.path / PREDICTIONS),
        f"run #{pair.a.index} ({pair.a.name})",
        f"run #{pair.b.index} ({pair.b.name})",
    )
    counts = pair_counts(ra, rb, table.study.kind, _wli_format(pair.a))
    for run, f in ((pair.a, counts.f1_a()), (pair.b, counts.f1_b())):
        if run.f1 is not None and abs(run.f1 - f) > 1e-4:
            log.warning(
                "run #%d: F1 from predictions.jsonl (%.4f) differs from metrics.json test/f1 (%.4f)",
                run.index,
                f,
                run.f1,
            )
    return counts


def pair_rows(table: Table, opts: SweepOptions, seed: int) -> None:
    """The seed-aware comparison of every row (over its seeds whose two runs finished with
    predictions), then Benjamini-Hochberg adjusted p-values across the table's rows."""
    for row in table.rows:
        pairs = [
            p for p in row.complete if (p.a.path / PREDICTIONS).exists() and (p.b.path / PREDICTIONS).exists()
        ]
        if len(pairs) < len(row.complete):
            row.note = _join(row.note, "a run has no predictions.jsonl: left out of the interval")
        if not pairs:
            continue
        try:
            counts = [_pair_counts(table, p) for p in pairs]
            if len({frozenset(r["id"] for r in read_jsonl(p.a.path / PREDICTIONS)) for p in pairs}) > 1:
                raise MismatchedTestSetError(
                    f"the seeds of row {row.labels} were evaluated on different test samples"
                )
        except MismatchedTestSetError as e:
            if opts.on_mismatch == "skip":
                row.refused = str(e)
                continue
            raise
        row.comparison = compare(counts, n_boot=opts.n_boot, n_perm=opts.n_perm, seed=seed)
        row.compared = pairs
    adjust_bh([row.comparison for row in table.rows if row.comparison is not None])


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else a or b


# --------------------------------------------------------------------------------------------------
# flow of the with-anchor runs
# --------------------------------------------------------------------------------------------------


def flow_source(run: Run) -> Path | None:
    """analysis/flow.csv (analyze.py run_dir=...) when present, else the callback's last epoch file."""
    p = run.path / ANALYSIS / "flow.csv"
    if p.exists():
        return p
    epochs = []
    for f in (run.path / FLOW).glob("epoch_*.csv"):
        try:
            epochs.append((int(f.stem.split("_", 1)[1]), f))
        except ValueError:
            continue  # epoch_<k>_samples.csv
    return max(epochs)[1] if epochs else None


def run_flow(run: Run) -> tuple[Path, dict[str, LayerStats]] | None:
    """The per-layer flow of a run (see `flow_source`), or None when it has none."""
    src = flow_source(run)
    return None if src is None else (src, read_layers(src))


def attach_flow(table: Table) -> None:
    """Each row's flow strength: the mean over layers, then over seeds, of the b runs' S_pq (and its
    ratio to S_ww, free of the loss scale)."""
    if not table.study.anchored:
        return
    for row in table.rows:
        found = [
            (run, f) for run in row.runs("b") if run.finished and (f := run_flow(run)) and "S_pq" in f[1]
        ]
        if not found:
            continue
        s_pq = [float(np.nanmean(stats["S_pq"].mean)) for _, (_, stats) in found]
        s_ww = [float(np.nanmean(stats["S_ww"].mean)) for _, (_, stats) in found]
        row.s_pq = float(np.mean(s_pq))
        row.s_pq_ratio = (
            float(np.mean([p / w for p, w in zip(s_pq, s_ww, strict=True) if w > 0]))
            if all(w > 0 for w in s_ww)
            else None
        )
        row.flow_source = describe_sources([str(src.relative_to(run.path)) for run, (src, _) in found])


def describe_sources(sources: list[str]) -> str:
    """One flow file name, or each with its count when the runs' flow comes from different files
    (a run with its own flow analysis next to runs with only the callback's): said, not hidden."""
    counts = Counter(sources)
    if len(counts) == 1:
        return sources[0]
    return ", ".join(f"{name} ({n} of {len(sources)} runs)" for name, n in sorted(counts.items()))


def compute_missing_flow(runs: list[Run], flow_opts, seed: int, cache_dir: str | None) -> None:
    """Run the flow analysis on every finished generative with-anchor run without analysis/flow.csv."""
    from mre.analysis.flow_run import analyze_run

    for r in runs:
        if not (r.finished and r.get("task") == "generative" and Setting.from_flat(r.flat).with_anchor):
            continue
        if (r.path / ANALYSIS / "flow.csv").exists():
            continue
        log.info("flow analysis of run #%d (%s)", r.index, r.name)
        analyze_run(r.path, flow_opts, seed, cache_dir)


# --------------------------------------------------------------------------------------------------
# the known-answer check (a sweep over the synthetic generator's strengths)
# --------------------------------------------------------------------------------------------------

STRENGTH_KEYS = ("dataset.synthetic.wli_helps_tli", "dataset.synthetic.tli_helps_wli")


MIN_SEEDS = 3  # the known-answer check wants training noise measured, not only test-sample noise


def known_effect(table: Table) -> dict[str, Any] | None:
    """Per strength level: the seed-aware gain of with-anchor over without, and the mean S_pq.

    Passes when (1) every level has at least MIN_SEEDS seeds, (2) the seed-aware interval at strength
    0 contains 0 (without a planted effect the anchor carries no information), and (3) the gain rises
    with the strength: the strongest level's interval lies above the gain at strength 0, and no level's
    gain falls below the previous level's lower bound. Only for sweeps that vary the synthetic strengths.
    """
    keys = [k for k in table.label_keys if k in STRENGTH_KEYS]
    if not keys or not table.study.known_answer:
        return None
    levels = []
    for row in table.rows:
        if row.comparison is None:
            continue
        try:
            level = tuple(float(row.labels[k]) for k in keys)
        except (TypeError, ValueError):
            continue
        levels.append((level, row))
    if len(levels) < 2:
        return None
    levels.sort(key=lambda x: x[0])
    null = [row.comparison for lv, row in levels if all(v == 0 for v in lv)]
    strongest = levels[-1][1].comparison
    checks = {
        "null level present": bool(null),
        f"at least {MIN_SEEDS} seeds per level": all(r.comparison.n_seeds >= MIN_SEEDS for _, r in levels),
        "the interval at strength 0 contains 0": bool(null) and null[0].lo <= 0 <= null[0].hi,
        "the strongest level's interval lies above the gain at strength 0": bool(null)
        and strongest.lo > null[0].diff,
        "the gain never falls below the previous level's lower bound": all(
            b.comparison.diff >= a.comparison.lo for (_, a), (_, b) in itertools.pairwise(levels)
        ),
    }
    return {
        "keys": keys,
        "min_seeds": MIN_SEEDS,
        "levels": levels,
        "checks": checks,
        "recovered": all(checks.values()),
        "s_pq_trend": _trend([row.s_pq for _, row in levels]),
        "s_pq_ratio_trend": _trend([row.s_pq_ratio for _, row in levels]),
    }


def _trend(values: list[float | None]) -> str | None:
    if len(values) < 2 or not all(v is not None and math.isfinite(v) for v in values):
        return None
    if all(b >= a for a, b in itertools.pairwise(values)):
        return "increasing"
    if all(b <= a for a, b in itertools.pairwise(values)):
        return "decreasing"
    return "not monotone"
