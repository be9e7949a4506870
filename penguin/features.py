"""The model's input: one penguin, its named features and the limits a request must respect.

Shared by `train_model.py` (which columns to learn from) and `service.py` (the request schema), so the two
can never disagree. Kept free of heavy imports: the Bento ships this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_NAME = "penguin_classifier"
STABLE_VERSION = "v1.0.0"
CANDIDATE_VERSION = "v1.1.0"
VERSION_PATTERN = r"v\d+\.\d+\.\d+"  # a model version: vMAJOR.MINOR.PATCH
TARGET = "target"
# Per request, for each form: at most so many rows (more is refused with 400 naming the limit) and at most
# MAX_BODY_BYTES of body (413, the same in the service and in nginx's client_max_body_size). The largest request of
# either form fits in the byte limit with room to spare (tests/test_columnar.py: 1,000 rows of 17-digit numbers take
# ~190 KB as row objects, ~100 KB as columns). The columnar form takes no more rows than the row form.
MAX_INSTANCES = 1000  # rows per /predict request (row objects)
MAX_COLUMN_ROWS = 1000  # rows per /predict_columns request (columns)
MAX_BODY_BYTES = 1024 * 1024  # request body limit, the same in the service (413) and in nginx (client_max_body_size)

Island = Literal["Biscoe", "Dream", "Torgersen"]
Sex = Literal["female", "male"]


def _measure(description: str, example: float) -> object:
    """A body measurement: a finite positive number, or null when it was not recorded (the model imputes it)."""
    return Field(..., gt=0, allow_inf_nan=False, description=description, examples=[example])


class Penguin(BaseModel):
    """One penguin to classify. Every feature must be present; a measurement may be null if unknown."""

    model_config = ConfigDict(extra="forbid", strict=True)

    island: Island = Field(..., description="Island in the Palmer Archipelago", examples=["Biscoe"])
    bill_length_mm: float | None = _measure("Bill (culmen) length in millimetres", 39.1)
    bill_depth_mm: float | None = _measure("Bill (culmen) depth in millimetres", 18.7)
    flipper_length_mm: float | None = _measure("Flipper length in millimetres", 181.0)
    body_mass_g: float | None = _measure("Body mass in grams", 3750.0)
    sex: Sex | None = Field(..., description="female, male, or null if unknown", examples=["male"])


FEATURES: tuple[str, ...] = tuple(Penguin.model_fields)
CATEGORICAL: tuple[str, ...] = ("island", "sex")
NUMERIC: tuple[str, ...] = tuple(f for f in FEATURES if f not in CATEGORICAL)

EXAMPLE = {
    "island": "Torgersen",
    "bill_length_mm": 39.1,
    "bill_depth_mm": 18.7,
    "flipper_length_mm": 181.0,
    "body_mass_g": 3750.0,
    "sex": "male",
}
