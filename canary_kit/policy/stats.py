"""The few statistics the gates need, in plain Python (no SciPy in the tool): a share's confidence interval, the
distance between two class distributions, the sample-ratio mismatch test; for a regressor, the two-sample
Kolmogorov-Smirnov distance, the standardised mean shift and the errors (MAE, RMSE) against true values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts as shares of their total ({} when there is nothing)."""
    total = sum(counts.values())
    return {key: n / total for key, n in counts.items()} if total > 0 else {}


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float | None:
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


# --- numbers: a regressor's predictions, and its errors against the true values ------------------------------


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sample Kolmogorov-Smirnov distance: the largest gap between the two samples' empirical distribution
    functions, from 0 (the same distribution) to 1 (no overlap). None if either is empty."""
    if not a or not b:
        return None
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    gap = 0.0
    while i < len(xs) and j < len(ys):
        at = min(xs[i], ys[j])
        while i < len(xs) and xs[i] == at:
            i += 1
        while j < len(ys) and ys[j] == at:
            j += 1
        gap = max(gap, abs(i / len(xs) - j / len(ys)))
    return gap


def ks_p_value(distance: float, n: int, m: int) -> float:
    """The asymptotic p-value of a two-sample KS distance (Kolmogorov's distribution, with Stephens' small-sample
    correction): how often samples of one distribution are at least this far apart."""
    size = math.sqrt(n * m / (n + m))
    x = (size + 0.12 + 0.11 / size) * distance
    if x < 0.3:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


def mean_sd(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation; None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def mean_shift(green: Sequence[float], blue: Sequence[float], z: float = Z95) -> tuple[float, float, float] | None:
    """Green's mean minus blue's, in units of blue's standard deviation, with its 95% interval (Welch's standard
    error): how far the predictions moved, whatever their unit. None with fewer than two values a side, or when
    blue's predictions do not vary."""
    g, b = mean_sd(green), mean_sd(blue)
    if g is None or b is None or b[1] <= 0:
        return None
    shift = (g[0] - b[0]) / b[1]
    spread = z * math.sqrt(g[1] ** 2 / len(green) + b[1] ** 2 / len(blue)) / b[1]
    return shift, shift - spread, shift + spread


@dataclass(frozen=True)
class Errors:
    """A version's errors against the true values, as sums: rows, sum of |error|, sum of error^2, sum of error^4."""

    n: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    quad_sum: float = 0.0

    @property
    def mae(self) -> float | None:
        return self.abs_sum / self.n if self.n else None

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self.sq_sum / self.n) if self.n else None

    def mae_interval(self, z: float = Z95) -> tuple[float, float] | None:
        """The 95% interval of the mean absolute error (normal approximation; |e|^2 = e^2)."""
        if self.n < 2 or self.mae is None:
            return None
        variance = max(0.0, (self.sq_sum - self.n * self.mae**2) / (self.n - 1))
        spread = z * math.sqrt(variance / self.n)
        return max(0.0, self.mae - spread), self.mae + spread

    def rmse_interval(self, z: float = Z95) -> tuple[float, float] | None:
        """The 95% interval of the root mean squared error: the mean of e^2's interval, square-rooted."""
        if self.n < 2:
            return None
        mse = self.sq_sum / self.n
        variance = max(0.0, (self.quad_sum - self.n * mse**2) / (self.n - 1))
        spread = z * math.sqrt(variance / self.n)
        return math.sqrt(max(0.0, mse - spread)), math.sqrt(mse + spread)

    def mae_variance(self) -> float | None:
        if self.n < 2 or self.mae is None:
            return None
        return max(0.0, (self.sq_sum - self.n * self.mae**2) / (self.n - 1)) / self.n


def error_increase(green: Errors, blue: Errors, z: float = Z95) -> tuple[float, float, float] | None:
    """Green's MAE over blue's, minus 1 (0.1: 10% more error), with its 95% interval (Welch, on the difference of
    the two MAEs, scaled by blue's); None unless both have two labelled rows and blue some error."""
    g, b = green.mae_variance(), blue.mae_variance()
    if g is None or b is None or green.mae is None or blue.mae is None or blue.mae <= 0:
        return None
    increase = green.mae / blue.mae - 1
    spread = z * math.sqrt(g + b) / blue.mae
    return increase, increase - spread, increase + spread
