"""The penguin classifier as one BentoML service; which model version it serves is chosen at build/serve time.

bentoml serve --arg model_version=v1.1.0          # or MODEL_VERSION=v1.1.0 bentoml serve
MODEL_PATH=models/penguin_classifier-v1.1.0.bentomodel bentoml serve   # an exported archive
bentoml serve --arg runtime=sklearn                # the scikit-learn pipeline instead of its ONNX graph
bentoml build --version v1.1.0 --arg model_version=v1.1.0
"""

from __future__ import annotations

import os

# One OpenMP thread for the scikit-learn runtime (HistGradientBoosting predicts with OpenMP): the trees are tiny,
# a request's rows are few, and on a busy host a second spinning OpenMP thread per worker costs far more than it
# saves. Set before anything loads libgomp; an operator's own OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Literal  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, create_model  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from penguin import columnar, predictor, web  # noqa: E402
from penguin.archive import ArchiveError, import_archive  # noqa: E402
from penguin.features import (  # noqa: E402
    EXAMPLE,
    FEATURES,
    MAX_BODY_BYTES,
    MAX_COLUMN_ROWS,
    MAX_INSTANCES,
    MODEL_NAME,
    STABLE_VERSION,
    VERSION_PATTERN,
    Penguin,
)
from penguin.prediction_metrics import prediction_metrics  # noqa: E402


class Args(BaseModel):
    """Build/serve-time arguments (`--arg name=value`); the model version and archive also from the environment."""

    model_version: str | None = Field(
        default_factory=lambda: os.environ.get("MODEL_VERSION") or None,
        description="the version to serve (default: the stable one)",
    )
    model_path: str | None = Field(
        default_factory=lambda: os.environ.get("MODEL_PATH") or None,
        description="a .bentomodel archive to serve, imported into the model store if missing",
    )
    runtime: Literal["onnx", "sklearn", "constant"] = Field(
        "onnx", description="onnx: the exported graph; sklearn: the pipeline; constant: no model (bench floor)"
    )
    prediction_metrics: bool = Field(
        default_factory=lambda: os.environ.get("PREDICTION_METRICS", "true").lower() not in ("0", "false", "no"),
        description="export predicted classes and confidence on /metrics (false: only to measure their cost)",
    )


def model_version(args: Args) -> str:
    """The version to serve: the archive's (which an explicit version must not contradict), else the one asked."""
    if args.model_path is None:
        return args.model_version or STABLE_VERSION
    try:
        return import_archive(Path(args.model_path), MODEL_NAME, args.model_version)
    except ArchiveError as exc:
        raise bentoml.exceptions.BentoMLException(str(exc)) from None


def model_tag(version: str) -> str:
    """The store tag for a version, refusing (with the versions that exist) one the store does not hold."""
    found = sorted(str(m.tag.version) for m in bentoml.models.list(MODEL_NAME))
    if not re.fullmatch(VERSION_PATTERN, version) or version not in found:
        raise bentoml.exceptions.NotFound(
            f"model version {version!r} is not in the model store; versions found: {', '.join(found) or 'none'}"
            " (run `python train_model.py` or `bentoml models import models/*.bentomodel`)"
        )
    return f"{MODEL_NAME}:{version}"


ARGS = bentoml.use_arguments(Args)
MODEL_VERSION = model_version(ARGS)
MODEL_TAG = model_tag(MODEL_VERSION)
RUNTIME = ARGS.runtime


class Prediction(BaseModel):
    predictions: list[str] = Field(description="Predicted species, one per instance")
    probabilities: list[dict[str, float]] = Field(description="Class probabilities, one mapping per instance")
    model_version: str = Field(description="The model version that answered", examples=[MODEL_VERSION])


def _column(name: str) -> tuple[object, object]:
    """A feature's column in the columnar request: an array of the row form's values for it (same constraints)."""
    field = Penguin.model_fields[name]
    item = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return list[item], Field(
        ...,
        min_length=1,
        max_length=MAX_COLUMN_ROWS,
        examples=[[EXAMPLE[name]]],
        description=f"{field.description}: one value per row",
    )


FeatureColumns = create_model(
    "FeatureColumns",
    __config__=ConfigDict(extra="forbid", strict=True),
    __doc__="One array per feature, every array the same length (one value per row).",
    **{name: _column(name) for name in FEATURES},
)


class ColumnsRequest(bentoml.IODescriptor):
    """The columnar request, `{"columns": {feature: [value per row]}}`. Its schema documents the body; the body is
    parsed and checked by penguin/columnar.py with numpy, a column at a time, instead of a model per row."""

    model_config = ConfigDict(extra="forbid")
    columns: FeatureColumns = Field(description="The features as named columns, one value per row in each")

    @classmethod
    async def from_http_request(cls, request: Request, serde) -> ColumnsRequest:
        try:
            columns = columnar.parse(await request.body())
        except columnar.ColumnError as exc:
            # A ValidationError: BentoML answers it 400 and logs it (as one line) as it does the row form's.
            raise exc.validation_error(cls.__name__) from None
        return cls.model_construct(columns=columns)


class ColumnarPrediction(BaseModel):
    predictions: list[str] = Field(description="Predicted species, one per row")
    probabilities: dict[str, list[float]] = Field(
        description="Per class, its probability for each row, in the rows' order", examples=[{"Adelie": [0.98]}]
    )
    model_version: str = Field(description="The model version that answered", examples=[MODEL_VERSION])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model_version: str = Field(description="The model version this server answers with")


class Metadata(BaseModel):
    tag: str = Field(description="The model's tag in the BentoML model store")
    model_version: str
    runtime: str = Field(description="What predicts: onnx (the exported graph), sklearn (the pipeline) or constant")
    labels: dict[str, str]
    metadata: dict[str, Any] = Field(description="Training metadata: algorithm, features, metrics, ONNX parity")
    heads_with_bodies: bool = Field(
        description="Each answer's head leaves in the same write as its body (penguin/web.py)"
    )


async def health(request: Request) -> JSONResponse:
    """GET /health: the original design's plain liveness check."""
    return JSONResponse(Health(model_version=MODEL_VERSION).model_dump())


async def metadata(request: Request) -> JSONResponse:
    """GET /metadata: the served model's tag, labels and training metadata from the model store."""
    info = bentoml.models.get(MODEL_TAG).info
    answer = Metadata(
        tag=MODEL_TAG,
        model_version=MODEL_VERSION,
        runtime=RUNTIME,
        labels=info.labels,
        metadata=info.metadata,
        heads_with_bodies=web.heads_with_bodies(),
    )
    return JSONResponse(answer.model_dump())


async def openapi(request: Request) -> JSONResponse:
    """GET /docs.json: the service's contract as valid OpenAPI 3.1, /health and /metadata included."""
    extra = {"/health": (health.__doc__, Health), "/metadata": (metadata.__doc__, Metadata)}
    return JSONResponse(web.openapi_document(PenguinClassifier.openapi_spec.asdict(), MODEL_VERSION, extra))


routes = Starlette(routes=[Route("/health", health), Route("/metadata", metadata), Route("/docs.json", openapi)])


@bentoml.asgi_app(routes, path="/")
@bentoml.service(
    name="penguin_classifier",
    traffic={"timeout": 10},
    labels={"model_version": MODEL_VERSION},
    # No per-request access log line from the worker (~8% of its CPU per single-row request, see bench/):
    # in the canary stack nginx already logs every request as JSON with the version that answered.
    logging={"access": {"enabled": False}},
    # No OpenTelemetry span per prediction: no exporter is configured (sample rate 0), yet its middleware cost
    # ~40% of a single-row request's CPU (bench/). nginx gives every request an X-Request-ID. To trace /predict,
    # override tracing.excluded_urls in a BentoML configuration.
    tracing={"excluded_urls": ["/predict"]},
)
class PenguinClassifier:
    """Classifies Palmer penguins into Adelie, Chinstrap or Gentoo."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # onnxruntime (or joblib, pandas and scikit-learn) load here, in the worker that predicts, not at module
        # level: the `bentoml serve` supervisor also imports this module and never needs them (faster cold start).
        classes = self.model.info.metadata["classes"]
        try:
            self.predictor = predictor.load(RUNTIME, self.model.path_of, classes)
        except FileNotFoundError as exc:
            raise bentoml.exceptions.BentoMLException(
                f"{MODEL_TAG} lacks {Path(exc.filename or '').name or 'a file'} for runtime {RUNTIME!r}: retrain it"
                " with `python train_model.py --force` (or serve it with --arg runtime=sklearn)"
            ) from None
        self.classes = self.predictor.classes
        # What the model predicts, per row, on /metrics: the canary's quality gates compare blue's and green's.
        self.metrics = prediction_metrics(self.classes) if ARGS.prediction_metrics else None
        web.install_bad_input_log()
        # A response's head leaves with its body: a worker that dies mid-answer never leaves nginx a half answer it
        # cannot fail over.
        web.send_heads_with_bodies()
        # One prediction before the worker reports ready: the first request does not pay any lazy setup.
        self.predictor.predict_proba({name: [EXAMPLE[name]] for name in FEATURES})
        gc.freeze()  # the loaded model is long-lived: keep it out of the collector's way

    def predicted(self, proba: np.ndarray) -> list[str]:
        """Each row's class, counted in the prediction metrics (both forms)."""
        top = proba.argmax(axis=1)
        predictions = [self.classes[i] for i in top.tolist()]
        if self.metrics is not None:  # the canary's figures and quality gates
            self.metrics.record_rows(top, proba)
        return predictions

    @bentoml.api
    async def predict(
        self,
        instances: Annotated[list[Penguin], Field(min_length=1, max_length=MAX_INSTANCES, examples=[[EXAMPLE]])],
    ) -> Prediction:
        """Predict the species of one or more penguins, with class probabilities."""
        # async, on the event loop: an ONNX call takes tens of microseconds, less than a hand-off to a thread.
        # (The sklearn runtime's milliseconds block the loop meanwhile: acceptable for a comparison path.)
        columns = {name: [getattr(row, name) for row in instances] for name in FEATURES}
        proba = self.predictor.predict_proba(columns)
        predictions = self.predicted(proba)
        # The fields are built from the model's own output, already of the declared types: no re-validation.
        return Prediction.model_construct(
            predictions=predictions,
            probabilities=[dict(zip(self.classes, p)) for p in proba.tolist()],
            model_version=MODEL_VERSION,
        )

    @bentoml.api(input_spec=ColumnsRequest, output_spec=ColumnarPrediction)
    async def predict_columns(self, columns: dict) -> Response:
        """Predict the species of many penguins sent as columns, answered column-wise: the form for tables.

        The same model, answers and rules as /predict, at the model's speed: `{"columns": {"island": [...], ...}}`
        in, `{"predictions": [...], "probabilities": {"Adelie": [...], ...}, "model_version": ...}` out.
        """
        if not isinstance(columns, columnar.Columns):  # called in-process, not through HTTP: check it here
            try:
                columns = columnar.check({"columns": columns})
            except columnar.ColumnError as exc:
                raise exc.validation_error() from None
        proba = self.predictor.predict_proba(columns)
        predictions = self.predicted(proba)
        return Response(columnar.answer(predictions, self.classes, proba, MODEL_VERSION), media_type="application/json")


# BentoML looks up an API function's signature on every request (APIMethod.__get__ calls inspect.signature); a
# function that carries its own __signature__ is answered at once (~15 us less per request, either endpoint).
for _api in PenguinClassifier.apis.values():
    _api.func.__signature__ = inspect.signature(_api.func)

# The first middleware added is the outermost: the version header also lands on the guard's refusals.
PenguinClassifier.add_asgi_middleware(web.VersionHeader, version=MODEL_VERSION)
PenguinClassifier.add_asgi_middleware(
    web.JsonBodyGuard, max_bytes=MAX_BODY_BYTES, hint=f"; send at most {MAX_INSTANCES} rows"
)
