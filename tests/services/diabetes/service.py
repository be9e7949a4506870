"""Diabetes progression regressor: a BentoML service that predicts a disease progression score one year ahead."""

from __future__ import annotations

import bentoml
from pydantic import BaseModel, Field


class Patient(BaseModel):
    """A patient's baseline measurements: the 10 columns of the diabetes data (Efron et al., 2004), unscaled."""

    age: float = Field(description="age in years", examples=[48])
    sex: float = Field(description="sex, coded 1 or 2", examples=[1])
    bmi: float = Field(description="body mass index", examples=[21.6])
    bp: float = Field(description="average blood pressure", examples=[87])
    s1: float = Field(description="tc, total serum cholesterol", examples=[183])
    s2: float = Field(description="ldl, low-density lipoproteins", examples=[103.2])
    s3: float = Field(description="hdl, high-density lipoproteins", examples=[70])
    s4: float = Field(description="tch, total cholesterol / HDL", examples=[3])
    s5: float = Field(description="ltg, log of serum triglycerides", examples=[3.8918])
    s6: float = Field(description="glu, blood sugar level", examples=[69])


@bentoml.service(name="diabetes_progression", traffic={"timeout": 10})
class DiabetesProgression:
    model_ref = bentoml.models.get("diabetes_regressor:latest")

    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model(self.model_ref)

    @bentoml.api
    def predict(self, input_data: Patient) -> dict:
        """The predicted disease progression one year after baseline (the data's target, 25 to 346)."""
        row = [list(input_data.model_dump().values())]
        return {"progression": float(self.model.predict(row)[0])}
