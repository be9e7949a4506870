"""bench/regression_windows.py: its statistics (numpy arithmetic) agree with SciPy's, and a short run measures."""

from __future__ import annotations

import numpy as np
import pytest

from bench import regression_windows as rw

stats = pytest.importorskip("scipy.stats")
distance = pytest.importorskip("scipy.spatial.distance")


def samples(seed: int):
    rng = np.random.default_rng(seed)
    yield rng.normal(150, 50, 200), rng.normal(160, 40, 150)  # continuous, unequal sizes
    yield rng.integers(0, 5, 80).astype(float), rng.integers(1, 6, 120).astype(float)  # many ties
    yield rng.exponential(30, 50), rng.exponential(30, 50) + 5


@pytest.mark.parametrize("seed", range(5))
def test_distances_match_scipy(seed):
    for a, b in samples(seed):
        assert rw.ks_distance(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
        assert rw.wasserstein1(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)


def test_t_quantile_matches_scipy_from_10_degrees_of_freedom():
    for df in (10, 20, 48.7, 98, 198, 500, 5000):
        for p in (0.975, 0.995, 0.9):
            assert rw.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-4), (p, df)


@pytest.mark.parametrize("seed", range(5))
def test_welch_interval_matches_scipy(seed):
    for a, b in samples(seed):
        diff, low, high = rw.welch_interval(a, b)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert diff == pytest.approx(a.mean() - b.mean())
        assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-4, abs=1e-6)


def test_js_distance_matches_scipy():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.integers(0, 3, 200), rng.integers(0, 2, 150)
        p, q = np.bincount(a, minlength=3), np.bincount(b, minlength=3)
        assert rw.js_distance(a, b, 3) == pytest.approx(distance.jensenshannon(p / p.sum(), q / q.sum(), base=2))


def test_a_short_run_tells_the_worse_versions_apart():
    result = rw.measure(count=40, sizes=(200,))
    regression, classes = result["diabetes"]["200"], result["wine"]["200"]
    print({k: regression[k]["ks"] for k in regression}, {k: classes[k]["js"] for k in classes})
    assert regression["worse"]["ks"]["median"] > 2 * regression["honest_pooled"]["ks"]["median"]
    assert regression["worse"]["w1_over_sd"]["median"] > 2 * regression["honest_pooled"]["w1_over_sd"]["median"]
    assert classes["worse"]["js"]["median"] > 3 * classes["honest_pooled"]["js"]["median"]
    assert result["models"]["diabetes"]["worse"]["holdout"]["holdout_mae"] > 50
