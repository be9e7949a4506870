"""Windows of predictions for the regression gates' defaults, measured offline on the two foreign services' models
(tests/services/: their train.py recipes, fitted here; no server, no BentoML store):

    python -m bench.regression_windows          # writes bench/results/regression_windows.json, prints a table

A window is what a gate compares: N random rows of the dataset answered by blue, N other random rows answered by the
candidate (rows drawn with replacement, as traffic repeats). For 400 windows per N (50, 100, 200, 500) and each pair
(blue against itself, the good candidate and the worse one) it reports, for the diabetes regressor: the two-sample
Kolmogorov-Smirnov distance of the predicted values, their Wasserstein-1 distance divided by blue's standard
deviation, and the standardised mean shift (mean_g - mean_b) / sd_b with its Welch 95% interval; for the wine
classifier: the Jensen-Shannon distance of the predicted class shares (log 2, as canary_kit/policy/stats.py) and
the drop in mean confidence (each row's top score), for comparison with the penguin's. Honest pairs: median, 99.5th
percentile and largest; the worse one: median and smallest. The statistics are numpy's arithmetic here (no SciPy);
tests/test_regression_windows.py checks them against SciPy's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path
from statistics import NormalDist
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "tests" / "services"
OUT = ROOT / "bench" / "results" / "regression_windows.json"
SIZES = (50, 100, 200, 500)
WINDOWS = 400
SEED = 20260
# The recipes tests/foreign.py builds as Bentos (train.py's fit() arguments), and one more for the regressor:
# bmi alone is clearly worse on labels (hold-out MAE 53 against 45) yet predicts values spread much as blue's.
RECIPES = {
    "diabetes": {
        "baseline": ("ridge", None),
        "good": ("gradient_boosting", None),
        "worse": ("ridge", ["age"]),
        "worse_bmi_only": ("ridge", ["bmi"]),
    },
    "wine": {
        "baseline": ("logistic_regression", None),
        "good": ("random_forest", None),
        "worse": ("logistic_regression", ["ash"]),
    },
}
HONEST = ("baseline", "good")


# ----------------------------------------------------------------------------------------------------- statistics
def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the two empirical CDFs (ties counted)."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    gap = np.searchsorted(a, points, side="right") / len(a) - np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(gap)))


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance of two samples: the area between their empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.sort(np.concatenate([a, b]))
    widths = np.diff(points)
    cdf_a = np.searchsorted(a, points[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, points[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile from the normal one (Cornish-Fisher expansion, Abramowitz & Stegun 26.7.5): within
    1e-4 of the exact value from 10 degrees of freedom up (a window has at least 50 rows per side)."""
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def welch_interval(green: np.ndarray, blue: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """mean(green) - mean(blue) with its Welch interval (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    vg, vb = green.var(ddof=1) / len(green), blue.var(ddof=1) / len(blue)
    diff = float(green.mean() - blue.mean())
    se = math.sqrt(vg + vb)
    if se == 0:
        return diff, diff, diff
    df = (vg + vb) ** 2 / (vg**2 / (len(green) - 1) + vb**2 / (len(blue) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return diff, diff - half, diff + half


def js_distance(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    """Jensen-Shannon distance (log 2, within [0, 1]) between two samples' class shares (classes as 0..classes-1)."""
    p = np.bincount(a, minlength=classes) / len(a)
    q = np.bincount(b, minlength=classes) / len(b)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return math.sqrt(max(0.0, 0.5 * float(terms.sum())))


# ------------------------------------------------------------------------------------------------------- windows
def regression_window(blue: np.ndarray, green: np.ndarray) -> dict[str, float]:
    sd = float(blue.std(ddof=1))
    diff, low, high = welch_interval(green, blue)
    return {
        "ks": ks_distance(green, blue),
        "w1_over_sd": wasserstein1(green, blue) / sd,
        "mean_shift_sd": diff / sd,
        "abs_mean_shift_sd": abs(diff) / sd,
        "interval_half_width_sd": (high - low) / 2 / sd,
        "interval_excludes_zero": float(low > 0 or high < 0),
        # What a gate that fails only when the whole interval lies beyond its threshold compares: 0 when the
        # interval holds 0, else its end nearer to 0
        "interval_nearest_to_zero_sd": max(low, -high, 0.0) / sd,
    }


def classification_window(blue: tuple[np.ndarray, np.ndarray], green: tuple[np.ndarray, np.ndarray], classes: int):
    return {
        "js": js_distance(green[0], blue[0], classes),
        "confidence_drop": float(blue[1].mean() - green[1].mean()),
    }


def summary(values: np.ndarray) -> dict[str, float]:
    quantiles = np.quantile(values, [0.0, 0.005, 0.5, 0.995, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("min", "p0_5", "median", "p99_5", "max"), quantiles)}


def summarise(figures: dict[str, np.ndarray]) -> dict:
    """Each figure's spread over the windows; for the interval, the share of windows in which it excludes 0."""
    out: dict = {name: summary(values) for name, values in figures.items() if name != "interval_excludes_zero"}
    if "interval_excludes_zero" in figures:
        out["interval_excludes_zero_share"] = round(float(np.mean(figures["interval_excludes_zero"])), 4)
    return out


def draw(
    predicted: dict, task: str, size: int, count: int, seed: int, classes: int
) -> dict[str, dict[str, np.ndarray]]:
    """Each role's figures over `count` windows of `size` rows per side, blue's rows and its own drawn separately."""
    blue = predicted["baseline"]
    rows = len(blue[0]) if task == "classification" else len(blue)
    raw = {}
    for index, role in enumerate(predicted):
        rng = np.random.default_rng([seed, size, index])
        green = predicted[role]
        figures: dict[str, list[float]] = {}
        for _ in range(count):
            b, g = rng.integers(rows, size=size), rng.integers(rows, size=size)
            if task == "classification":
                window = classification_window((blue[0][b], blue[1][b]), (green[0][g], green[1][g]), classes)
            else:
                window = regression_window(blue[b], green[g])
            for name, value in window.items():
                figures.setdefault(name, []).append(value)
        raw[role] = {name: np.asarray(values) for name, values in figures.items()}
    return raw


def windows(predicted: dict, task: str, size: int, count: int, seed: int, classes: int = 0) -> dict:
    """Blue against each role (and the honest roles pooled), each figure summarised over the windows."""
    raw = draw(predicted, task, size, count, seed, classes)
    out = {role: summarise(figures) for role, figures in raw.items()}
    out["honest_pooled"] = summarise({name: np.concatenate([raw[r][name] for r in HONEST]) for name in raw["good"]})
    return out


# -------------------------------------------------------------------------------------------------------- models
def train_module(folder: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_train_{folder}", SERVICES / folder / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fitted(service: str) -> tuple[ModuleType, dict[str, tuple[object, dict]]]:
    train = train_module(service)
    models = {}
    for role, (algorithm, features) in RECIPES[service].items():
        models[role] = train.fit(algorithm, features or list(train.FEATURES))
    return train, models


def measure(count: int = WINDOWS, seed: int = SEED, sizes: tuple[int, ...] = SIZES) -> dict:
    started = time.monotonic()
    result: dict = {"windows": count, "seed": seed, "sizes": list(sizes), "rows_drawn_from": {}, "models": {}}

    train, models = fitted("diabetes")
    x, _ = train.dataset()
    result["rows_drawn_from"]["diabetes"] = len(x)
    predicted = {role: model.predict(x) for role, (model, _) in models.items()}
    result["models"]["diabetes"] = {
        role: {
            "recipe": RECIPES["diabetes"][role],
            "holdout": metrics,
            "mean": round(float(predicted[role].mean()), 2),
            "sd": round(float(predicted[role].std(ddof=1)), 2),
        }
        for role, (_, metrics) in models.items()
    }
    result["diabetes"] = {str(n): windows(predicted, "regression", n, count, seed) for n in sizes}

    train, models = fitted("wine")
    x, _ = train.dataset()
    result["rows_drawn_from"]["wine"] = len(x)
    classes = list(models["baseline"][0].classes_)
    labelled = {}
    for role, (model, _) in models.items():
        proba = model.predict_proba(x)
        labelled[role] = (proba.argmax(axis=1), proba.max(axis=1))
    result["models"]["wine"] = {
        role: {
            "recipe": RECIPES["wine"][role],
            "holdout": metrics,
            "class_shares": np.round(np.bincount(labelled[role][0], minlength=len(classes)) / len(x), 3).tolist(),
            "mean_confidence": round(float(labelled[role][1].mean()), 3),
        }
        for role, (_, metrics) in models.items()
    }
    result["wine"] = {str(n): windows(labelled, "classification", n, count, seed, len(classes)) for n in sizes}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


# --------------------------------------------------------------------------------------------------------- table
def table(result: dict) -> str:
    lines = [
        f"{result['windows']} windows of N random rows per side (seed {result['seed']}); honest = blue vs blue and vs"
        " the good candidate: median / 99.5th pct / max; worse: median / min",
    ]
    figures = {
        "diabetes": ("ks", "w1_over_sd", "abs_mean_shift_sd", "interval_nearest_to_zero_sd"),
        "wine": ("js", "confidence_drop"),
    }
    for service, names in figures.items():
        others = [r for r in RECIPES[service] if r not in HONEST]
        lines.append(f"\n{service} ({result['rows_drawn_from'][service]} rows)")
        header = f"{'N':>5} {'figure':<27} {'honest':>22}"
        lines.append(header + "".join(f" {r:>22}" for r in others))
        for n in map(str, result["sizes"]):
            for name in names:
                honest = result[service][n]["honest_pooled"][name]
                row = f"{n:>5} {name:<27} {honest['median']:>6.3f} {honest['p99_5']:>7.3f} {honest['max']:>7.3f}"
                for role in others:
                    worse = result[service][n][role][name]
                    row += f" {worse['median']:>14.3f} {worse['min']:>7.3f}"
                lines.append(row)
            if service == "diabetes":
                shares = {r: result[service][n][r]["interval_excludes_zero_share"] for r in RECIPES[service]}
                lines.append(f"{n:>5} {'Welch 95% excludes 0 in':<27} {shares}")
    lines.append(f"\nmeasured in {result['elapsed_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=WINDOWS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = measure(args.windows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
