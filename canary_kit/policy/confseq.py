"""Always-valid statistics for the sequential gates: confidence sequences (intervals that hold at every moment at
once, however often they are looked at) and the sequential sample-ratio test. Plain Python, like stats.py.

A (1 - alpha) confidence sequence C_n for a figure theta holds P(theta is outside C_n for some n) <= alpha, so a
rollout may judge it after every request and stop the first time it excludes a line, with error rate alpha. Each
bound here comes from a nonnegative martingale and Ville's inequality (P(sup M_n >= 1/alpha) <= alpha):

- `bernoulli`: a share (5xx answers, labelled answers that were right, rows that agree). Robbins' conjugate mixture
  of binomial likelihood ratios, with a mixture of three beta priors so that it is tight near 0, 1/2 and 1 (Robbins
  1970; Howard, Ramdas, McAuliffe and Sekhon 2021, section 3).
- `mean_radius`: the mean of values in a known range (each row's confidence, a request's latency rank). Robbins'
  normal mixture for sub-Gaussian increments; a range of width R is sub-Gaussian with variance R^2/4 (Hoeffding).
- `dkw_radius`: the whole distribution function at once (a latency distribution), the time-uniform
  Dvoretzky-Kiefer-Wolfowitz inequality of Howard and Ramdas (2022, Bernoulli 28(3), Theorem 2).
- `srm_log_bayes_factor`: the split against the weights set, the Dirichlet-multinomial mixture SPRT of Lindon and
  Malek (2022, "Anytime-valid inference for multinomial count data", NeurIPS), as Optimizely and Eppo test SRM.
docs/gates.md says how the gates use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

# Beta priors of the binomial mixture, equally weighted: near 0 (error rates), Jeffreys' (middling shares), near 1
# (accuracy, agreement). The mixture costs at most log 3 against the best one of them.
PRIORS = ((0.1, 10.0), (0.5, 0.5), (10.0, 0.1))
SRM_CONCENTRATION = 100.0  # the Dirichlet prior around the weights set: a few points of skew are what it expects
TYPICAL_N = 1000  # the normal mixture is tuned to be tightest near this many observations


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@lru_cache(maxsize=65536)
def bernoulli(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """A (1 - alpha) confidence sequence for a share, from `successes` of `trials` so far: (low, high).

    The mixture martingale M_n(p) = integral of L_n(q) / L_n(p) over the priors; p is kept while M_n(p) < 1/alpha.
    Its log is C - log L_n(p) with C the priors' log marginal likelihood, so the bounds are where the binomial
    log-likelihood falls to C - log(1/alpha): one root on each side of the observed share (the log-likelihood is
    concave in the log-odds)."""
    if trials <= 0:
        return 0.0, 1.0
    s, f = successes, trials - successes
    terms = [_log_beta(a + s, b + f) - _log_beta(a, b) for a, b in PRIORS]
    top = max(terms)  # log-sum-exp: the terms underflow exp() on a few thousand trials
    marginal = top + math.log(sum(math.exp(t - top) for t in terms) / len(PRIORS))
    level = marginal - math.log(1 / alpha)  # keep p while log L_n(p) > level
    low = 0.0 if s == 0 else _root(s, f, level, -1.0)
    high = 1.0 if f == 0 else _root(s, f, level, 1.0)
    return low, high


def _root(s: int, f: int, level: float, side: float) -> float:
    """Where the binomial log-likelihood s log p + f log(1 - p) falls to `level`, below the observed share (side -1)
    or above it (+1). Newton's method on the log-odds x, where the log-likelihood is concave: started outside the
    root, each step stays outside and closes in, so the bound returned is never too narrow."""
    n = s + f
    x = 36.0 * side
    for _ in range(100):
        p = 1 / (1 + math.exp(-x))
        gap = (s * math.log(p) if s else 0.0) + (f * math.log1p(-p) if f else 0.0) - level
        slope = s - n * p  # d/dx of the log-likelihood
        if gap >= -1e-9 or slope == 0:
            break
        step = gap / slope
        x -= step
        if abs(step) < 1e-10:
            break
    return 1 / (1 + math.exp(-x))


def mean_radius(n: float, alpha: float, width: float = 1.0, typical: float = TYPICAL_N) -> float:
    """Half the width of a (1 - alpha) confidence sequence for the mean of n values within a range of `width`.

    Robbins' normal mixture: with S_n the centred sum and V = n width^2 / 4 (Hoeffding's variance bound),
    M_n = sqrt(rho / (rho + V)) exp(S_n^2 / (2 (rho + V))) is a nonnegative supermartingale, so
    |S_n| < sqrt(2 (rho + V) log(sqrt((rho + V) / rho) / alpha)) at every n with probability 1 - alpha. rho sets where
    it is tightest (Howard et al. 2021, eq. 14): near `typical` observations."""
    if n <= 0:
        return math.inf
    variance = width * width / 4
    level = math.log(1 / alpha)
    rho = variance * typical / (2 * level + math.log(1 + 2 * level))
    total = rho + n * variance
    return math.sqrt(2 * total * (math.log(math.sqrt(total / rho)) + level)) / n


def dkw_radius(n: float, alpha: float) -> float:
    """The distance within which the empirical distribution function of n draws stays from the true one, at every n
    at once with probability 1 - alpha: 0.85 sqrt((log log(e n) + 0.8 log(1612 / alpha)) / n) (Howard and Ramdas
    2022, Theorem 2)."""
    if n <= 0:
        return math.inf
    return 0.85 * math.sqrt((math.log(math.log(math.e * n)) + 0.8 * math.log(1612 / alpha)) / n)


def srm_log_bayes_factor(
    counts: Mapping[str, int], shares: Mapping[str, float], concentration: float = SRM_CONCENTRATION
) -> float:
    """The log Bayes factor of the observed counts per arm against the shares set (a Dirichlet(concentration x
    shares) mixture over the alternatives, against the point null). Under the null its exponential is a
    nonnegative martingale: reject the split as set once it reaches 1/alpha; exp(-it) is an always-valid p-value."""
    n = sum(counts.values())
    total = math.lgamma(concentration) - math.lgamma(concentration + n)
    for arm, share in shares.items():
        x, prior = counts.get(arm, 0), concentration * share
        total += math.lgamma(prior + x) - math.lgamma(prior) - x * math.log(share)
    return total


def slower_share(green: Mapping[float, int], blue: Mapping[float, int]) -> tuple[float, int, int] | None:
    """From two latency histograms {value: count}: the share of (green, blue) request pairs in which green's took
    longer, ties counting half (the Mann-Whitney probability; 0.5 when both are as fast), with both counts."""
    n_green, n_blue = sum(green.values()), sum(blue.values())
    if n_green <= 0 or n_blue <= 0:
        return None
    below = 0  # blue requests faster than the value reached so far
    values = sorted(set(green) | set(blue))
    pairs = 0.0
    for value in values:
        tied = blue.get(value, 0)
        pairs += green.get(value, 0) * (below + tied / 2)
        below += tied
    return pairs / (n_green * n_blue), n_green, n_blue


def largest_shift(
    green: Mapping[str, float], blue: Mapping[str, float], radius_green: float, radius_blue: float
) -> tuple[float, float, float]:
    """The total-variation distance between two class distributions (the largest difference of the share of any set
    of classes; half the L1 distance) with bounds, given a radius that holds for the share of every set of classes
    on each side: (estimate, low, high)."""
    classes = sorted(set(green) | set(blue))
    n_green, n_blue = sum(green.values()), sum(blue.values())
    p = [green.get(c, 0) / n_green for c in classes]
    q = [blue.get(c, 0) / n_blue for c in classes]
    estimate = sum(abs(a - b) for a, b in zip(p, q)) / 2
    spread = radius_green + radius_blue
    return estimate, max(0.0, estimate - spread), min(1.0, estimate + spread)


def class_sets(classes: int) -> int:
    """How many sets of classes a class distribution's shares can be judged on (a set and its complement are one):
    the union bound behind `largest_shift`'s radius."""
    return max(1, 2 ** (max(classes, 1) - 1) - 1)
