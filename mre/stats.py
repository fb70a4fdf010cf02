"""Statistics of analyze.py: per-layer flow intervals (of means, or of the shares of several means:
a ratio of means), and seed-aware comparisons of two settings.

Every bootstrap resample is a vector of counts over the n samples (how often each sample is drawn),
so a statistic of a resample is a weighted statistic of the original samples; resamples come from
`numpy.random.default_rng(seed)`: the same seed gives the same intervals.

Comparisons (`compare`): F1 of settings A and B on the same test samples, over one or more training
seeds. The difference is the mean over seeds of F1(B) - F1(A); its interval comes from a hierarchical
bootstrap (seeds, then test samples), its p-value from a paired permutation test over seeds x samples
(`scipy.stats.permutation_test`), and the p-values of a table's rows are adjusted with
Benjamini-Hochberg (`scipy.stats.false_discovery_control`). A single seed's interval covers test-sample
noise only, which can be smaller than the seed-to-seed spread: report seeds.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mre.errors import UserError
from mre.metrics import pair_overlap
from mre.setting import Direction

BLOCK = 100  # resamples drawn at once


def resample_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Count vectors of ``n_boot`` bootstrap resamples of n samples, in blocks of ``BLOCK`` rows."""
    if n <= 0:
        raise ValueError("bootstrap needs at least one sample")
    rng = np.random.default_rng(seed)
    p = np.full(n, 1.0 / n)
    done = 0
    while done < n_boot:
        b = min(BLOCK, n_boot - done)
        yield rng.multinomial(n, p, size=b).astype(np.float64)
        done += b


# --------------------------------------------------------------------------------------------------
# per-layer means with bootstrap intervals
# --------------------------------------------------------------------------------------------------


@dataclass
class LayerStats:
    """Per layer: mean, sample std, 95% percentile bootstrap interval of the mean, n (non-NaN samples)."""

    mean: np.ndarray
    std: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


class _Columns:
    """[n_samples, n_layers] values (NaN = undefined for that sample, e.g. no anchor) with their
    per-layer mean, sample std and n over the defined samples, and the means of weighted resamples."""

    def __init__(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"values must be [samples, layers], got shape {values.shape}")
        ok = ~np.isnan(values)
        self.n_samples, self.n = values.shape[0], ok.sum(0)
        self.filled, self.okf = np.where(ok, values, 0.0), ok.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = self.filled.sum(0) / self.n
            dev = np.where(ok, values - self.mean, 0.0)
            std = np.sqrt((dev**2).sum(0) / np.maximum(self.n - 1, 1))
        self.std = np.where(self.n > 1, std, np.where(self.n == 1, 0.0, np.nan))

    def means(self, w: np.ndarray) -> np.ndarray:
        """[B, n_layers] means of the resamples whose count vectors are the rows of `w`."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ self.filled) / (w @ self.okf)


def _interval(boots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the 2.5th and 97.5th percentiles of the defined [B, n_layers] bootstrap values (NaN
    where a layer has none: numpy says so with a warning, which here is the expected case)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    return lo, hi


def bootstrap_statistic(
    n: int, statistic: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """[n_boot] values of `statistic(indices)` over bootstrap resamples of n samples (the same resamples
    as `bootstrap_layer_means` with this seed); `indices` lists each drawn sample as often as it was
    drawn. A statistic undefined on a resample returns NaN; `percentile_interval` leaves those out."""
    samples = np.arange(n)
    return np.array(
        [
            statistic(np.repeat(samples, w.astype(np.int64)))
            for block in resample_blocks(n, n_boot, seed)
            for w in block
        ],
        dtype=np.float64,
    )


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The 95% percentile interval of the defined (non-NaN) bootstrap values; None when none is."""
    defined = values[~np.isnan(values)]
    if not defined.size:
        return None
    lo, hi = np.percentile(defined, [2.5, 97.5])
    return float(lo), float(hi)


def _inverse_total(means: np.ndarray) -> np.ndarray:
    """1 / the sum over axis 0 of the defined quantities (0 where that sum is 0)."""
    total = np.nansum(means, axis=0)
    return np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)


def _shares(means: np.ndarray) -> np.ndarray:
    """Quantities stacked on axis 0 rescaled to sum to 1; an undefined (NaN) one counts as 0 and stays
    NaN, and quantities that are all 0 stay 0."""
    return np.where(np.isnan(means), np.nan, means * _inverse_total(means))


def bootstrap_layer_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> LayerStats:
    """``values`` is [n_samples, n_layers] (NaN = undefined for that sample, e.g. no anchor).

    Samples are resampled jointly over layers (one resample draws whole samples); a layer's
    bootstrap mean uses that resample's non-NaN values of the layer.
    """
    c = _Columns(values)
    boots = np.concatenate([c.means(w) for w in resample_blocks(c.n_samples, n_boot, seed)])
    lo, hi = _interval(boots)
    return LayerStats(mean=c.mean, std=c.std, lo=lo, hi=hi, n=c.n)


def bootstrap_layer_shares(
    values: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> list[LayerStats]:
    """Ratio of means: per layer, each quantity's mean over samples divided by the sum of the
    quantities' means (`_shares`), as the "Label Words are Anchors" plots average first and rescale
    after. `values` holds one [n_samples, n_layers] array per quantity, the same samples in each.

    A resample draws whole samples for every quantity and layer at once and the interval is that of
    its shares (the same resamples as `bootstrap_layer_means` with this seed). A per-sample value
    has no share of its own: `std` is the samples' std divided by the layer's sum of means (the
    spread in the units of the shares); `n` counts the samples where the quantity is defined.
    """
    cols = [_Columns(v) for v in values]
    if len({c.n_samples for c in cols}) != 1:
        raise ValueError("every quantity needs the same samples")
    boots = [
        _shares(np.stack([c.means(w) for c in cols]))
        for w in resample_blocks(cols[0].n_samples, n_boot, seed)
    ]
    means = np.stack([c.mean for c in cols])
    scale = _inverse_total(means)
    out = []
    for k, (c, share) in enumerate(zip(cols, _shares(means), strict=True)):
        lo, hi = _interval(np.concatenate([b[k] for b in boots]))
        out.append(LayerStats(mean=share, std=c.std * scale, lo=lo, hi=hi, n=c.n))
    return out


# --------------------------------------------------------------------------------------------------
# F1 of weighted test sets
# --------------------------------------------------------------------------------------------------


class MismatchedTestSetError(UserError, ValueError):
    """Two runs that are compared were not evaluated on the same test samples."""


def align_predictions(
    rows_a: list[dict], rows_b: list[dict], name_a: str = "A", name_b: str = "B"
) -> tuple[list[dict], list[dict]]:
    """The two runs' prediction rows in the same id order; refuses different test sets.

    Raises MismatchedTestSetError when the id sets differ, an id repeats, or the same id has a
    different gold answer in the two runs (different data behind the same ids).
    """
    for rows, name in ((rows_a, name_a), (rows_b, name_b)):
        ids = [r["id"] for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise MismatchedTestSetError(
                f"{name}: test id {dup!r} occurs more than once in predictions.jsonl"
            )
    a = {r["id"]: r for r in rows_a}
    b = {r["id"]: r for r in rows_b}
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise MismatchedTestSetError(
            f"refusing to pair {name_a} ({len(a)} test samples) with {name_b} ({len(b)} test samples): "
            f"their test sets differ ({len(only_a)} ids only in the first, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in the second, e.g. {only_b[:3]}). A paired comparison needs the same "
            "test samples: use the same dataset, split seed and n_test in both runs."
        )
    order = sorted(a)
    bad = [i for i in order if a[i]["gold"] != b[i]["gold"]]
    if bad:
        i = bad[0]
        raise MismatchedTestSetError(
            f"refusing to pair {name_a} with {name_b}: {len(bad)} test ids have different gold answers "
            f"(e.g. {i!r}: {a[i]['gold']!r} vs {b[i]['gold']!r}), so the same ids name different data."
        )
    return [a[i] for i in order], [b[i] for i in order]


class AnswerParser(Protocol):
    """Reads a serialized WLI answer into (type, span) pairs (`mre.data.wli_format.WLIFormat`: the
    statistics take the parser from the caller, as they sit below the data layer)."""

    def parse(self, s: str) -> list[tuple[str, str]]: ...


def _wli_counts(golds: Sequence[str], preds: Sequence[str], fmt: AnswerParser) -> np.ndarray:
    """[n, 3]: matched pairs, predicted pairs, gold pairs of each sample (multisets of (type, span))."""
    g = [fmt.parse(x) for x in golds]
    p = [fmt.parse(x) for x in preds]
    return np.array(
        [[pair_overlap(a, b), len(a), len(b)] for a, b in zip(p, g, strict=True)], dtype=np.float64
    )


def _tli_counts(golds: Sequence[str], preds: Sequence[str], classes: list[str]) -> np.ndarray:
    """[n, 3C]: tp, fp, fn of every class for each sample."""
    g = np.array(list(golds), dtype=object)[:, None]
    p = np.array(list(preds), dtype=object)[:, None]
    c = np.array(classes, dtype=object)[None, :]
    return np.concatenate([(g == c) & (p == c), (g != c) & (p == c), (g == c) & (p != c)], 1).astype(
        np.float64
    )


@dataclass(frozen=True)
class PairCounts:
    """Per-sample counts of two runs on the same test samples, on a shared class set, so the F1 of any
    weighting w of the samples (a resample, a permutation) is `f1(w @ a)`:

    * WLI: micro-F1 over (type, span) pairs, as `mre.metrics.WLIF1` (1 when there are no pairs);
    * TLI: macro-F1 over the classes that occur (gold or predicted), as torchmetrics'
      `MulticlassF1Score(average="macro")`: per class 2tp / (2tp + fp + fn), absent classes left out.
    """

    a: np.ndarray  # [n, k]
    b: np.ndarray  # [n, k]
    level: Direction

    def __len__(self) -> int:
        return len(self.a)

    def f1(self, sums: np.ndarray) -> np.ndarray:
        """[..., k] summed counts -> [...] F1."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.level is Direction.wli:
                tp, denom = sums[..., 0], sums[..., 1] + sums[..., 2]
                return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 1.0)
            tp, fp, fn = np.split(sums, 3, axis=-1)
            denom = 2 * tp + fp + fn
            present = denom > 0
            per_class = np.where(present, 2 * tp / np.where(present, denom, 1), 0.0)
            return (per_class * present).sum(-1) / present.sum(-1)

    def f1_a(self) -> float:
        return float(self.f1(self.a.sum(0)))

    def f1_b(self) -> float:
        return float(self.f1(self.b.sum(0)))


def pair_counts(
    rows_a: list[dict], rows_b: list[dict], level: Direction, fmt: AnswerParser | None = None
) -> PairCounts:
    """The counts of two runs' aligned prediction rows (see `align_predictions`); WLI answers are read
    with `fmt`, the runs' own answer format (required for WLI: a default would silently mis-score runs
    trained with other separators)."""
    level = Direction(str(level))
    ga, pa = [str(r["gold"]) for r in rows_a], [str(r["prediction"]) for r in rows_a]
    gb, pb = [str(r["gold"]) for r in rows_b], [str(r["prediction"]) for r in rows_b]
    if level is Direction.wli:
        if fmt is None:
            raise ValueError("WLI answers need the runs' answer format (fmt) to be read")
        return PairCounts(_wli_counts(ga, pa, fmt), _wli_counts(gb, pb, fmt), level)
    classes = sorted(set(ga) | set(pa) | set(gb) | set(pb))
    return PairCounts(_tli_counts(ga, pa, classes), _tli_counts(gb, pb, classes), level)


# --------------------------------------------------------------------------------------------------
# a run that answers (nearly) the same for every text
# --------------------------------------------------------------------------------------------------

COLLAPSE_SHARE = 0.95  # a run collapsed when its most frequent answer is given to at least this share


@dataclass(frozen=True)
class Collapse:
    """Whether a run's test predictions collapsed onto one answer, and the baseline it then sits at.

    * `top_share`: the share of the test texts that got the run's most frequent prediction (for TLI
      the most frequent class; for WLI the most frequent whole answer, e.g. ``none``);
    * `majority_f1`: the F1 of answering the most frequent gold answer for every text, scored as the
      run is (`PairCounts`): what a run that learned only the class prior reaches;
    * `collapsed`: `top_share` >= the threshold (`COLLAPSE_SHARE` unless given).
    """

    top_share: float
    majority_f1: float
    collapsed: bool


def majority_f1(rows: list[dict], level: Direction, fmt: AnswerParser | None = None) -> float:
    """F1 of predicting the most frequent gold answer of `rows` for every row (ties: the first in
    sorted order, so the baseline does not depend on the rows' order)."""
    counts = Counter(str(r["gold"]) for r in rows)
    top = max(sorted(counts), key=counts.__getitem__)
    constant = [{**r, "prediction": top} for r in rows]
    return pair_counts(constant, constant, level, fmt).f1_a()


def collapse(
    rows: list[dict], level: Direction, fmt: AnswerParser | None = None, share: float = COLLAPSE_SHARE
) -> Collapse:
    """The collapse measure of one run's prediction rows (see `Collapse`)."""
    if not rows:
        raise ValueError("collapse needs at least one prediction row")
    top = Counter(str(r["prediction"]) for r in rows).most_common(1)[0][1] / len(rows)
    return Collapse(top, majority_f1(rows, level, fmt), top >= share)


# --------------------------------------------------------------------------------------------------
# comparisons over data draws, seeds and test samples
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VarianceSplit:
    """How the variance of one run's Δ splits between data draws, training seeds and test samples.

    The estimator (`variance_components`) is the ANOVA (method-of-moments) estimator of the nested
    random-effects model Δ_ds = μ + a_d + b_ds + e_ds (draw d, seed s within it), with the variance of
    the test-sample error e_ds known from the within-run bootstrap. The estimates are unbiased and can
    come out negative (no evidence for that component); `shares` counts a negative one as 0. None:
    not estimable from this design (one draw: no draw component; one seed per draw: no seed
    component, and then the draw component cannot be told from it either).
    """

    draw: float | None
    seed: float | None
    test: float

    def shares(self) -> dict[str, float]:
        """Each estimable component's share of their sum, negative estimates counted as 0."""
        parts = {k: max(v, 0.0) for k, v in (("draw", self.draw), ("seed", self.seed), ("test", self.test))
                 if v is not None}  # fmt: skip
        total = sum(parts.values())
        return {k: v / total if total > 0 else 0.0 for k, v in parts.items()}


def variance_components(
    deltas: Sequence[Sequence[float]], test_vars: Sequence[Sequence[float]]
) -> VarianceSplit:
    """`VarianceSplit` of the runs' Δ (`deltas[d][s]`: draw d, seed s) given each run's test-sample
    variance of Δ (`test_vars[d][s]`).

    Nested one-way ANOVA, unbalanced designs allowed: with N runs in D draws of S_d seeds,
    MS_within = sum (Δ_ds - mean_d)^2 / (N - D) has expectation σ²_seed + mean(v), and
    MS_between = sum S_d (mean_d - mean)^2 / (D - 1) has σ²_seed + mean(v) + n0 σ²_draw with
    n0 = (N - sum S_d^2 / N) / (D - 1); σ²_test = mean(v). The test-sample errors of a draw's seeds
    are taken as independent (a test text that is hard for one setting in every seed of a draw adds to
    the test component and takes as much from the seed component)."""
    groups = [np.asarray(g, dtype=np.float64) for g in deltas]
    test = float(np.mean(np.concatenate([np.asarray(v, dtype=np.float64) for v in test_vars])))
    sizes = np.array([len(g) for g in groups])
    n, d = int(sizes.sum()), len(groups)
    if n - d <= 0:
        return VarianceSplit(None, None, test)
    means = np.array([g.mean() for g in groups])
    ms_within = sum(float(((g - m) ** 2).sum()) for g, m in zip(groups, means, strict=True)) / (n - d)
    seed = ms_within - test
    if d < 2:
        return VarianceSplit(None, seed, test)
    grand = float(np.concatenate(groups).mean())
    ms_between = float((sizes * (means - grand) ** 2).sum()) / (d - 1)
    n0 = (n - float((sizes**2).sum()) / n) / (d - 1)
    return VarianceSplit((ms_between - ms_within) / n0, seed, test)


def within_run_variance(pair: PairCounts, n_boot: int = 1000, seed: int = 0) -> float:
    """The test-sample variance of one run pair's Δ: the paired bootstrap variance over its test
    samples, times n / (n - 1) (the bootstrap variance of a mean is (n - 1) / n of the unbiased one)."""
    n = len(pair)
    diffs = np.concatenate(
        [pair.f1(w @ pair.b) - pair.f1(w @ pair.a) for w in resample_blocks(n, n_boot, seed)]
    )
    return float(np.var(diffs, ddof=1)) * n / max(n - 1, 1)


@dataclass
class Comparison:
    """F1 of settings A and B, each the mean over data draws of the mean over the draw's seeds, and
    Δ = B - A with:

    * `lo`, `hi`: 95% percentile interval of a hierarchical bootstrap (`hierarchical_diffs`): draws
      are resampled, then each drawn draw's seeds, then each drawn seed's test samples (the same
      resample scores A and B), so the interval covers the draw of the data and training noise as well
      as test-sample noise; with one draw it is the seeds-then-samples bootstrap, with one seed the
      paired bootstrap over test samples;
    * `a_lo`, `a_hi`, `b_lo`, `b_hi`: the same resampling's interval of each setting's F1;
    * `p`: a two-sided paired permutation test over (draw, seed, sample) (`permutation_p`): under "A
      and B are exchangeable", each sample's two predictions are swapped at random;
    * `p_adj`: `p` adjusted with Benjamini-Hochberg across the rows of a table (`adjust_bh`);
    * `variance`: how the variance of one run's Δ splits between draws, seeds and test samples;
    * `per_draw`: Δ of each draw (the mean over its seeds), in the order of the draws.
    """

    f1_a: float
    f1_b: float
    diff: float
    lo: float
    hi: float
    p: float
    n_seeds: int  # runs per side (draws x seeds)
    n: int  # test samples per run (the smallest, when draws differ)
    n_boot: int
    n_perm: int
    per_seed: list[tuple[float, float]]  # (F1 A, F1 B) of each run pair, draw by draw
    p_adj: float | None = None
    n_draws: int = 1
    per_draw: list[float] = field(default_factory=list)
    variance: VarianceSplit | None = None
    a_lo: float | None = None
    a_hi: float | None = None
    b_lo: float | None = None
    b_hi: float | None = None

    @property
    def draws_disagree(self) -> bool:
        """Some draw's Δ is above 0 and another's below: the sign depends on the data drawn."""
        return any(x > 0 for x in self.per_draw) and any(x < 0 for x in self.per_draw)

    def p_text(self, adjusted: bool = False) -> str:
        """The p-value to 3 digits; at the floor of a random permutation test (2 / (n_perm + 1): the
        observed arrangement counts as one of the permutations) it is shown as "≤ floor"."""
        return p_text(self.p_adj if adjusted else self.p, self.n_perm)


def p_text(p: float | None, n_perm: int) -> str:
    """A permutation test's p-value to 3 digits, "≤ floor" at its floor (see `Comparison.p_text`)."""
    if p is None:
        return "—"
    floor = 2 / (n_perm + 1)
    return f"≤{floor:.2g}" if p <= floor * (1 + 1e-9) else f"{p:.3g}"


Statistic = Callable[[PairCounts, np.ndarray], np.ndarray]  # (pair, [B, n] count vectors) -> [B]


def _diff(pair: PairCounts, w: np.ndarray) -> np.ndarray:
    return pair.f1(w @ pair.b) - pair.f1(w @ pair.a)


def _side(side: str) -> Statistic:
    """The F1 of one setting ("a" or "b") of a pair, as a bootstrap statistic."""
    return lambda pair, w: pair.f1(w @ getattr(pair, side))


def group_draws(pairs: Sequence[PairCounts], draws: Sequence[Hashable] | None) -> list[list[PairCounts]]:
    """The pairs grouped by their draw label, draws in order of first appearance (None: one draw)."""
    if draws is None:
        return [list(pairs)]
    if len(draws) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(draws)} draw labels")
    grouped: dict[Hashable, list[PairCounts]] = {}
    for pair, d in zip(pairs, draws, strict=True):
        grouped.setdefault(d, []).append(pair)
    return list(grouped.values())


def hierarchical_bootstrap(
    groups: Sequence[Sequence[PairCounts]], statistic: Statistic, n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """[n_boot] bootstrap replicates of the mean over draws of the mean over the draw's seeds of
    `statistic`: draws drawn with replacement, then each drawn draw's seeds with replacement, then each
    drawn seed's test samples with replacement (a fresh draw for every occurrence).

    A level with one unit is not resampled (drawing one of one gives it back), so one draw consumes
    the random stream exactly as the two-level bootstrap (seeds, then samples) did."""
    rng = np.random.default_rng(seed)
    n_draws = len(groups)
    picked = (
        rng.integers(0, n_draws, size=(n_boot, n_draws))
        if n_draws > 1
        else np.zeros((n_boot, 1), dtype=np.int64)
    )
    total = np.zeros(n_boot)
    for d, pairs in enumerate(groups):
        occurrences = np.nonzero(picked == d)[0]  # the replicate of each occurrence of draw d
        if not occurrences.size:
            continue
        n_seeds = len(pairs)
        chosen = rng.integers(0, n_seeds, size=(occurrences.size, n_seeds))
        within = np.zeros(occurrences.size)
        for s, pair in enumerate(pairs):
            rows = np.nonzero(chosen == s)[0]  # one entry per occurrence of seed s
            n = len(pair)
            for start in range(0, len(rows), BLOCK):
                part = rows[start : start + BLOCK]
                w = rng.multinomial(n, np.full(n, 1.0 / n), size=len(part)).astype(np.float64)
                np.add.at(within, part, statistic(pair, w))
        np.add.at(total, occurrences, within / n_seeds)
    return total / n_draws


def hierarchical_diffs(
    pairs: Sequence[PairCounts], n_boot: int = 1000, seed: int = 0, draws: Sequence[Hashable] | None = None
) -> np.ndarray:
    """[n_boot] hierarchical bootstrap replicates (`hierarchical_bootstrap`) of Δ = F1(B) - F1(A);
    `draws` labels each pair's data draw (None: all from one draw)."""
    return hierarchical_bootstrap(group_draws(pairs, draws), _diff, n_boot, seed)


def permutation_p(
    pairs: Sequence[PairCounts], n_perm: int = 2000, seed: int = 0, draws: Sequence[Hashable] | None = None
) -> float:
    """Two-sided p-value of Δ (the mean over draws of the mean over seeds) under random swaps of A and
    B within each (draw, seed, sample), by `scipy.stats.permutation_test` on sample indices into one
    table of counts."""
    from scipy.stats import permutation_test

    groups = group_draws(pairs, draws)
    flat = [p for g in groups for p in g]
    weights = np.array([1.0 / (len(groups) * len(g)) for g in groups for _ in g])
    table = np.concatenate([*(p.a for p in flat), *(p.b for p in flat)])
    sizes = [len(p) for p in flat]
    bounds = np.cumsum([0, *sizes])
    n_total = int(bounds[-1])
    f1 = flat[0].f1
    balanced = np.all(weights == weights[0])

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        fa, fb = table[x], table[y]  # [..., N, k]
        diffs = [
            f1(fb[..., lo:hi, :].sum(-2)) - f1(fa[..., lo:hi, :].sum(-2))
            for lo, hi in itertools.pairwise(bounds)
        ]
        return np.mean(diffs, axis=0) if balanced else np.average(diffs, axis=0, weights=weights)

    x, y = np.arange(n_total), np.arange(n_total) + n_total
    res = permutation_test(
        (x, y),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_perm,
        alternative="two-sided",
        batch=max(1, 2_000_000 // max(1, n_total * table.shape[1])),
        random_state=seed,
    )
    return float(res.pvalue)


def _mean_of_means(groups: list[list[float]]) -> float:
    return float(np.mean([np.mean(g) for g in groups]))


def compare(
    pairs: Sequence[PairCounts],
    n_boot: int = 1000,
    n_perm: int = 2000,
    seed: int = 0,
    draws: Sequence[Hashable] | None = None,
) -> Comparison:
    """Draw- and seed-aware comparison of two settings (see `Comparison`); `pairs` holds one
    `PairCounts` per run pair, each on its own draw's test samples, and `draws` labels each pair's data
    draw (None: one draw). The seeds of one draw must share their test samples' count."""
    if not pairs:
        raise ValueError("compare needs at least one pair of runs")
    groups = group_draws(pairs, draws)
    for g in groups:
        if len({len(p) for p in g}) > 1:
            raise MismatchedTestSetError(
                f"the seeds were evaluated on different numbers of samples: {[len(p) for p in g]}"
            )
    per_seed = [(p.f1_a(), p.f1_b()) for g in groups for p in g]
    f1_a = _mean_of_means([[p.f1_a() for p in g] for g in groups])
    f1_b = _mean_of_means([[p.f1_b() for p in g] for g in groups])
    lo, hi = percentile_interval(hierarchical_bootstrap(groups, _diff, n_boot, seed))
    sides = [percentile_interval(hierarchical_bootstrap(groups, _side(s), n_boot, seed)) for s in ("a", "b")]
    deltas = [[b - a for a, b in ((p.f1_a(), p.f1_b()) for p in g)] for g in groups]
    test_vars = [[within_run_variance(p, n_boot, seed + i) for i, p in enumerate(g)] for g in groups]
    flat = [p for g in groups for p in g]
    return Comparison(
        f1_a, f1_b, f1_b - f1_a, lo, hi, permutation_p(flat, n_perm, seed, _labels(groups)), len(flat),
        min(len(p) for p in flat), n_boot, n_perm, per_seed, n_draws=len(groups),
        per_draw=[float(np.mean(d)) for d in deltas], variance=variance_components(deltas, test_vars),
        a_lo=sides[0][0], a_hi=sides[0][1], b_lo=sides[1][0], b_hi=sides[1][1],
    )  # fmt: skip


def _labels(groups: list[list[PairCounts]]) -> list[int]:
    return [d for d, g in enumerate(groups) for _ in g]


def adjust_bh(comparisons: list[Comparison]) -> None:
    """Benjamini-Hochberg adjusted p-values across the comparisons of one table (`p_adj`)."""
    from scipy.stats import false_discovery_control

    if comparisons:
        for c, q in zip(comparisons, false_discovery_control([c.p for c in comparisons]), strict=True):
            c.p_adj = float(q)
