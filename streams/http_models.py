"""The HTTP gateway's request and response bodies: Jina's Classifier API schema.

These types describe the API (``/openapi.json``) and reject malformed JSON with a 422;
the meaning of a body (limits, labels vs classifier_id, ...) is checked by the same
parsers the workers use (``streams/records.py``), so HTTP and Kafka agree. Unknown fields
are ignored, as Jina does (its own curl example sends ``"action": "list"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Item(_Body):
    """An input item: text or an image, never both (the other field would be dropped)."""

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "text" in data and "image" in data:
            raise ValueError("an item has 'text' or 'image', not both")
        return data


class TextDoc(_Item):
    text: str = Field(description="Text to classify.")


class ImageDoc(_Item):
    image: str = Field(description="An image: https URL, base64, or a data: URI.")


class TextTrainingItem(_Item):
    text: str
    label: str


class ImageTrainingItem(_Item):
    image: str
    label: str


InputItem = str | TextDoc | ImageDoc
TrainingItem = TextTrainingItem | ImageTrainingItem
Labels = list[str] | dict[str, list[str]]


class ClassifyBody(_Body):
    """Zero-shot (``model`` + ``labels``) or few-shot (``classifier_id``)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "model": "jina-embeddings-v3",
                "labels": ["Simple task", "Complex reasoning", "Creative writing"],
                "input": ["Calculate the compound interest on $10,000 at 5% for 5 years."],
            }
        },
    )

    input: InputItem | list[InputItem] = Field(
        description="What to classify: a string, {text}, {image}, or a list of up to 1,024."
    )
    model: str | None = Field(
        None, description="Embedding model name (zero-shot); default: the default text model."
    )
    labels: Labels | None = Field(
        None,
        description="Candidate labels (up to 256), or up to 8 groups of up to 64 labels.",
    )
    classifier_id: str | None = Field(None, description="A trained classifier (few-shot).")


class TrainBody(_Body):
    """Create a classifier (no ``classifier_id``; needs ``model``) or update one."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "model": "jina-embeddings-v3",
                "access": "private",
                "input": [
                    {"text": "I cant log into my account after the update.", "label": "team1"},
                    {"text": "My subscription renewal failed.", "label": "team2"},
                ],
                "num_iters": 10,
            }
        },
    )

    input: TrainingItem | list[TrainingItem] = Field(
        description="Labelled examples ({text, label} or {image, label}), up to 1,024."
    )
    classifier_id: str | None = Field(None, description="The classifier to update.")
    model: str | None = Field(None, description="Embedding model (needed to create).")
    access: Literal["private", "public"] | None = Field(
        None, description="private (default): owner only; public: anyone may classify."
    )
    num_iters: int | None = Field(
        10,
        ge=1,
        le=1000,
        strict=True,
        description="Passes per example (an integer; null: 10, as on the train topic).",
    )


class Usage(BaseModel):
    total_tokens: int
    prompt_tokens: int | None = None


class PredictionLabel(BaseModel):
    label: str
    score: float


class ClassificationPrediction(BaseModel):
    object: str = "classification"
    index: int
    prediction: str | dict[str, str]
    score: float | dict[str, float]
    predictions: list[PredictionLabel] | dict[str, list[PredictionLabel]]


class ClassificationResponse(BaseModel):
    data: list[ClassificationPrediction]
    usage: Usage
    request_id: str | None = None
    classifier_id: str | None = Field(None, description="Few-shot: the classifier used.")
    version: int | None = Field(None, description="Few-shot: the classifier version used.")


class TrainingResponse(BaseModel):
    classifier_id: str
    num_samples: int
    usage: Usage
    version: int | None = Field(None, description="The classifier version after this update.")
    request_id: str | None = None
    labels: list[str] | None = None
    prequential_accuracy: float | None = Field(
        None, description="Accuracy on the last examples, each predicted before it was learned."
    )


class ClassifierSummary(BaseModel):
    classifier_id: str
    user_id: str = Field(description="The owner id (a hash of the API key, shortened).")
    model: str
    labels: list[str]
    access: str
    updated_number: int = Field(description="Train requests applied (the version).")
    used_number: int = Field(
        description="Few-shot classify requests answered with it (reported by workers every "
        "SHOTSTREAM_USAGE_FLUSH_S, 10 s)."
    )
    num_samples: int = Field(description="Examples learned.")
    created_at: str
    updated_at: str
    used_at: str | None = None
    is_active: bool = True
    is_latest: bool = True
    prequential_accuracy: float | None = None


class DeleteResponse(BaseModel):
    classifier_id: str
    deleted: bool
    request_id: str | None = None


class ErrorBody(BaseModel):
    """Every error: what went wrong, its code, and the request it belongs to."""

    detail: str
    code: str
    request_id: str


class FieldError(BaseModel):
    field: str = Field(description="Where, e.g. body.input.1.text")
    message: str
    type: str
    input: Any = Field(None, description="The value at fault, when it is short")


class ValidationErrorBody(ErrorBody):
    """A 422: the body does not match the schema."""

    errors: list[FieldError]
