"""The few statistics the gates need, in plain Python (no SciPy in the tool): a share's confidence interval, the
distance between two class distributions, and the sample-ratio mismatch test."""

from __future__ import annotations

import math
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)  # 1.96: two-sided 95%


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a share (95% by default); None without trials. Unlike the normal
    approximation it stays inside [0, 1] and is honest for shares near 0 or 1 and for small samples."""
    if trials <= 0:
        return None
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def shares(counts: dict[str, float]) -> dict[str, float]:
    """Counts as shares of their total ({} when there is nothing)."""
    total = sum(counts.values())
    return {key: n / total for key, n in counts.items()} if total > 0 else {}


def js_distance(p: dict[str, float], q: dict[str, float]) -> float | None:
    """Jensen-Shannon distance between two distributions over the same classes (counts or shares): the square root
    of the JS divergence with log base 2, so 0 for identical shares and 1 for disjoint ones. None if either is
    empty."""
    p, q = shares(p), shares(q)
    if not p or not q:
        return None
    divergence = 0.0
    for key in set(p) | set(q):
        a, b = p.get(key, 0.0), q.get(key, 0.0)
        m = (a + b) / 2
        if a > 0:
            divergence += 0.5 * a * math.log2(a / m)
        if b > 0:
            divergence += 0.5 * b * math.log2(b / m)
    return math.sqrt(max(0.0, divergence))


def srm_p_value(green: int, blue: int, green_share: float) -> float | None:
    """Sample-ratio mismatch: the chi-square test (1 degree of freedom) of green's observed count against the share
    that was set. A small p-value says the split is not what was asked. None when the test does not apply (no
    requests, or a share of 0 or 1, where one expected count is zero)."""
    total = green + blue
    if total <= 0 or not 0 < green_share < 1:
        return None
    expected_green, expected_blue = total * green_share, total * (1 - green_share)
    chi2 = (green - expected_green) ** 2 / expected_green + (blue - expected_blue) ** 2 / expected_blue
    return math.erfc(math.sqrt(chi2 / 2))  # the chi-square(1) survival function


def chi2_critical(p_value: float) -> float:
    """The chi-square(1) statistic whose p-value is `p_value` (10.83 for 0.001): the same test where only the
    statistic can be computed (PromQL)."""
    return NormalDist().inv_cdf(1 - p_value / 2) ** 2


def difference(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = Z95
) -> tuple[float, float, float] | None:
    """Share a minus share b with its 95% interval (Newcombe's hybrid score interval, from both Wilson intervals:
    sound for small samples and shares near 0 or 1); None unless both have trials."""
    if trials_a <= 0 or trials_b <= 0:
        return None
    pa, pb = successes_a / trials_a, successes_b / trials_b
    bounds_a, bounds_b = wilson(successes_a, trials_a, z), wilson(successes_b, trials_b, z)
    if bounds_a is None or bounds_b is None:
        return None
    (la, ua), (lb, ub) = bounds_a, bounds_b
    diff = pa - pb
    return diff, diff - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2), diff + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
