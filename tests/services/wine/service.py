"""Wine cultivar classifier: a BentoML service that tells which of three cultivars each wine comes from."""

from __future__ import annotations

from typing import Annotated

import bentoml
import joblib
import numpy as np
from pydantic import BaseModel, Field


class Wine(BaseModel):
    """One wine's chemical analysis: the 13 columns of the UCI wine data, in their order."""

    alcohol: float = Field(examples=[13.2])
    malic_acid: float = Field(examples=[1.78])
    ash: float = Field(examples=[2.14])
    alcalinity_of_ash: float = Field(examples=[11.2])
    magnesium: float = Field(examples=[100.0])
    total_phenols: float = Field(examples=[2.65])
    flavanoids: float = Field(examples=[2.76])
    nonflavanoid_phenols: float = Field(examples=[0.26])
    proanthocyanins: float = Field(examples=[1.28])
    color_intensity: float = Field(examples=[4.38])
    hue: float = Field(examples=[1.05])
    od280_od315_of_diluted_wines: float = Field(examples=[3.4])
    proline: float = Field(examples=[1050.0])


FEATURES = list(Wine.model_fields)


@bentoml.service(name="wine_cultivar", traffic={"timeout": 10})
class WineCultivar:
    bento_model = bentoml.models.BentoModel("wine_classifier:latest")

    def __init__(self) -> None:
        self.model = joblib.load(self.bento_model.path_of("model.pkl"))

    @bentoml.api
    def classify(self, wines: Annotated[list[Wine], Field(min_length=1, max_length=1000)]) -> dict:
        """The cultivar of each wine (`labels`) and each class's probability (`scores`, in the classes' order)."""
        x = np.array([[getattr(wine, name) for name in FEATURES] for wine in wines])
        scores = self.model.predict_proba(x)
        labels = self.model.classes_[scores.argmax(axis=1)]
        return {"labels": labels.tolist(), "scores": scores.tolist()}
