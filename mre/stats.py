"""Seeded bootstrap statistics of analyze.py: per-layer flow intervals (of means, or of the shares of
several means: a ratio of means) and paired F1 differences.

Every resample is a vector of counts over the n samples (how often each sample is drawn when n
samples are drawn with replacement), so a statistic of a resample is a weighted statistic of the
original samples. Resamples are drawn in fixed blocks from ``numpy.random.default_rng(seed)``: the
same seed gives the same intervals, and memory stays at one block of ``BLOCK x n`` counts.

Paired bootstrap of an F1 difference (``paired_bootstrap``): both runs are scored on the *same*
resampled test ids; for each of B resamples the difference ``d_b = F1_b(B) - F1_b(A)`` is computed.

* interval: the 2.5th and 97.5th percentiles of ``d_1..d_B`` (percentile interval);
* p-value (two-sided): ``p = min(1, 2 * min(#{b: d_b <= 0}, #{b: d_b >= 0}) / B)``, i.e. twice the
  fraction of bootstrap differences on the far side of 0 (0 included). Identical runs give d_b = 0
  for every b, so the interval is [0, 0] and p = 1. p = 0 means no resample crossed 0: report it as
  p < 1/B.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mre.data.wli_format import WLIFormat
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
    """Per layer, the 2.5th and 97.5th percentiles of the defined [B, n_layers] bootstrap values."""
    lo = np.full(boots.shape[1], np.nan)
    hi = np.full(boots.shape[1], np.nan)
    for layer in range(boots.shape[1]):
        col = boots[:, layer]
        col = col[~np.isnan(col)]
        if col.size:
            lo[layer], hi[layer] = np.percentile(col, [2.5, 97.5])
    return lo, hi


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


class MismatchedTestSetError(ValueError):
    """Two runs that are compared were not evaluated on the same test samples."""


class WLIScores:
    """Micro-F1 over (type, span) pairs, as `mre.metrics.WLIF1` (F1 = 1 when there are no pairs at all)."""

    kind = "wli"

    def __init__(self, golds: Sequence[str], preds: Sequence[str], fmt: WLIFormat | None = None) -> None:
        fmt = fmt or WLIFormat()
        g = [fmt.parse(x) for x in golds]
        p = [fmt.parse(x) for x in preds]
        self.tp = np.array([pair_overlap(a, b) for a, b in zip(p, g, strict=True)], dtype=np.float64)
        self.n_pred = np.array([len(x) for x in p], dtype=np.float64)
        self.n_gold = np.array([len(x) for x in g], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.tp)

    def f1(self, w: np.ndarray) -> np.ndarray:
        """F1 of each weighted resample; ``w`` is [B, n] counts (or [n])."""
        tp = w @ self.tp
        denom = w @ (self.n_pred + self.n_gold)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 1.0)


class TLIScores:
    """Macro-F1 over the classes that occur (gold or predicted) in the resample, as torchmetrics'
    ``MulticlassF1Score(average="macro")``: per class 2tp / (2tp + fp + fn), classes with
    tp + fp + fn = 0 left out of the mean."""

    kind = "tli"

    def __init__(self, golds: Sequence[str], preds: Sequence[str]) -> None:
        classes = sorted(set(golds) | set(preds))
        g = np.array(list(golds), dtype=object)
        p = np.array(list(preds), dtype=object)
        self.tp = np.stack([(g == c) & (p == c) for c in classes], 1).astype(np.float64)  # [n, C]
        self.fp = np.stack([(g != c) & (p == c) for c in classes], 1).astype(np.float64)
        self.fn = np.stack([(g == c) & (p != c) for c in classes], 1).astype(np.float64)

    def __len__(self) -> int:
        return len(self.tp)

    def f1(self, w: np.ndarray) -> np.ndarray:
        tp, fp, fn = w @ self.tp, w @ self.fp, w @ self.fn
        denom = 2 * tp + fp + fn
        present = denom > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(present, 2 * tp / np.where(present, denom, 1), 0.0)
            return (per_class * present).sum(-1) / present.sum(-1)


Scores = WLIScores | TLIScores


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


def scores_from_rows(rows: list[dict], level: Direction, fmt: WLIFormat | None = None) -> Scores:
    """The scores of prediction rows whose answers are of `level` (WLI pairs or TLI labels)."""
    golds = [str(r["gold"]) for r in rows]
    preds = [str(r["prediction"]) for r in rows]
    if Direction(str(level)) is Direction.wli:
        return WLIScores(golds, preds, fmt)
    return TLIScores(golds, preds)


# --------------------------------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------------------------------


@dataclass
class PairedResult:
    """F1 of A and B on the full test set, their difference B - A, its 95% percentile interval,
    the two-sided bootstrap p-value (module docstring), n test samples and B resamples."""

    f1_a: float
    f1_b: float
    diff: float
    lo: float
    hi: float
    p: float
    n: int
    n_boot: int

    def p_text(self) -> str:
        if self.p == 0:
            return f"<{1 / self.n_boot:.3g}"
        return f"{self.p:.3g}"


def paired_bootstrap(a: Scores, b: Scores, n_boot: int = 1000, seed: int = 0) -> PairedResult:
    """Paired bootstrap of F1(b) - F1(a) over the same resampled test samples (aligned rows)."""
    if len(a) != len(b):
        raise MismatchedTestSetError(f"paired bootstrap: {len(a)} vs {len(b)} samples (align them first)")
    n = len(a)
    full = np.ones(n)
    f_a, f_b = float(a.f1(full)), float(b.f1(full))
    diffs = np.concatenate([b.f1(w) - a.f1(w) for w in resample_blocks(n, n_boot, seed)])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return PairedResult(f_a, f_b, f_b - f_a, float(lo), float(hi), float(p), n, n_boot)
