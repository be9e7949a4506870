"""What the service predicts with: the model's ONNX graph through onnxruntime (the default), or its pickled
scikit-learn pipeline (for comparison), or nothing at all (a constant, to measure the framework alone).

Every predictor takes the request as columns, {feature: [value per row]} with None for a missing value, and
returns the class probabilities as a float64 array [rows, classes] in the order of `classes`. Light on import:
onnxruntime, joblib and pandas load only in the predictor that needs them.
"""

from __future__ import annotations

import numpy as np

from penguin.features import CATEGORICAL, FEATURES

PIPELINE_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
MISSING_SENTINEL = ""  # a missing category in the graph's string inputs (a string tensor cannot hold a null)
RUNTIMES = ("onnx", "sklearn", "constant")

Columns = dict[str, list]


class OnnxPredictor:
    """The exported graph in onnxruntime, one thread: float64 throughout, scikit-learn's answers to ~1e-16."""

    def __init__(self, model: str | bytes, classes: list[str]) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One request's rows are few and the trees small: a second thread only adds hand-offs (and on a busy host,
        # spinning). Workers scale by process instead.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, i.type == "tensor(string)") for i in self.session.get_inputs()]
        self.classes = list(classes)

    def predict_proba(self, columns: Columns) -> np.ndarray:
        feeds = {}
        for name, text in self.inputs:
            values = columns[name]
            if text:
                values = [MISSING_SENTINEL if v is None else v for v in values]
                feeds[name] = np.array(values, dtype=object).reshape(-1, 1)
            else:
                feeds[name] = np.asarray(values, dtype=np.float64).reshape(-1, 1)  # None -> NaN; an array as it is
        return self.session.run(["probabilities"], feeds)[0]


class SklearnPredictor:
    """The pickled pipeline, as trained: the reference the ONNX graph is checked against."""

    def __init__(self, path: str) -> None:
        import joblib

        self.pipeline = joblib.load(path)
        self.classes = [str(c) for c in self.pipeline.classes_]

    def predict_proba(self, columns: Columns) -> np.ndarray:
        return self.pipeline.predict_proba(sklearn_frame(columns))


class ConstantPredictor:
    """No model: the same answer for every row. Only for bench/ (the framework's own cost, with nothing to compute)."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = list(classes)
        self.row = np.full((1, len(classes)), 1 / len(classes))

    def predict_proba(self, columns: Columns) -> np.ndarray:
        return np.broadcast_to(self.row, (len(columns[FEATURES[0]]), len(self.classes)))


def sklearn_frame(columns: Columns):
    """The pipeline's input as in training (read_csv): float64 measurements and categories, NaN where missing.

    A None left in a category column is not NaN to scikit-learn's imputer: it would reach the one-hot encoder as an
    unseen category (all zeros) instead of the "unknown" category the model learnt for a missing sex.
    """
    import pandas

    return pandas.DataFrame(
        {
            name: np.array([np.nan if v is None else v for v in columns[name]], dtype=object)
            if name in CATEGORICAL
            else np.array(columns[name], dtype=np.float64)
            for name in FEATURES
        }
    )


def load(runtime: str, model_path, classes: list[str]):
    """The predictor for `runtime`, reading the model's files from `model_path` (a function of a file name)."""
    if runtime == "onnx":
        return OnnxPredictor(model_path(ONNX_FILE), classes)
    if runtime == "sklearn":
        return SklearnPredictor(model_path(PIPELINE_FILE))
    if runtime == "constant":
        return ConstantPredictor(classes)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
