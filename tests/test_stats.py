"""mre.stats: F1 of weighted test sets, the seed-aware comparison (hierarchical bootstrap, paired
permutation test, Benjamini-Hochberg) checked against scipy.stats and exact enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mre.data.wli_format import WLIFormat
from mre.setting import Direction
from mre.stats import (
    Comparison,
    MismatchedTestSetError,
    PairCounts,
    adjust_bh,
    align_predictions,
    bootstrap_layer_means,
    bootstrap_statistic,
    compare,
    hierarchical_diffs,
    pair_counts,
    percentile_interval,
    permutation_p,
)

LABELS = ["Music", "Sports", "Travel", "Technology"]


def tli_rows(correct: np.ndarray, seed: int = 0) -> list[dict]:
    """Prediction rows over 4 classes; a wrong prediction is another class chosen at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, ok in enumerate(correct):
        gold = LABELS[i % 4]
        pred = gold if ok else LABELS[(i + 1 + rng.integers(3)) % 4]
        rows.append({"id": f"s{i:03d}", "gold": gold, "prediction": pred})
    return rows


def tli_pair(acc_a: float, acc_b: float, n: int, seed: int) -> PairCounts:
    rng = np.random.default_rng(seed)
    a = tli_rows(rng.random(n) < acc_a, seed)
    b = tli_rows(rng.random(n) < acc_b, seed + 1)
    return pair_counts(a, b, Direction.tli)


def test_f1_matches_the_training_metrics():
    import torch
    from torchmetrics.classification import MulticlassF1Score

    from mre.metrics import WLIF1

    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, 97)
    p = np.where(rng.random(97) < 0.5, g, rng.integers(0, 4, 97))  # class 4 is never predicted
    ref = MulticlassF1Score(num_classes=6, average="macro")(torch.tensor(p), torch.tensor(g))
    rows = [
        {"id": i, "gold": str(x), "prediction": str(y)} for i, (x, y) in enumerate(zip(g, p, strict=True))
    ]
    counts = pair_counts(rows, rows, Direction.tli)
    assert counts.f1_a() == pytest.approx(float(ref), abs=1e-6) == counts.f1_b()

    fmt = WLIFormat()
    golds = ["person:Ann;location:Rome", "none", "work:Abba", "event:Cup;event:Cup"]
    preds = ["person:Ann", "food:Tea", "none", "event:Cup;broken"]
    metric = WLIF1(["person", "location", "work", "event", "food"])
    metric.update([fmt.parse(x) for x in preds], [fmt.parse(x) for x in golds])
    rows = [{"id": i, "gold": x, "prediction": y} for i, (x, y) in enumerate(zip(golds, preds, strict=True))]
    assert pair_counts(rows, rows, Direction.wli, fmt).f1_a() == pytest.approx(
        float(metric.compute()["f1"]), abs=1e-6
    )


def test_align_refuses_different_gold_and_duplicate_ids():
    rows = tli_rows(np.ones(5, bool))
    other = [dict(r) for r in rows]
    other[2]["gold"] = "Food"
    with pytest.raises(MismatchedTestSetError, match="different gold"):
        align_predictions(rows, other)
    with pytest.raises(MismatchedTestSetError, match="more than once"):
        align_predictions(rows, [*rows, rows[0]])


def test_identical_runs_compare_as_zero():
    rows = tli_rows(np.random.default_rng(1).random(200) < 0.6)
    a, b = align_predictions(rows, [dict(r) for r in reversed(rows)])
    c = compare([pair_counts(a, b, Direction.tli)], n_boot=500, n_perm=500, seed=3)
    assert c.diff == 0 and c.lo == 0 and c.hi == 0 and c.p == 1
    assert c.n_seeds == 1 and c.n == 200


def test_clearly_better_setting_excludes_zero_and_is_seeded():
    pair = tli_pair(0.4, 0.9, 300, seed=2)
    c = compare([pair], n_boot=1000, n_perm=999, seed=0)
    assert c.lo > 0 and c.diff > 0.3 and c.p == 2 / 1000 and c.p_text() == "≤0.002"
    assert compare([pair], n_boot=1000, n_perm=999, seed=0) == c  # seeded
    rev = compare([PairCounts(pair.b, pair.a, pair.level)], n_boot=1000, n_perm=999, seed=0)
    assert rev.hi < 0 and rev.diff == pytest.approx(-c.diff)


def test_single_seed_interval_agrees_with_scipy_bootstrap():
    """One seed: the hierarchical bootstrap is the paired bootstrap over test samples, so its
    percentile interval estimates the same quantiles as scipy.stats.bootstrap(paired=True).

    Both are Monte Carlo estimates from B resamples: a 2.5% quantile's standard error is about
    sqrt(q (1 - q) / B) / phi(1.96) = 0.027 sigma at B = 10,000 (sigma: the bootstrap std of the
    difference), 0.038 sigma for the difference of two independent estimates; 0.2 sigma is > 5 of
    those. (Both generators are seeded: the check does not flake.)
    """
    from scipy.stats import bootstrap

    pair = tli_pair(0.55, 0.7, 400, seed=5)
    B = 10_000
    ours = hierarchical_diffs([pair], n_boot=B, seed=1)
    sigma = ours.std()
    lo, hi = np.percentile(ours, [2.5, 97.5])

    def diff(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return pair.f1(pair.b[idx].sum(-2)) - pair.f1(pair.a[idx].sum(-2))

    ref = bootstrap(
        (np.arange(len(pair)),),
        diff,
        n_resamples=B,
        method="percentile",
        vectorized=True,
        batch=500,
        random_state=2,
    )
    assert sigma > 0.01  # a real spread, not a degenerate case
    assert abs(lo - ref.confidence_interval.low) < 0.2 * sigma
    assert abs(hi - ref.confidence_interval.high) < 0.2 * sigma
    assert abs(sigma - ref.standard_error) < 0.05 * sigma  # the std's MC error is ~ sigma / sqrt(2B)


def test_layer_bootstrap_agrees_with_scipy_bootstrap():
    """The per-layer mean interval (count-vector resampling) against scipy's, with the tolerance
    argument of the test above."""
    from scipy.stats import bootstrap

    v = np.random.default_rng(0).gamma(2.0, 1.0, size=(300, 2))
    ours = bootstrap_layer_means(v, n_boot=10_000, seed=4)
    for layer in range(2):
        ref = bootstrap((v[:, layer],), np.mean, n_resamples=10_000, method="percentile", random_state=5)
        sigma = ref.standard_error
        assert abs(ours.lo[layer] - ref.confidence_interval.low) < 0.2 * sigma
        assert abs(ours.hi[layer] - ref.confidence_interval.high) < 0.2 * sigma


def test_statistic_bootstrap_agrees_with_scipy_and_leaves_undefined_resamples_out():
    """Any statistic of resampled indices: the mean's interval against scipy's (the tolerance argument
    above), the same resamples as the per-layer bootstrap, and NaN (undefined) resamples left out."""
    from scipy.stats import bootstrap

    v = np.random.default_rng(1).gamma(2.0, 1.0, size=300)
    boots = bootstrap_statistic(len(v), lambda i: float(v[i].mean()), n_boot=10_000, seed=4)
    ref = bootstrap((v,), np.mean, n_resamples=10_000, method="percentile", random_state=5)
    lo, hi = percentile_interval(boots)
    sigma = ref.standard_error
    assert abs(lo - ref.confidence_interval.low) < 0.2 * sigma
    assert abs(hi - ref.confidence_interval.high) < 0.2 * sigma
    layers = bootstrap_layer_means(v[:, None], n_boot=10_000, seed=4)
    assert (lo, hi) == pytest.approx((layers.lo[0], layers.hi[0]), rel=1e-12)
    # three points: a resample that draws one point thrice has no spread; it is left out, not counted
    spread = bootstrap_statistic(3, lambda i: float(np.ptp(v[i])) or np.nan, n_boot=2000, seed=0)
    assert 0 < np.isnan(spread).sum() < 2000 and np.nanmin(spread) > 0
    assert percentile_interval(np.full(5, np.nan)) is None


def test_wli_counts_need_the_answer_format():
    rows = [{"id": 0, "gold": "person:Ann", "prediction": "person:Ann"}]
    with pytest.raises(ValueError, match="answer format"):
        pair_counts(rows, rows, Direction.wli)


def test_layer_bootstrap_is_seeded_and_handles_undefined_samples():
    rng = np.random.default_rng(0)
    v = rng.random((50, 3))
    v[:10, 2] = np.nan  # e.g. samples without an anchor
    a = bootstrap_layer_means(v, n_boot=300, seed=7)
    b = bootstrap_layer_means(v, n_boot=300, seed=7)
    assert np.array_equal(a.lo, b.lo) and np.array_equal(a.hi, b.hi)
    assert list(a.n) == [50, 50, 40]
    assert a.mean[2] == pytest.approx(np.nanmean(v[:, 2]))
    assert np.all(a.lo <= a.mean) and np.all(a.mean <= a.hi)


def _exact_p(pairs: list[PairCounts]) -> float:
    """The two-sided permutation p-value by enumerating every swap pattern over seeds x samples, with
    scipy's definition: 2 min(P(T >= t), P(T <= t)), capped at 1, ties within 1e-14 relative."""
    sizes = [len(p) for p in pairs]

    def stat(swaps: tuple[int, ...]) -> float:
        diffs, k = [], 0
        for p, n in zip(pairs, sizes, strict=True):
            s = np.array(swaps[k : k + n], dtype=bool)[:, None]
            k += n
            a, b = np.where(s, p.b, p.a), np.where(s, p.a, p.b)
            diffs.append(p.f1(b.sum(0)) - p.f1(a.sum(0)))
        return float(np.mean(diffs))

    observed = stat((0,) * sum(sizes))
    null = np.array([stat(s) for s in itertools.product((0, 1), repeat=sum(sizes))])
    gamma = abs(1e-14 * observed)
    greater = np.mean(null >= observed - gamma)
    less = np.mean(null <= observed + gamma)
    return float(min(1.0, 2 * min(greater, less)))


def test_permutation_p_equals_exact_enumeration():
    """With more permutations than swap patterns scipy enumerates them all: the p-value over
    seeds x samples must equal a brute-force enumeration (2 seeds x 5 samples: 1024 patterns)."""
    pairs = [tli_pair(0.3, 0.8, 5, seed=s) for s in (11, 12)]
    assert pairs[0].f1_b() != pairs[0].f1_a()
    assert permutation_p(pairs, n_perm=5000, seed=0) == pytest.approx(_exact_p(pairs), abs=1e-12)
    single = pairs[:1]
    assert permutation_p(single, n_perm=5000, seed=0) == pytest.approx(_exact_p(single), abs=1e-12)


def test_seed_noise_widens_the_interval():
    """Three seeds whose test-sample intervals each exclude 0 but whose gains have opposite signs:
    the hierarchical interval covers the seed spread, so it contains 0 (the issue's planted-strength-0
    case), while each single seed's interval claims an effect."""
    pairs = [tli_pair(0.6, 0.6 + d, 2000, seed=20 + i) for i, d in enumerate((-0.12, 0.0, 0.12))]
    singles = [compare([p], n_boot=500, n_perm=200, seed=0) for p in pairs]
    assert singles[0].hi < 0 < singles[2].lo
    c = compare(pairs, n_boot=2000, n_perm=500, seed=0)
    assert c.n_seeds == 3 and c.lo < 0 < c.hi
    assert c.hi - c.lo > 2 * max(s.hi - s.lo for s in singles)
    assert c.f1_a == pytest.approx(np.mean([s.f1_a for s in singles]))
    assert c.per_seed == [(s.f1_a, s.f1_b) for s in singles]


def test_compare_refuses_seeds_on_different_sample_counts():
    with pytest.raises(MismatchedTestSetError, match="different numbers of samples"):
        compare([tli_pair(0.5, 0.6, 50, 0), tli_pair(0.5, 0.6, 60, 1)])


def test_benjamini_hochberg_by_hand():
    """p = 0.01, 0.04, 0.03, 0.5 (m = 4): sorted p_(i) m / i = 0.04, 0.06, 0.0533, 0.5, then the
    running minimum from the top: 0.04, 0.0533, 0.0533, 0.5."""
    comps = [Comparison(0, 0, 0, 0, 0, p, 1, 10, 10, 10_000, [(0.0, 0.0)]) for p in (0.01, 0.04, 0.03, 0.5)]
    adjust_bh(comps)
    assert [c.p_adj for c in comps] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert comps[1].p_text(adjusted=True) == "0.0533"
