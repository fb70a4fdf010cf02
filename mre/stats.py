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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
# comparisons over seeds and test samples
# --------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """F1 of settings A and B, each the mean over seeds, and Δ = B - A with:

    * `lo`, `hi`: 95% percentile interval of a hierarchical bootstrap (`hierarchical_diffs`): seeds
      are resampled, then each drawn seed's test samples (the same resample scores A and B), so the
      interval covers training noise as well as test-sample noise; with one seed it is the paired
      bootstrap over test samples;
    * `p`: a two-sided paired permutation test over seeds x samples (`permutation_p`): under "A and B
      are exchangeable", each (seed, sample)'s two predictions are swapped at random;
    * `p_adj`: `p` adjusted with Benjamini-Hochberg across the rows of a table (`adjust_bh`).
    """

    f1_a: float
    f1_b: float
    diff: float
    lo: float
    hi: float
    p: float
    n_seeds: int
    n: int  # test samples per seed
    n_boot: int
    n_perm: int
    per_seed: list[tuple[float, float]]  # (F1 A, F1 B) of each seed
    p_adj: float | None = None

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


def hierarchical_diffs(pairs: list[PairCounts], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot] bootstrap replicates of the mean over seeds of F1(B) - F1(A): seeds drawn with
    replacement, then each drawn seed's samples drawn with replacement (a fresh draw for every
    occurrence of a seed)."""
    rng = np.random.default_rng(seed)
    n_seeds = len(pairs)
    chosen = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    total = np.zeros(n_boot)
    for s, pair in enumerate(pairs):
        rows = np.nonzero(chosen == s)[0]  # one entry per occurrence of seed s
        n = len(pair)
        for start in range(0, len(rows), BLOCK):
            part = rows[start : start + BLOCK]
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=len(part)).astype(np.float64)
            np.add.at(total, part, pair.f1(w @ pair.b) - pair.f1(w @ pair.a))
    return total / n_seeds


def permutation_p(pairs: list[PairCounts], n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of the mean F1 difference under random swaps of A and B within each
    (seed, sample), by `scipy.stats.permutation_test` on sample indices into one table of counts."""
    from scipy.stats import permutation_test

    table = np.concatenate([*(p.a for p in pairs), *(p.b for p in pairs)])
    sizes = [len(p) for p in pairs]
    bounds = np.cumsum([0, *sizes])
    n_total = int(bounds[-1])
    f1 = pairs[0].f1

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        fa, fb = table[x], table[y]  # [..., N, k]
        diffs = [
            f1(fb[..., lo:hi, :].sum(-2)) - f1(fa[..., lo:hi, :].sum(-2))
            for lo, hi in itertools.pairwise(bounds)
        ]
        return np.mean(diffs, axis=0)

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


def compare(pairs: list[PairCounts], n_boot: int = 1000, n_perm: int = 2000, seed: int = 0) -> Comparison:
    """Seed-aware comparison of two settings (see `Comparison`); `pairs` holds one `PairCounts` per
    seed, each on that seed's test samples."""
    if not pairs:
        raise ValueError("compare needs at least one pair of runs")
    if len({len(p) for p in pairs}) > 1:
        raise MismatchedTestSetError(
            f"the seeds were evaluated on different numbers of samples: {[len(p) for p in pairs]}"
        )
    per_seed = [(p.f1_a(), p.f1_b()) for p in pairs]
    f1_a = float(np.mean([a for a, _ in per_seed]))
    f1_b = float(np.mean([b for _, b in per_seed]))
    lo, hi = percentile_interval(hierarchical_diffs(pairs, n_boot, seed))
    return Comparison(
        f1_a, f1_b, f1_b - f1_a, lo, hi, permutation_p(pairs, n_perm, seed), len(pairs),
        len(pairs[0]), n_boot, n_perm, per_seed,
    )  # fmt: skip


def adjust_bh(comparisons: list[Comparison]) -> None:
    """Benjamini-Hochberg adjusted p-values across the comparisons of one table (`p_adj`)."""
    from scipy.stats import false_discovery_control

    if comparisons:
        for c, q in zip(comparisons, false_discovery_control([c.p for c in comparisons]), strict=True):
            c.p_adj = float(q)
