"""BENCHMARK BASELINE ONLY, not product code: a minimal FastAPI + uvicorn app serving penguin_classifier:v1.0.0.

It is what a small team would write by hand instead of BentoML: same model file, same request schema
(penguin.features.Penguin) and the same response fields, one uvicorn worker, no canary, no guards (errors are
FastAPI's 422, not the service's 400/413/415), no metrics. bench.run starts it, from the project folder, as

    BASELINE_MODEL_PATH=…/model.joblib python -m uvicorn bench.baseline_app:app --workers 1 --no-access-log

and compares our BentoML service and the whole canary path against it. Do not deploy it.
"""

from __future__ import annotations

import os
from typing import Annotated

import joblib
import pandas as pd
from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from penguin.features import FEATURES, MAX_INSTANCES, Penguin

MODEL_VERSION = os.environ.get("BASELINE_MODEL_VERSION", "v1.0.0")
pipeline = joblib.load(os.environ["BASELINE_MODEL_PATH"])
classes = [str(c) for c in pipeline.classes_]


class PredictRequest(BaseModel):
    instances: Annotated[list[Penguin], Field(min_length=1, max_length=MAX_INSTANCES)]


class Prediction(BaseModel):
    predictions: list[str]
    probabilities: list[dict[str, float]]
    model_version: str


app = FastAPI(title="baseline (benchmark only)")


@app.post("/predict")
def predict(body: PredictRequest, response: Response) -> Prediction:
    """The plain FastAPI way: a sync endpoint (FastAPI runs it in its thread pool), pandas in, predict_proba out."""
    frame = pd.DataFrame([row.model_dump() for row in body.instances], columns=list(FEATURES))
    proba = pipeline.predict_proba(frame)
    response.headers["X-Model-Version"] = MODEL_VERSION
    return Prediction(
        predictions=[classes[i] for i in proba.argmax(axis=1)],
        probabilities=[dict(zip(classes, map(float, p))) for p in proba],
        model_version=MODEL_VERSION,
    )


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "model_version": MODEL_VERSION}
