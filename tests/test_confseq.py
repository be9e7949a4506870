"""The always-valid statistics behind the sequential gates (canary_kit/policy/confseq.py), each checked by simulation: a
(1 - alpha) confidence sequence must hold at every look at once in at least 1 - alpha of seeded runs. Each test
looks many times (as a rollout does, every second) and bounds the runs in which the sequence ever missed the truth
by alpha plus four binomial standard deviations: a correct sequence stays below that with overwhelming
probability (and, being conservative, far below it); a peeking fixed-sample interval does not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from canary_kit.policy.confseq import (
    bernoulli,
    class_sets,
    dkw_radius,
    largest_shift,
    mean_radius,
    slower_share,
    srm_log_bayes_factor,
)
from canary_kit.policy.stats import wilson
from conftest import ROOT

ALPHA = 0.05
LOOKS = np.unique(np.geomspace(10, 3000, 30).astype(int))  # a look every second or so of a rollout step


def allowed(runs: int, alpha: float = ALPHA) -> float:
    """The most runs in which a valid (1 - alpha) sequence may miss, with overwhelming probability."""
    return runs * alpha + 4 * math.sqrt(runs * alpha * (1 - alpha))


@pytest.mark.parametrize("p", [0.002, 0.05, 0.5, 0.97])
def test_the_share_sequence_holds_at_every_look(p):
    rng = np.random.default_rng(int(p * 1000))
    runs, missed, peeking = 400, 0, 0
    for _ in range(runs):
        successes = np.cumsum(rng.random(LOOKS[-1]) < p)
        bounds = [bernoulli(int(successes[n - 1]), int(n), ALPHA) for n in LOOKS]
        missed += any(not low <= p <= high for low, high in bounds)
        peeking += any(not low <= p <= high for low, high in (wilson(int(successes[n - 1]), int(n)) for n in LOOKS))
    print(
        f"\np = {p}: the sequence missed p in {missed} of {runs} runs; a 95% Wilson interval peeked at the same "
        f"{len(LOOKS)} looks missed it in {peeking} (allowed {allowed(runs):.0f})"
    )
    assert missed <= allowed(runs)


def test_the_share_sequence_is_tight_enough_to_decide_in_seconds():
    # a rollout step's error rate: no 5xx in 1,000 green requests at one step's share of alpha 0.002 over 4 steps
    low, high = bernoulli(0, 1000, 0.002 / 4 / 2)
    assert low == 0 and high < 0.01, high
    low, high = bernoulli(50, 1000, 0.00025)  # 5%: shown above a 0.2% floor at once
    assert low > 0.02, low
    assert bernoulli(0, 0, 0.05) == (0.0, 1.0) and bernoulli(10, 10, 0.05)[1] == 1.0


def test_the_mean_sequence_holds_at_every_look_for_the_widest_values():
    # values of 0 or 1 with equal chance: the worst case of Hoeffding's bound, where it is exact
    rng = np.random.default_rng(1)
    runs = 2000
    n = np.arange(1, LOOKS[-1] + 1)
    radius = np.array([mean_radius(k, ALPHA) for k in n])
    sums = np.cumsum(rng.random((runs, LOOKS[-1])) < 0.5, axis=1)
    missed = int((np.abs(sums / n - 0.5) > radius).any(axis=1).sum())
    print(f"\nthe mean's sequence missed 0.5 in {missed} of {runs} runs (allowed {allowed(runs):.0f})")
    assert missed <= allowed(runs)


def test_the_distribution_sequence_holds_at_every_look():
    rng = np.random.default_rng(2)
    runs, missed = 300, 0
    for _ in range(runs):
        draws = rng.random(LOOKS[-1])
        for n in LOOKS:
            x = np.sort(draws[:n])
            k = np.arange(1, n + 1)
            distance = max((k / n - x).max(), (x - (k - 1) / n).max())  # sup |F_n - F| for uniform draws
            if distance > dkw_radius(int(n), ALPHA):
                missed += 1
                break
    print(f"\nthe time-uniform DKW band missed in {missed} of {runs} runs (allowed {allowed(runs):.0f})")
    assert missed <= allowed(runs)


def test_the_sequential_srm_test_holds_its_error_rate_and_catches_a_skew():
    rng = np.random.default_rng(3)
    weight, runs, seconds, rate = 0.1, 500, 30, 1050
    shares = {"green": weight, "blue": 1 - weight}

    def rejected(share: float) -> int | None:
        green = np.cumsum(rng.binomial(rate, share, seconds))
        for second, g in enumerate(green, start=1):
            counts = {"green": int(g), "blue": int(second * rate - g)}
            if srm_log_bayes_factor(counts, shares) >= math.log(1 / ALPHA):
                return second
        return None

    honest = sum(rejected(weight) is not None for _ in range(runs))
    caught = [rejected(0.12) for _ in range(200)]
    seconds_to_catch = sorted(s for s in caught if s is not None)
    print(
        f"\nan honest 10% split was rejected in {honest} of {runs} runs (looked at every second for {seconds} s; "
        f"allowed {allowed(runs):.0f}); a 12% split was caught in {len(seconds_to_catch)} of 200 runs, median "
        f"after {seconds_to_catch[len(seconds_to_catch) // 2]} s"
    )
    assert honest <= allowed(runs)
    assert len(seconds_to_catch) >= 198


def recorded_latency() -> tuple[np.ndarray, np.ndarray]:
    data = json.loads((ROOT / "bench" / "data" / "rollout_streams.json").read_text())
    counts = data["latency"]["versions"]["v1.0.0"]["ms"]
    values = np.array([int(ms) for ms in counts])
    weights = np.array(list(counts.values()), dtype=float)
    return values, weights / weights.sum()


def test_the_slower_share_of_two_equal_versions_is_one_half_and_its_sequence_holds():
    """Two versions with the same measured latencies (1 ms resolution, many ties): the share of pairs in which
    green is slower is exactly 0.5, and the gate's sequence (green's mean placement and blue's DKW band, each at
    alpha / 2) must keep it at every look."""
    values, pmf = recorded_latency()
    rng = np.random.default_rng(4)
    runs, missed = 300, 0
    for _ in range(runs):
        green, blue = rng.choice(values, 2000, p=pmf), rng.choice(values, 18000, p=pmf)
        for n in LOOKS[LOOKS <= 2000]:
            share, n_green, n_blue = slower_share(histogram(green[:n]), histogram(blue[: 9 * n]))
            radius = mean_radius(n_green, ALPHA / 2) + dkw_radius(n_blue, ALPHA / 2)
            if abs(share - 0.5) > radius:
                missed += 1
                break
    print(f"\nthe slower-share sequence missed 0.5 in {missed} of {runs} A/A runs (allowed {allowed(runs):.0f})")
    assert missed <= allowed(runs)
    slow = np.round(np.clip(rng.choice(values, 50000, p=pmf) + rng.uniform(-0.5, 0.5, 50000), 0, None) * 1.3)
    share, _, _ = slower_share(histogram(slow), histogram(rng.choice(values, 50000, p=pmf)))
    print(f"a green 30% slower: slower in {share:.3f} of pairs")
    assert 0.58 < share < 0.64


def histogram(values: np.ndarray) -> dict[float, int]:
    found, counts = np.unique(values, return_counts=True)
    return {float(v): int(c) for v, c in zip(found, counts)}


@pytest.mark.parametrize("green_shares", [[0.456, 0.186, 0.358], [0.634, 0.0, 0.366]])
def test_the_class_shift_sequence_holds_at_every_look(green_shares):
    """Total variation between two class distributions (blue: v1.0.0's shares on the data; green: the same, or the
    weak v1.9.0's), bounded through every set of classes at once."""
    blue_shares = [0.456, 0.186, 0.358]
    truth = sum(abs(a - b) for a, b in zip(green_shares, blue_shares)) / 2
    rng = np.random.default_rng(5)
    runs, missed, sets = 300, 0, class_sets(3)
    for _ in range(runs):
        green = np.cumsum(rng.multinomial(1, green_shares, 2000), axis=0)
        blue = np.cumsum(rng.multinomial(1, blue_shares, 18000), axis=0)
        for n in LOOKS[LOOKS <= 2000]:
            g = dict(zip("ACG", green[n - 1].tolist()))
            b = dict(zip("ACG", blue[9 * n - 1].tolist()))
            _, low, high = largest_shift(
                g, b, mean_radius(n, ALPHA / (2 * sets)), mean_radius(9 * n, ALPHA / (2 * sets))
            )
            if not low <= truth <= high:
                missed += 1
                break
    print(f"\nclass shift {truth:.3f}: the sequence missed it in {missed} of {runs} runs (allowed {allowed(runs):.0f})")
    assert missed <= allowed(runs)


def test_the_statistics_match_their_closed_forms():
    from scipy import stats as scipy_stats

    # the Dirichlet-multinomial Bayes factor of two arms is the beta-binomial marginal over the binomial likelihood
    g, b, w, c = 130, 870, 0.1, 100.0
    marginal = scipy_stats.betabinom.logpmf(g, g + b, c * w, c * (1 - w))
    expected = marginal - scipy_stats.binom.logpmf(g, g + b, w)
    assert srm_log_bayes_factor({"green": g, "blue": b}, {"green": w, "blue": 1 - w}, c) == pytest.approx(expected)
    # the slower share is the Mann-Whitney U over both counts (ties half)
    x, y = [1, 2, 2, 3, 5], [2, 2, 4, 1]
    u = scipy_stats.mannwhitneyu(x, y).statistic
    assert slower_share(histogram(np.array(x)), histogram(np.array(y)))[0] == pytest.approx(u / (len(x) * len(y)))
    assert class_sets(2) == 1 and class_sets(3) == 3 and class_sets(4) == 7
