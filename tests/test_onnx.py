"""The ONNX graph saved next to each pipeline: scikit-learn's answers to 1e-6 on every data row and the generated
rows, float64 throughout, and a graph that is not exact is refused at training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from penguin import parity
from penguin.features import CANDIDATE_VERSION, MODEL_NAME, NUMERIC, STABLE_VERSION
from penguin.predictor import ONNX_FILE, PIPELINE_FILE, OnnxPredictor, SklearnPredictor

DATA = ROOT / "data" / "data.csv"


@pytest.fixture(scope="module")
def models(trained):
    import bentoml

    return {v: bentoml.models.get(f"{MODEL_NAME}:{v}") for v in (STABLE_VERSION, CANDIDATE_VERSION)}


@pytest.fixture(scope="module")
def data():
    return parity.data_rows(DATA)


def test_each_version_stores_its_graph_and_parity_figures(models):
    for version, model in models.items():
        assert Path(model.path_of(ONNX_FILE)).is_file() and Path(model.path_of(PIPELINE_FILE)).is_file()
        figures = model.info.metadata["onnx"]["parity"]
        print(
            f"\n{version}: {parity.summary(figures)} "
            f"(data {figures['data_rows']}, generated {figures['generated_rows']})"
        )
        assert figures["data_rows"] == 344 and figures["generated_rows"] >= 10_000, figures
        assert figures["max_abs_prob_diff"] <= 1e-6 and figures["class_mismatches"] == 0, figures
        assert model.info.metadata["library_versions"]["onnxruntime"], model.info.metadata["library_versions"]


def test_graph_answers_like_the_pipeline(models, data):
    """Checked again here, independently of the figures training stored."""
    for version, model in models.items():
        sklearn = SklearnPredictor(model.path_of(PIPELINE_FILE))
        rows = data + parity.generated_rows(sklearn.pipeline, data)
        columns = parity.columns_of(rows)
        got = OnnxPredictor(model.path_of(ONNX_FILE), sklearn.classes).predict_proba(columns)
        result = parity.compare(parity.reference(sklearn.pipeline, rows), got, sklearn.classes)
        print(f"\n{version}: {parity.summary(result)}")
        assert result["ok"], result
        assert got.dtype == np.float64


def test_graph_is_float64_with_double_tree_thresholds(models):
    import onnx

    for version, model in models.items():
        graph = onnx.load(model.path_of(ONNX_FILE))
        kinds = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
        assert all(kinds[f] == onnx.TensorProto.DOUBLE for f in NUMERIC if f in kinds), kinds
        outputs = {o.name: o.type.tensor_type.elem_type for o in graph.graph.output}
        assert outputs["probabilities"] == onnx.TensorProto.DOUBLE, outputs
        ops = {n.op_type for n in graph.graph.node}
        assert "TreeEnsembleClassifier" not in ops and "Imputer" not in ops, ops  # float32 answers, no float64 kernel
        if version == CANDIDATE_VERSION:
            ensemble = next(n for n in graph.graph.node if n.op_type == "TreeEnsemble")
            splits = next(a for a in ensemble.attribute if a.name == "nodes_splits")
            assert splits.t.data_type == onnx.TensorProto.DOUBLE


def test_generated_rows_hold_nulls_grid_values_and_every_split(models, data):
    pipeline = SklearnPredictor(models[CANDIDATE_VERSION].path_of(PIPELINE_FILE)).pipeline
    rows = parity.generated_rows(pipeline, data)
    splits = parity.split_points(pipeline)
    print(f"\n{len(rows)} generated rows, {len(splits)} numeric splits")
    assert len(rows) >= 10_000 and len(splits) > 20
    for name in (*NUMERIC, "sex"):
        assert any(r[name] is None for r in rows), name
    grid = [r for r in rows[: parity.GENERATED]]
    for name in NUMERIC:
        values = [r[name] for r in grid if r[name] is not None]
        assert all(parity.on_grid(v, parity.GRID[name]) == v for v in values), name
    asked = {(name, r[name]) for r in rows for name in NUMERIC}
    assert all((name, value) in asked for name, value in splits if value > 0)


def test_every_data_value_lies_on_the_grid(data):
    for name in NUMERIC:
        off = [r[name] for r in data if r[name] is not None and parity.on_grid(r[name], parity.GRID[name]) != r[name]]
        assert not off, (name, off[:5])


def test_training_refuses_a_graph_that_rounds_inputs_to_float32(trained, data, monkeypatch):
    """float32 inputs move rows that sit on a split to the other branch: the gate must stop such a graph."""
    import onnx
    from sklearn.model_selection import train_test_split

    import train_model
    from penguin import onnx_export
    from penguin.recipes import RECIPES

    exact = onnx_export.to_onnx

    def float32_inputs(pipeline, features):
        model = onnx.load_from_string(exact(pipeline, features))
        casts = []
        for name in [i.name for i in model.graph.input if i.name in NUMERIC]:
            for node in model.graph.node:
                node.input[:] = [f"{name}_f32d" if x == name else x for x in node.input]
            casts += [
                onnx.helper.make_node("Cast", [name], [f"{name}_f32"], to=onnx.TensorProto.FLOAT),
                onnx.helper.make_node("Cast", [f"{name}_f32"], [f"{name}_f32d"], to=onnx.TensorProto.DOUBLE),
            ]
        nodes = casts + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return model.SerializeToString()

    monkeypatch.setattr(onnx_export, "to_onnx", float32_inputs)
    X, y, _ = train_model.load_data()
    split = train_test_split(X, y, test_size=train_model.HOLDOUT, stratify=y, random_state=train_model.SEED)
    with pytest.raises(train_model.Refused, match="answers differently") as refused:
        train_model.train_version(CANDIDATE_VERSION, RECIPES[CANDIDATE_VERSION], split, data)
    print(f"\n{refused.value}")


def test_export_refuses_a_float32_step(monkeypatch):
    """skl2onnx's own OneHotEncoder answers float32: on the categories alone the model would compute in float32
    (5.7e-08 off, within the parity tolerance). Both guards refuse it: the classifier's input, any float32 value."""
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from skl2onnx.operator_converters.one_hot_encoder import convert_sklearn_one_hot_encoder
    from skl2onnx.shape_calculators.one_hot_encoder import calculate_sklearn_one_hot_encoder_output_shapes
    from sklearn.model_selection import train_test_split

    import train_model
    from penguin import onnx_export
    from penguin.recipes import recipe_for

    X, y, _ = train_model.load_data()
    X_train, _, y_train, _ = train_test_split(
        X, y, test_size=train_model.HOLDOUT, stratify=y, random_state=train_model.SEED
    )
    recipe = recipe_for("v9.9.9", "logistic_regression", {}, ("island",))
    pipeline = recipe.pipeline().fit(X_train, y_train)
    onnx_export.to_onnx(pipeline, recipe.features)  # exact with the project's converters
    monkeypatch.setattr(onnx_export, "convert_one_hot", convert_sklearn_one_hot_encoder)
    monkeypatch.setattr(onnx_export, "one_hot_shape", calculate_sklearn_one_hot_encoder_output_shapes)
    with pytest.raises(onnx_export.NotExportable, match="FloatTensorType features, not float64") as refused:
        onnx_export.to_onnx(pipeline, recipe.features)
    print(f"\n{refused.value}")
    monkeypatch.setattr(onnx_export, "float64_probabilities", calculate_linear_classifier_output_shapes)
    with pytest.raises(onnx_export.NotExportable, match="values in float32, not float64") as refused:
        onnx_export.to_onnx(pipeline, recipe.features)
    print(f"{refused.value}")
