"""A study's table: its runs paired by setting and seed, the seed-aware statistics of each row, and
the table as a result that is written to and read back from CSV.

Two runs are paired when their configs are equal except for the compared setting (``with_anchor``,
or the ``verbalizer`` node) and the keys that do not change the result (``sweep.ignore_keys``: paths,
loggers, callbacks, device placement). Keys other than the data set that vary between pairs (a model,
the synthetic generator's strengths) become extra label columns; runs that differ only in ``seed`` and
``dataset.split_seed`` (the data draw) are one row. Each row gets a draw- and seed-aware comparison of
its F1 difference, each run pair on its draw's test ids (``mre.stats.compare``: three-level bootstrap
interval, paired permutation test, Benjamini-Hochberg across the table, the split of the variance of
Δ between draws, seeds and test samples); two runs of one draw with different test ids are refused
(``MismatchedTestSetError``), or, with ``sweep.on_mismatch=skip``, reported as refused in their row.
Every compared run's collapse (``mre.stats.collapse``: one answer for nearly every test text, or a dev
F1 never above the dev majority baseline) is marked; a row whose runs all collapsed on both sides is
not compared.

`Table` is the working form (rows hold the runs); `SweepTable` is the result: exactly what
``<key>.csv`` and ``<key>_seeds.csv`` hold, so `SweepTable.read(dir, key) == table.result()`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mre.analysis.runs import Run, describe_sources, run_flow
from mre.analysis.studies import STUDIES, Study, has_anchor
from mre.config import OnMismatch, SweepOptions
from mre.data.wli_format import WLIFormat
from mre.results import read_jsonl
from mre.rundir import METRICS, PREDICTIONS
from mre.stats import (
    Collapse,
    Comparison,
    MismatchedTestSetError,
    PairCounts,
    VarianceSplit,
    adjust_bh,
    align_predictions,
    collapse,
    compare,
)
from mre.stats import pair_counts as count_pairs

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# the working table: rows of runs
# --------------------------------------------------------------------------------------------------


@dataclass
class SeedPair:
    """The two runs of one training seed and data draw in a comparison (None: missing or unfinished),
    and their collapse once compared."""

    seed: Any
    a: Run | None
    b: Run | None
    draw: Any = None  # dataset.split_seed
    collapse_a: Collapse | None = None
    collapse_b: Collapse | None = None

    def collapsed(self, side: str) -> bool | None:
        """The run answered (nearly) one thing, or its dev F1 never rose above the majority baseline."""
        c, run = getattr(self, f"collapse_{side}"), getattr(self, side)
        return None if c is None else c.collapsed or run.dev_below_majority is True


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
    both_collapsed: bool = False  # every compared run of both sides collapsed: not compared

    @property
    def complete(self) -> list[SeedPair]:
        """The seeds whose two runs both finished."""
        return [
            p for p in self.pairs if p.a is not None and p.a.finished and p.b is not None and p.b.finished
        ]

    def _mean_f1(self, side: str) -> float | None:
        values = [r.f1 for r in self.runs(side) if r.finished]
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
        if self.f1_a is None or self.f1_b is None or self.refused or self.both_collapsed:
            return None
        return self.f1_b - self.f1_a

    def runs(self, side: str) -> list[Run]:
        return [getattr(p, side) for p in self.pairs if getattr(p, side) is not None]


@dataclass
class Table:
    study: Study
    label_keys: list[str]
    rows: list[Row]

    def result(self) -> SweepTable:
        """The table as written to its CSV files."""
        rows = tuple(_row_result(self, r) for r in self.rows)
        return SweepTable(self.study.key, tuple(self.label_keys), rows)


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


DRAW_KEY = "dataset.split_seed"  # the data draw: which texts are drawn for train, dev and test


def _seed_pairs(study: Study, group: list[Run]) -> tuple[list[SeedPair], list[str]]:
    """The group's runs paired by data draw and training seed, and notes on what is missing."""
    by_seed: dict[tuple[Any, Any], dict[str, list[Run]]] = {}
    for r in group:
        by_seed.setdefault((r.get(DRAW_KEY), r.get("seed")), {"a": [], "b": []})[study.side(r)].append(r)
    several_draws = len({d for d, _ in by_seed}) > 1
    pairs, notes = [], []
    for draw, seed in sorted(by_seed, key=lambda k: (_natural(k[0]), _natural(k[1]))):
        sides = by_seed[draw, seed]
        where = f"split_seed {draw}, seed {seed}" if several_draws else f"seed {seed}"
        chosen = {}
        for s, rs in sides.items():
            label = study.label_a if s == "a" else study.label_b
            chosen[s] = _latest_finished(rs)
            if not rs:
                notes.append(f"no {label} run ({where})")
            elif chosen[s] is None:
                notes.append(f"{label} ({where}): run #{rs[0].index} not finished")
            elif sum(r.finished for r in rs) > 1:
                notes.append(
                    f"{label} ({where}): several finished runs; used #{chosen[s].index} (the latest)"
                )
        pairs.append(SeedPair(seed, chosen["a"], chosen["b"], draw))
    return pairs, notes


def build_table(study: Study, runs: list[Run], opts: SweepOptions) -> Table | None:
    """The study's rows: runs grouped by every setting but the compared one and the seed."""
    members = [r for r in runs if r.cfg is not None and study.select(r) and study.side(r) is not None]
    if not members or (study.control and not any(has_anchor(r, study.control) for r in members)):
        return None
    ignore = [*opts.ignore_keys, *study.compare, "seed", DRAW_KEY]
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


# --------------------------------------------------------------------------------------------------
# pairing and the statistics of each row
# --------------------------------------------------------------------------------------------------


def wli_format(run: Run) -> WLIFormat:
    """The answer format the run was trained and scored with (its `prompt.*` separators)."""
    return WLIFormat(
        str(run.get("prompt.pair_sep", ";")),
        str(run.get("prompt.kv_sep", ":")),
        str(run.get("prompt.empty", "none")),
    )


def _pair_counts(table: Table, pair: SeedPair, share: float) -> tuple[PairCounts, frozenset[str]]:
    """The pair's counts on its shared test ids (and those ids); sets the two runs' collapse."""
    ra, rb = align_predictions(
        read_jsonl(pair.a.path / PREDICTIONS),
        read_jsonl(pair.b.path / PREDICTIONS),
        f"run #{pair.a.index} ({pair.a.name})",
        f"run #{pair.b.index} ({pair.b.name})",
    )
    fmt = wli_format(pair.a)
    counts = count_pairs(ra, rb, table.study.kind, fmt)
    pair.collapse_a = collapse(ra, table.study.kind, fmt, share)
    pair.collapse_b = collapse(rb, table.study.kind, fmt, share)
    for run, f in ((pair.a, counts.f1_a()), (pair.b, counts.f1_b())):
        if run.f1 is not None and abs(run.f1 - f) > 1e-4:
            log.warning(
                "run #%d: F1 from predictions.jsonl (%.4f) differs from metrics.json test/f1 (%.4f)",
                run.index,
                f,
                run.f1,
            )
    return counts, frozenset(r["id"] for r in ra)


def pair_rows(table: Table, opts: SweepOptions, seed: int) -> None:
    """The draw- and seed-aware comparison of every row (over its run pairs that finished with
    predictions), then Benjamini-Hochberg adjusted p-values across the table's rows. A row whose
    compared runs all collapsed, on both sides, is marked and not compared: its Δ would be the
    difference of two majority baselines, not an effect of the setting."""
    for row in table.rows:
        pairs = [
            p for p in row.complete if (p.a.path / PREDICTIONS).exists() and (p.b.path / PREDICTIONS).exists()
        ]
        if len(pairs) < len(row.complete):
            row.note = _join(row.note, "a run has no predictions.jsonl: left out of the interval")
        if not pairs:
            continue
        try:
            counted = [_pair_counts(table, p, opts.collapse_share) for p in pairs]
            ids: dict[Any, set[frozenset[str]]] = {}
            for p, (_, shared) in zip(pairs, counted, strict=True):
                ids.setdefault(p.draw, set()).add(shared)
            if any(len(v) > 1 for v in ids.values()):
                raise MismatchedTestSetError(
                    f"the seeds of row {row.labels} were evaluated on different test samples"
                    + (" within one data draw (dataset.split_seed)" if len(ids) > 1 else "")
                )
        except MismatchedTestSetError as e:
            if opts.on_mismatch == OnMismatch.skip:
                row.refused = str(e)
                continue
            raise
        row.compared = pairs
        if all(p.collapsed("a") and p.collapsed("b") for p in pairs):
            row.both_collapsed = True
            row.note = _join(row.note, "both settings collapsed in every run: not compared")
            continue
        row.comparison = compare(
            [c for c, _ in counted], opts.n_boot, opts.n_perm, seed, draws=[p.draw for p in pairs]
        )
    adjust_bh([row.comparison for row in table.rows if row.comparison is not None])


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else a or b


def attach_flow(table: Table) -> None:
    """Each row's flow strength: the mean over layers, then over seeds, of the b runs' S_pq (and its
    ratio to S_ww, free of the loss scale)."""
    if not table.study.anchored:
        return
    for row in table.rows:
        found = [f for run in row.runs("b") if run.finished and (f := run_flow(run)) and "S_pq" in f.layers]
        if not found:
            continue
        s_pq = [float(np.nanmean(f.layers["S_pq"].mean)) for f in found]
        s_ww = [float(np.nanmean(f.layers["S_ww"].mean)) for f in found]
        row.s_pq = float(np.mean(s_pq))
        row.s_pq_ratio = (
            float(np.mean([p / w for p, w in zip(s_pq, s_ww, strict=True) if w > 0]))
            if all(w > 0 for w in s_ww)
            else None
        )
        row.flow_source = describe_sources([f.source for f in found])


# --------------------------------------------------------------------------------------------------
# the result: what <key>.csv and <key>_seeds.csv hold
# --------------------------------------------------------------------------------------------------

REFUSED = "refused: "
ROW_COLUMNS = [
    "f1_a", "f1_b", "diff", "ci_lo", "ci_hi", "p", "p_bh", "n_seeds", "n", "n_boot", "n_perm", "s_pq_b",
    "s_pq_ww_b", "setting_a", "setting_b", "runs_a", "runs_b", "flow_source_b", "note",
]  # fmt: skip
ROW_COLUMNS_DRAWS = [
    "n_draws", "draws_disagree", "var_draw", "var_seed", "var_test", "f1_a_lo", "f1_a_hi", "f1_b_lo",
    "f1_b_hi", "majority_f1", "collapsed_a", "collapsed_b", "both_collapsed",
]  # fmt: skip
SEED_COLUMNS = [
    "draw", "seed", "f1_a", "f1_b", "diff", "run_a", "run_b", "majority_f1", "top_share_a", "top_share_b",
    "collapsed_a", "collapsed_b",
]  # fmt: skip


@dataclass(frozen=True)
class SeedResult:
    """One data draw and training seed of a row: its two runs (names; "" when missing), their
    `test/f1` and, once compared, the majority baseline of the draw's test set and each run's collapse
    (the share of its most frequent answer; collapsed: see `SeedPair.collapsed`)."""

    seed: str
    f1_a: float | None
    f1_b: float | None
    diff: float | None
    run_a: str
    run_b: str
    draw: str = ""
    majority_f1: float | None = None
    top_share_a: float | None = None
    top_share_b: float | None = None
    collapsed_a: bool | None = None
    collapsed_b: bool | None = None


@dataclass(frozen=True)
class RowResult:
    """One row of a study's table: F1 means over seeds, the seed-aware comparison (None where the row
    was not compared) and the b side's flow strength."""

    labels: dict[str, str]
    f1_a: float | None
    f1_b: float | None
    diff: float | None
    ci_lo: float | None
    ci_hi: float | None
    p: float | None
    p_bh: float | None
    n_seeds: int | None
    n: int | None
    n_boot: int | None
    n_perm: int | None
    s_pq_b: float | None
    s_pq_ww_b: float | None
    flow_source: str
    note: str  # "refused: <why>; <note>" for a refused row
    seeds: tuple[SeedResult, ...]
    n_draws: int | None = None
    draws_disagree: bool | None = None  # some draw's Δ above 0 and another's below
    var_draw: float | None = None  # the split of the variance of one run's Δ (`mre.stats.VarianceSplit`)
    var_seed: float | None = None
    var_test: float | None = None
    f1_a_lo: float | None = None  # the three-level interval of each setting's F1
    f1_a_hi: float | None = None
    f1_b_lo: float | None = None
    f1_b_hi: float | None = None
    majority_f1: float | None = None  # of the compared test sets (mean over draws)
    collapsed_a: int | None = None  # compared runs of each side that collapsed
    collapsed_b: int | None = None
    both_collapsed: bool = False

    @property
    def compared(self) -> bool:
        return self.ci_lo is not None

    @property
    def refused(self) -> bool:
        return self.note.startswith(REFUSED)

    def runs(self, side: str) -> list[str]:
        return [name for s in self.seeds if (name := getattr(s, f"run_{side}"))]

    def variance_shares(self) -> dict[str, float] | None:
        """The estimable variance components' shares (negative estimates as 0), None when uncompared."""
        if self.var_test is None:
            return None
        return VarianceSplit(self.var_draw, self.var_seed, self.var_test).shares()


@dataclass(frozen=True)
class SweepTable:
    """A study's table as its files hold it (see the module docstring)."""

    study: str  # the key in `STUDIES`
    label_keys: tuple[str, ...]
    rows: tuple[RowResult, ...]

    def write(self, out_dir: Path) -> list[Path]:
        """`<key>.csv` (one line per row) and `<key>_seeds.csv` (one line per row and seed)."""
        s = STUDIES[self.study]
        path, seeds_path = out_dir / f"{self.study}.csv", out_dir / f"{self.study}_seeds.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow([*self.label_keys, *ROW_COLUMNS, *ROW_COLUMNS_DRAWS])
            for r in self.rows:
                w.writerow(
                    [*r.labels.values(), r.f1_a, r.f1_b, r.diff, r.ci_lo, r.ci_hi, r.p, r.p_bh, r.n_seeds,
                     r.n, r.n_boot, r.n_perm, r.s_pq_b, r.s_pq_ww_b, s.label_a, s.label_b,
                     " ".join(r.runs("a")), " ".join(r.runs("b")), r.flow_source, r.note,
                     *(_cell(getattr(r, k)) for k in ROW_COLUMNS_DRAWS)]
                )  # fmt: skip
        with open(seeds_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow([*self.label_keys, *SEED_COLUMNS])
            for r in self.rows:
                for x in r.seeds:
                    w.writerow([*r.labels.values(), *(_cell(getattr(x, k)) for k in SEED_COLUMNS)])
        return [path, seeds_path]

    @classmethod
    def read(cls, out_dir: Path, study: str) -> SweepTable:
        """The table `write` wrote for the study `study` (a key in `STUDIES`)."""
        lines = _read_csv(out_dir / f"{study}.csv")
        label_keys = tuple(lines[0])[: -len(ROW_COLUMNS) - len(ROW_COLUMNS_DRAWS)] if lines else ()
        seeds = _read_csv(out_dir / f"{study}_seeds.csv")
        rows = []
        for line in lines:
            labels = {k: line[k] for k in label_keys}
            mine = []
            while seeds and all(seeds[0][k] == v for k, v in labels.items()):
                x = seeds.pop(0)
                mine.append(
                    SeedResult(x["seed"], _float(x["f1_a"]), _float(x["f1_b"]), _float(x["diff"]),
                               x["run_a"], x["run_b"], x["draw"], _float(x["majority_f1"]),
                               _float(x["top_share_a"]), _float(x["top_share_b"]), _bool(x["collapsed_a"]),
                               _bool(x["collapsed_b"]))
                )  # fmt: skip
            rows.append(
                RowResult(
                    labels, *(_float(line[k]) for k in ROW_COLUMNS[:7]),
                    *(_int(line[k]) for k in ROW_COLUMNS[7:11]),
                    _float(line["s_pq_b"]), _float(line["s_pq_ww_b"]), line["flow_source_b"], line["note"],
                    tuple(mine), _int(line["n_draws"]), _bool(line["draws_disagree"]),
                    *(_float(line[k]) for k in ROW_COLUMNS_DRAWS[2:10]), _int(line["collapsed_a"]),
                    _int(line["collapsed_b"]), line["both_collapsed"] == "True",
                )
            )  # fmt: skip
        return cls(study, label_keys, tuple(rows))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _float(s: str) -> float | None:
    return None if s == "" else float(s)


def _int(s: str) -> int | None:
    return None if s == "" else int(s)


def _bool(s: str) -> bool | None:
    return None if s == "" else s == "True"


def _cell(v: Any) -> Any:
    """A value as its CSV cell holds it (None: empty)."""
    return "" if v is None else v


def _label(v: Any) -> str:
    """A label as its CSV cell holds it."""
    return "" if v is None else str(v)


def _seed_result(p: SeedPair) -> SeedResult:
    fa = p.a.f1 if p.a is not None and p.a.finished else None
    fb = p.b.f1 if p.b is not None and p.b.finished else None
    diff = fb - fa if fa is not None and fb is not None else None
    names = (p.a.name if p.a else "", p.b.name if p.b else "")
    ca, cb = p.collapse_a, p.collapse_b
    return SeedResult(
        _label(p.seed), fa, fb, diff, *names, _label(p.draw), ca and ca.majority_f1, ca and ca.top_share,
        cb and cb.top_share, p.collapsed("a"), p.collapsed("b"),
    )  # fmt: skip


def _collapse_stats(row: Row) -> tuple:
    """(majority F1: mean over draws, collapsed runs of side a, of side b) of the compared pairs."""
    if not row.compared:
        return None, None, None
    by_draw: dict[Any, float] = {p.draw: p.collapse_a.majority_f1 for p in row.compared}
    count = [sum(bool(p.collapsed(s)) for p in row.compared) for s in ("a", "b")]
    return float(np.mean(list(by_draw.values()))), *count


def _draw_stats(c: Comparison | None) -> tuple:
    """The draw-level statistics of a comparison, in `ROW_COLUMNS_DRAWS` order up to the F1 intervals."""
    if c is None:
        return (None,) * 9
    v = c.variance
    return (c.n_draws, c.draws_disagree, v.draw, v.seed, v.test, c.a_lo, c.a_hi, c.b_lo, c.b_hi)


def _row_result(table: Table, row: Row) -> RowResult:
    c = row.comparison
    stats = (c.lo, c.hi, c.p, c.p_adj, c.n_seeds, c.n, c.n_boot, c.n_perm) if c else (None,) * 8
    return RowResult(
        {k: _label(row.labels[k]) for k in table.label_keys}, row.f1_a, row.f1_b, row.diff, *stats,
        row.s_pq, row.s_pq_ratio, row.flow_source or "",
        (f"{REFUSED}{row.refused}; " if row.refused else "") + row.note,
        tuple(_seed_result(p) for p in row.pairs), *_draw_stats(c), *_collapse_stats(row), row.both_collapsed,
    )  # fmt: skip
