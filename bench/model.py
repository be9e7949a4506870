"""The model's side of bench.run: its in-process rows/s (the floor the served figures are compared with) and the
parity of the canary's served answers with scikit-learn's.
"""

from __future__ import annotations

import timeit
from pathlib import Path

from bench.servers import ROOT, log
from penguin.features import CANDIDATE_VERSION, EXAMPLE, FEATURES, MODEL_NAME, STABLE_VERSION


def model_file(store: Path, version: str, name: str = "model.joblib") -> Path:
    return store / "models" / MODEL_NAME / version / name


def load_predictors(store: Path) -> dict[str, object]:
    """What the services predict with, in this process: the ONNX graphs of both versions, and v1.0.0's pipeline."""
    from penguin.predictor import ONNX_FILE, OnnxPredictor, SklearnPredictor

    classes = SklearnPredictor(model_file(store, STABLE_VERSION)).classes
    predictors = {
        v: OnnxPredictor(str(model_file(store, v, ONNX_FILE)), classes) for v in (STABLE_VERSION, CANDIDATE_VERSION)
    }
    predictors[f"sklearn {STABLE_VERSION}"] = SklearnPredictor(model_file(store, STABLE_VERSION))
    return predictors


def predict_floor(predictors: dict[str, object], sizes: list[int]) -> dict[str, dict[str, float]]:
    """Rows/s of predict_proba on ready request columns, one thread (OpenMP limited to 1), best of 5 timings.

    This times a function call in-process, not HTTP: it is the floor the served numbers are compared with.
    """
    from threadpoolctl import threadpool_limits

    out: dict[str, dict[str, float]] = {}
    with threadpool_limits(limits=1):
        for name, predictor in predictors.items():
            for n in sizes:
                columns = {f: [EXAMPLE[f]] * n for f in FEATURES}
                timer = timeit.Timer(lambda p=predictor, c=columns: p.predict_proba(c))
                once = min(timer.repeat(repeat=2, number=1))
                number = max(1, min(200, int(0.1 / max(once, 1e-6))))
                best = min(timer.repeat(repeat=5, number=number)) / number
                out.setdefault(name, {})[str(n)] = round(n / best, 1)
    return out


def served_parity(urls: dict[str, str], store: Path) -> dict[str, dict]:
    """Per version: the largest probability difference between the served answers and scikit-learn's, and the
    class mismatches, over every data row and the generated rows (penguin/parity.py)."""
    import joblib

    from penguin import parity

    data = parity.data_rows(ROOT / "data" / "data.csv")
    out = {}
    for version, url in urls.items():
        result = parity.served_parity(url, joblib.load(model_file(store, version)), data)
        out[version] = {
            k: result[k]
            for k in (
                "rows",
                "data_rows",
                "generated_rows",
                "max_abs_prob_diff",
                "class_mismatches",
                "predictions_disagree_with_probabilities",
                "versions",
                "ok",
            )
        }
        log(f"parity {version} at {url}: {parity.summary(result)}")
    return out
