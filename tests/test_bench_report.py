"""bench.report's verdicts on an on / off cost ratio: judged on the interval of its rounds, not on the median alone."""

from __future__ import annotations

import itertools
import random

from bench import report

KEY = "observed_predictions_rows_ratio_batch1000"


def summary(rounds: list[float]) -> dict:
    return {
        "ratios": {KEY: sorted(rounds)[len(rounds) // 2]},
        "ratios_interval": {KEY: report.median_interval(rounds)},
    }


def verdict(rounds: list[float]) -> str:
    return next(v for label, _, _, v in report.verdicts(summary(rounds), {}) if label.startswith("predictions read"))


def test_the_interval_is_the_sign_tests():
    # 12 rounds: the 3rd smallest to the 3rd largest holds the median with probability 1 - 2 * (1 + 12 + 66) / 4096
    assert report.median_interval([float(i) for i in range(12)]) == [2.0, 9.0, 0.961]
    assert report.median_interval([float(i) for i in range(6)]) == [0.0, 5.0, 0.969]  # the fewest rounds for 95%
    assert report.median_interval([float(i) for i in range(5)]) is None


def test_the_interval_holds_the_median_as_often_as_it_says():
    # rounds drawn from a known distribution (median 1.0): the interval misses it at most 5% of the time
    rng = random.Random(7)
    trials = 4000
    missed = 0
    for _ in range(trials):
        rounds = [rng.gauss(1.0, 0.08) for _ in range(12)]
        low, high, _ = report.median_interval(rounds)
        missed += not low <= 1.0 <= high
    # expected 3.9%; 6% is 7 standard deviations (0.3%) above it
    assert missed / trials < 0.06, f"the median fell outside the interval in {missed} of {trials} trials"


def test_a_cost_is_met_missed_or_not_resolved():
    above = [0.96 + 0.005 * i for i in range(12)]
    below = [0.88 + 0.005 * i for i in range(12)]
    both = list(itertools.chain(*zip(above[:6], below[:6])))  # half the rounds on each side of 0.95
    assert verdict(above) == "yes", above
    assert verdict(below) == "no", below
    assert verdict(both).startswith("inconclusive (96% interval"), (both, verdict(both))


def test_other_goals_keep_their_plain_verdict():
    found = report.verdicts({"ratios": {"cold_start_s": 3.7, "aa_rps_ratio_c32": 1.2}}, {})
    assert [v for *_, v in found] == ["yes", "-"], found
