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
    collapse,
    compare,
    hierarchical_diffs,
    majority_f1,
    pair_counts,
    percentile_interval,
    permutation_p,
    variance_components,
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


def _two_level_reference(pairs: list[PairCounts], n_boot: int, seed: int) -> np.ndarray:
    """The two-level bootstrap (seeds, then test samples) as it was before data draws were a level."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    total = np.zeros(n_boot)
    for s, pair in enumerate(pairs):
        rows = np.nonzero(chosen == s)[0]
        n = len(pair)
        for start in range(0, len(rows), 100):
            part = rows[start : start + 100]
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=len(part)).astype(np.float64)
            np.add.at(total, part, pair.f1(w @ pair.b) - pair.f1(w @ pair.a))
    return total / len(pairs)


def test_one_draw_is_the_two_level_bootstrap():
    """One data draw (no labels, or every pair labelled alike) gives exactly the replicates of the
    two-level bootstrap for the same random seed; two draws resample the draws too."""
    pairs = [tli_pair(0.5, 0.6 + 0.05 * i, 80, seed=30 + i) for i in range(3)]
    ref = _two_level_reference(pairs, 700, seed=5)
    assert np.array_equal(hierarchical_diffs(pairs, 700, seed=5), ref)
    assert np.array_equal(hierarchical_diffs(pairs, 700, seed=5, draws=["d0"] * 3), ref)
    two = hierarchical_diffs(pairs, 700, seed=5, draws=[0, 0, 1])
    assert not np.array_equal(two, ref) and two.shape == ref.shape
    c = compare(pairs, n_boot=300, n_perm=99, seed=1)
    assert c.n_draws == 1 and c.variance.draw is None and not c.draws_disagree


def test_draws_that_disagree_in_sign_widen_the_interval():
    """Two draws with opposite gains, each seed's interval clear of 0: the three-level interval
    contains 0 and the row is flagged; Δ is the mean over draws of the mean over their seeds."""
    up = [tli_pair(0.5, 0.7, 400, seed=40 + i) for i in range(2)]
    down = [tli_pair(0.7, 0.5, 400, seed=50 + i) for i in range(3)]
    c = compare([*up, *down], n_boot=1000, n_perm=200, seed=0, draws=["u", "u", "d", "d", "d"])
    assert c.n_draws == 2 and c.n_seeds == 5 and c.draws_disagree
    assert c.per_draw[0] > 0.1 > -0.1 > c.per_draw[1] and c.lo < 0 < c.hi
    assert c.diff == pytest.approx(np.mean(c.per_draw))
    assert c.a_lo <= c.f1_a <= c.a_hi and c.b_lo <= c.f1_b <= c.b_hi
    assert c.variance.draw > c.variance.seed


def _tolerance(estimates: np.ndarray) -> float:
    """Four Monte Carlo standard errors of the mean of the replicate estimates."""
    return 4 * float(estimates.std(ddof=1)) / np.sqrt(len(estimates))


def test_variance_components_recover_planted_ones():
    """Per-sample scores x_dsi = a_d + b_ds + e_dsi with known variances (draws, seeds within a draw,
    test samples), an unbalanced design; over R simulated studies the mean estimate of each component
    must be within 4 Monte Carlo standard errors of the planted value (the estimator is unbiased)."""
    rng = np.random.default_rng(0)
    var_draw, var_seed, var_sample, n = 0.05**2, 0.03**2, 0.5**2, 200
    seeds_per_draw, reps = (3, 2, 4, 3), 2000
    est = []
    for _ in range(reps):
        deltas, test_vars = [], []
        for k in seeds_per_draw:
            a = rng.normal(0, np.sqrt(var_draw))
            x = a + rng.normal(0, np.sqrt(var_seed), (k, 1)) + rng.normal(0, np.sqrt(var_sample), (k, n))
            deltas.append(x.mean(1))
            test_vars.append(x.var(1, ddof=1) / n)
        v = variance_components(deltas, test_vars)
        est.append((v.draw, v.seed, v.test))
    est = np.array(est)
    for k, truth in enumerate((var_draw, var_seed, var_sample / n)):
        assert abs(est[:, k].mean() - truth) < _tolerance(est[:, k]), (k, est[:, k].mean(), truth)
    assert _tolerance(est[:, 0]) < var_draw / 2  # the check has power: the error is small against the value


def test_compare_recovers_planted_components_through_its_bootstrap():
    """The same recovery through `compare` on prediction counts (WLI micro-F1 with one gold and one
    predicted pair per sample is the mean of per-sample hits): setting B hits with probability
    0.6 + a_d + b_ds, A with 0.6, so the test-sample variance of a run's Δ is
    (0.6 * 0.4 - var_draw - var_seed + 0.6 * 0.4) / n on average."""
    rng = np.random.default_rng(1)
    var_draw, var_seed, n, reps = 0.06**2, 0.04**2, 100, 150
    est = []
    for _ in range(reps):
        pairs, draws = [], []
        for d in range(3):
            a = rng.normal(0, np.sqrt(var_draw))
            for _s in range(3):
                p = 0.6 + a + rng.normal(0, np.sqrt(var_seed))
                hits_a, hits_b = rng.random(n) < 0.6, rng.random(n) < p
                counts = [np.stack([h, np.ones(n), np.ones(n)], 1).astype(float) for h in (hits_a, hits_b)]
                pairs.append(PairCounts(*counts, Direction.wli))
                draws.append(d)
        v = compare(pairs, n_boot=200, n_perm=9, seed=int(rng.integers(1 << 30)), draws=draws).variance
        est.append((v.draw, v.seed, v.test))
    est = np.array(est)
    truths = (var_draw, var_seed, (0.48 - var_draw - var_seed) / n)
    for k, truth in enumerate(truths):
        assert abs(est[:, k].mean() - truth) < _tolerance(est[:, k]), (k, est[:, k].mean(), truth)


def test_collapse_of_a_run_that_answers_one_class():
    """A run that gives one class to 98 of 100 texts collapsed; its F1 sits at the majority baseline
    (the F1 of answering the most frequent gold class everywhere: 2m / (n + m) / gold classes)."""
    golds = [LABELS[i % 4] if i % 2 else "Music" for i in range(100)]  # Music 50, Sports 25, Technology 25
    rows = [{"id": i, "gold": g, "prediction": "Music" if i >= 4 else g} for i, g in enumerate(golds)]
    c = collapse(rows, Direction.tli)
    m = golds.count("Music")
    assert m == 50 and c.majority_f1 == pytest.approx(2 * m / (100 + m) / 3)
    assert c.collapsed and c.top_share == 0.98  # texts 1 and 3 keep their own class
    assert not collapse(rows, Direction.tli, share=0.99).collapsed
    healthy = [{**r, "prediction": r["gold"]} for r in rows]
    assert not collapse(healthy, Direction.tli).collapsed
    wli = [{"id": i, "gold": "none" if i % 3 else "person:Ann", "prediction": "none"} for i in range(30)]
    w = collapse(wli, Direction.wli, WLIFormat())
    assert w.collapsed and w.majority_f1 == majority_f1(wli, Direction.wli, WLIFormat())
