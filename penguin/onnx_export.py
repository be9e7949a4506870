"""The fitted scikit-learn pipeline as an exact ONNX graph, computed in float64 from input to probabilities.

skl2onnx converts the pipeline; four converters are replaced so that the graph gives scikit-learn's answers to
float rounding (about 1e-16), not float32's (float32 inputs move v1.1.0's probabilities by up to 0.2 on rows that
sit on a tree's split, see tests/test_onnx.py):

- SimpleImputer: onnxruntime's `Imputer` has no float64 kernel, and a string tensor cannot hold a null. Measurements
  are imputed with IsNaN + Where; a missing category arrives as MISSING_SENTINEL and is replaced the same way.
- OneHotEncoder: onnxruntime's `OneHotEncoder` answers float32 only. skl2onnx casts it to float64 where the
  measurements join it, but a model on categories alone got float32 features: float32 weights and softmax in a
  logistic regression (5.7e-08 off), float inputs against double thresholds in the trees (an invalid graph). Here
  each category column is compared with its categories (Equal) and cast to float64 (0 and 1, exact).
- HistGradientBoostingClassifier and RandomForestClassifier: skl2onnx writes `TreeEnsembleClassifier`, whose
  probabilities are float32 whatever the input. Here the trees go into ai.onnx.ml opset 5's `TreeEnsemble`, which
  keeps thresholds, leaf values and sums in float64; the link (softmax, or the forest's average) follows in float64.
  A forest compares float32 inputs as scikit-learn does (Cast to float32 and back before the trees).

Training only (imports skl2onnx): the service reads the saved graph with onnxruntime alone.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto
from onnx.numpy_helper import from_array
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from penguin.features import CATEGORICAL, NUMERIC
from penguin.predictor import MISSING_SENTINEL  # a null category in the graph's string inputs (the schema forbids "")

OPSET = {"": 21, "ai.onnx.ml": 3}  # what skl2onnx converts to; a graph with TreeEnsemble is raised to ml opset 5
TREE_ENSEMBLE_OPSET = 5  # TreeEnsemble, float64 throughout (skl2onnx 1.20 refuses to write ml opsets above 3)
BRANCH_LEQ = 0  # TreeEnsemble node mode: go to the true branch when x <= split (scikit-learn's rule)
FLOAT32_ROUNDING = "x_float32"  # the one float32 value allowed: a forest's inputs rounded as scikit-learn's trees do


def input_types(features: tuple[str, ...]) -> list[tuple[str, object]]:
    """One [N, 1] graph input per feature the model uses: float64 measurements (NaN = missing), string categories."""
    return [(f, DoubleTensorType([None, 1])) for f in NUMERIC if f in features] + [
        (f, StringTensorType([None, 1])) for f in CATEGORICAL if f in features
    ]


class NotExportable(Exception):
    """The pipeline has no exact float64 graph here (an estimator option the converters do not handle): one line."""


def to_onnx(pipeline, features: tuple[str, ...]) -> bytes:
    """The fitted pipeline as a serialized ONNX model with outputs `label` [N] and `probabilities` [N, classes].

    NotExportable if a converter cannot write it exactly, if the graph is invalid, or if any value in it is float32
    (but the forest's deliberate rounding): every recipe is float64 end to end or is not saved.
    """
    try:
        model = convert_sklearn(
            pipeline,
            initial_types=input_types(features),
            target_opset=OPSET,
            options={id(pipeline.steps[-1][1]): {"zipmap": False}},
            custom_conversion_functions={
                SimpleImputer: convert_imputer,
                OneHotEncoder: convert_one_hot,
                HistGradientBoostingClassifier: convert_trees,
                RandomForestClassifier: convert_trees,
            },
            custom_shape_calculators={
                SimpleImputer: calculate_sklearn_imputer_output_shapes,
                OneHotEncoder: one_hot_shape,
                LogisticRegression: float64_probabilities,
                HistGradientBoostingClassifier: float64_probabilities,
                RandomForestClassifier: float64_probabilities,
            },
        )
        if any(node.op_type == "TreeEnsemble" for node in model.graph.node):
            for opset in model.opset_import:  # the other ai.onnx.ml operators used are unchanged from 3 to 5
                if opset.domain == "ai.onnx.ml":
                    opset.version = TREE_ENSEMBLE_OPSET
        onnx.checker.check_model(model, full_check=True)
    except (NotImplementedError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise NotExportable(str(exc).strip().splitlines()[0]) from None
    narrow = float32_values(model)
    if narrow:
        raise NotExportable(f"the graph computes {len(narrow)} values in float32, not float64: {', '.join(narrow[:3])}")
    return model.SerializeToString()


def float32_values(model: onnx.ModelProto) -> list[str]:
    """The graph's float32 tensors (inputs, constants, intermediate values, outputs), but the forest's rounding."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    typed = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    names = [v.name for v in typed if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    names += [t.name for t in inferred.graph.initializer if t.data_type == TensorProto.FLOAT]
    names += [
        f"{n.op_type}.{a.name}"
        for n in inferred.graph.node
        for a in n.attribute
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT
    ]
    return [name for name in names if not name.startswith(FLOAT32_ROUNDING)]


def float64_probabilities(operator) -> None:
    """The classifier's probabilities are float64, as its float64 features (skl2onnx declares them at parsing, from
    the graph's first input: float32 for a model on categories alone, and always for its TreeEnsembleClassifier)."""
    if not isinstance(operator.inputs[0].type, DoubleTensorType):
        raise NotImplementedError(f"the classifier gets {type(operator.inputs[0].type).__name__} features, not float64")
    calculate_linear_classifier_output_shapes(operator)
    operator.outputs[1].type = DoubleTensorType(operator.outputs[1].type.shape)


def one_hot_shape(operator) -> None:
    """One float64 column per category of every encoded column."""
    width = sum(len(c) for c in operator.raw_operator.categories_)
    operator.outputs[0].type = DoubleTensorType([operator.inputs[0].get_first_dimension(), width])


def convert_one_hot(scope, operator, container) -> None:
    """OneHotEncoder(handle_unknown="ignore") on strings, in float64: Cast(Equal(column, categories)) per column."""
    encoder = operator.raw_operator
    if encoder.drop_idx_ is not None or getattr(encoder, "_infrequent_enabled", False):
        raise NotImplementedError("only OneHotEncoder(drop=None) without infrequent categories is exported")
    columns = [(x.full_name, i) for x in operator.inputs for i in range(x.type.shape[1])]
    strings = all(isinstance(x.type, StringTensorType) for x in operator.inputs)
    if not strings or len(columns) != len(encoder.categories_):
        raise NotImplementedError("only string inputs with one column per category set are one-hot encoded")
    name, op = scope.get_unique_variable_name, scope.get_unique_operator_name
    parts = []
    for (x, i), categories in zip(columns, encoder.categories_):
        index, column, known, hot = name("column_index"), name("column"), name("categories"), name("is_category")
        container.add_initializer(index, TensorProto.INT64, [1], [i])
        container.add_node("Gather", [x, index], column, axis=1, name=op("Gather"))  # [N, 1]
        container.add_initializer(known, TensorProto.STRING, [len(categories)], [str(c).encode() for c in categories])
        container.add_node("Equal", [column, known], hot, name=op("Equal"))  # [N, categories]; unknown: all False
        parts.append(name("one_hot"))
        container.add_node("Cast", [hot], parts[-1], to=TensorProto.DOUBLE, name=op("Cast"))
    container.add_node("Concat", parts, operator.outputs[0].full_name, axis=1, name=op("Concat"))


def convert_imputer(scope, operator, container) -> None:
    """SimpleImputer in float64 (IsNaN) or on strings (== MISSING_SENTINEL): Where(missing, statistics, x)."""
    (x,) = operator.inputs
    imputer = operator.raw_operator
    missing_values = imputer.missing_values
    if imputer.add_indicator or not (isinstance(missing_values, float) and math.isnan(missing_values)):
        raise NotImplementedError("only SimpleImputer(missing_values=nan, add_indicator=False) is exported")
    fill, missing = scope.get_unique_variable_name("fill"), scope.get_unique_variable_name("missing")
    statistics = imputer.statistics_
    if isinstance(x.type, StringTensorType):
        container.add_initializer(fill, TensorProto.STRING, [len(statistics)], [str(s).encode() for s in statistics])
        sentinel = scope.get_unique_variable_name("sentinel")
        container.add_initializer(sentinel, TensorProto.STRING, [], [MISSING_SENTINEL.encode()])
        container.add_node("Equal", [x.full_name, sentinel], missing, name=scope.get_unique_operator_name("Equal"))
    else:
        container.add_initializer(fill, TensorProto.DOUBLE, [len(statistics)], statistics.astype(np.float64).tolist())
        container.add_node("IsNaN", [x.full_name], missing, name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where",
        [missing, fill, x.full_name],
        operator.outputs[0].full_name,
        name=scope.get_unique_operator_name("Where"),
    )


def hist_gradient_boosting_trees(model) -> list[tuple[int, dict]]:
    """(class index, tree) for every tree: split on `x <= threshold`, NaN to the side scikit-learn learnt."""
    if model.n_trees_per_iteration_ < 2:
        raise NotImplementedError("only multi-class HistGradientBoostingClassifier is exported (3 species)")
    trees = []
    for per_class in model._predictors:
        for k, predictor in enumerate(per_class):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise NotImplementedError("native categorical splits are not exported (the pipeline one-hot encodes)")
            trees.append(
                (
                    k,
                    {
                        "feature": nodes["feature_idx"],
                        "threshold": nodes["num_threshold"],
                        "left": nodes["left"],
                        "right": nodes["right"],
                        "is_leaf": nodes["is_leaf"].astype(bool),
                        "missing_left": nodes["missing_go_to_left"],
                        "value": nodes["value"],
                    },
                )
            )
    return trees


def forest_trees(model) -> list[tuple[int, dict]]:
    """Each forest tree once per class (a TreeEnsemble leaf feeds one target), with that class's leaf fraction."""
    trees = []
    for estimator in model.estimators_:
        t = estimator.tree_
        is_leaf = t.children_left == -1
        missing = getattr(t, "missing_go_to_left", np.zeros(t.node_count, dtype=np.uint8))
        for k in range(len(model.classes_)):
            trees.append(
                (
                    k,
                    {
                        "feature": t.feature,
                        "threshold": t.threshold,
                        "left": t.children_left,
                        "right": t.children_right,
                        "is_leaf": is_leaf,
                        "missing_left": missing,
                        "value": t.value[:, 0, k],
                    },
                )
            )
    return trees


def tree_ensemble_attributes(trees: list[tuple[int, dict]], n_targets: int) -> dict:
    """ai.onnx.ml 5 `TreeEnsemble` attributes (sum of leaf values per target), thresholds and leaves in float64."""
    a = {
        k: []
        for k in (
            "tree_roots",
            "nodes_featureids",
            "nodes_splits",
            "nodes_truenodeids",
            "nodes_trueleafs",
            "nodes_falsenodeids",
            "nodes_falseleafs",
            "nodes_missing_value_tracks_true",
            "leaf_targetids",
            "leaf_weights",
        )
    }
    for target, tree in trees:
        ids = {}
        for i, leaf in enumerate(tree["is_leaf"]):  # number the leaves and the branch nodes of this tree
            if leaf:
                ids[i] = len(a["leaf_weights"])
                a["leaf_targetids"].append(target)
                a["leaf_weights"].append(float(tree["value"][i]))
            else:
                ids[i] = len(a["nodes_featureids"])
                a["nodes_featureids"].append(int(tree["feature"][i]))
                a["nodes_splits"].append(float(tree["threshold"][i]))
                a["nodes_missing_value_tracks_true"].append(int(tree["missing_left"][i]))
                for side in ("true", "false"):
                    a[f"nodes_{side}nodeids"].append(None)
                    a[f"nodes_{side}leafs"].append(None)
        for i, leaf in enumerate(tree["is_leaf"]):
            if not leaf:
                for side, child in (("true", int(tree["left"][i])), ("false", int(tree["right"][i]))):
                    a[f"nodes_{side}nodeids"][ids[i]] = ids[child]
                    a[f"nodes_{side}leafs"][ids[i]] = int(bool(tree["is_leaf"][child]))
        if tree["is_leaf"][0]:  # a tree that is one leaf: a branch whose both sides reach it
            a["nodes_featureids"].append(0)
            a["nodes_splits"].append(0.0)
            a["nodes_missing_value_tracks_true"].append(0)
            for side in ("true", "false"):
                a[f"nodes_{side}nodeids"].append(ids[0])
                a[f"nodes_{side}leafs"].append(1)
            a["tree_roots"].append(len(a["nodes_featureids"]) - 1)
        else:
            a["tree_roots"].append(ids[0])
    count = len(a["nodes_featureids"])
    a["nodes_modes"] = from_array(np.full(count, BRANCH_LEQ, dtype=np.uint8), "nodes_modes")
    a["nodes_splits"] = from_array(np.array(a["nodes_splits"], dtype=np.float64), "nodes_splits")
    a["leaf_weights"] = from_array(np.array(a["leaf_weights"], dtype=np.float64), "leaf_weights")
    return {**a, "n_targets": n_targets, "aggregate_function": 1, "post_transform": 0}  # SUM, no transform


def convert_trees(scope, operator, container) -> None:
    """A tree-ensemble classifier: TreeEnsemble sums in float64, then softmax (boosting) or the mean (forest)."""
    model = operator.raw_operator
    classes = [str(c) for c in model.classes_]
    x = operator.inputs[0].full_name
    name = scope.get_unique_variable_name
    forest = isinstance(model, RandomForestClassifier)
    if forest:  # scikit-learn's trees compare float32 values: round the same way before the float64 splits
        as_float, back = name(FLOAT32_ROUNDING), name("x_rounded")
        container.add_node("Cast", [x], as_float, to=TensorProto.FLOAT, name=scope.get_unique_operator_name("Cast"))
        container.add_node("Cast", [as_float], back, to=TensorProto.DOUBLE, name=scope.get_unique_operator_name("Cast"))
        x = back
    trees = forest_trees(model) if forest else hist_gradient_boosting_trees(model)
    summed = name("tree_sums")
    container.add_node(
        "TreeEnsemble",
        [x],
        summed,
        op_domain="ai.onnx.ml",
        op_version=3,
        name=scope.get_unique_operator_name("TreeEnsemble"),
        **tree_ensemble_attributes(trees, len(classes)),
    )
    proba = operator.outputs[1].full_name
    if forest:
        count = name("n_trees")
        container.add_initializer(count, TensorProto.DOUBLE, [], [float(len(model.estimators_))])
        container.add_node("Div", [summed, count], proba, name=scope.get_unique_operator_name("Div"))
    else:
        baseline, raw = name("baseline"), name("raw_predictions")
        container.add_initializer(
            baseline,
            TensorProto.DOUBLE,
            [1, len(classes)],
            model._baseline_prediction.astype(np.float64).ravel().tolist(),
        )
        container.add_node("Add", [summed, baseline], raw, name=scope.get_unique_operator_name("Add"))
        container.add_node("Softmax", [raw], proba, axis=1, name=scope.get_unique_operator_name("Softmax"))
    index, labels = name("best"), name("class_labels")
    container.add_initializer(labels, TensorProto.STRING, [len(classes)], [c.encode() for c in classes])
    container.add_node("ArgMax", [proba], index, axis=1, keepdims=0, name=scope.get_unique_operator_name("ArgMax"))
    container.add_node(
        "Gather", [labels, index], operator.outputs[0].full_name, name=scope.get_unique_operator_name("Gather")
    )
