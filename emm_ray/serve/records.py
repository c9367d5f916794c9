"""Raw request records: their pydantic models (built from the feature schema) and encoding.

The request model is generated from the schema the served model was trained on, so the
OpenAPI document lists every feature with its type, and FastAPI rejects a missing
feature, a wrong type or a non-finite number with a 422 whose `loc` names the record
index and the field. Values are then encoded with the schema's own vocabularies and
scalers (`RecordEncoder`, which tests hold equal to `FeatureSchema.encode`), exactly as
training data was.

Types accepted per field: a dense feature takes a JSON number (not a numeric string,
not a boolean, not NaN/Infinity); a categorical takes a string or an integer (integers
are matched as their decimal text, the form the vocabularies store). Keys that are not
features (an id, a label) are ignored, so rows copied from the dataset can be sent as
they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from emm_ray.data.schema import OOV_INDEX, FeatureSchema


def _category(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError(
            "category_type",
            "a categorical value must be a string or an integer, got {kind}",
            {"kind": type(value).__name__},
        )
    return str(value)


Category = Annotated[
    str,
    PlainValidator(_category),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
DenseValue = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def record_model(schema: FeatureSchema) -> type[BaseModel]:
    """One raw record: every feature of `schema` under its own name, typed.

    Python attribute names are positional (`s0`, `d0`, ...) with the feature name as the
    alias, because feature names need not be identifiers ("class of worker").
    """
    fields: dict[str, Any] = {}
    for i, field in enumerate(schema.sparse):
        example = field.vocabulary[0] if field.vocabulary else "unknown"
        fields[f"s{i}"] = (
            Category,
            Field(
                alias=field.name,
                description=f"categorical, {len(field.vocabulary)} known values",
                examples=[example],
            ),
        )
    for i, field in enumerate(schema.dense):
        fields[f"d{i}"] = (
            DenseValue,
            Field(alias=field.name, description="numeric, raw (unscaled) value", examples=[0.0]),
        )
    return create_model(
        f"{_identifier(schema.dataset)}Record",
        __config__=ConfigDict(extra="ignore", frozen=True),
        **fields,
    )


def request_model(schema: FeatureSchema, max_records: int) -> type[BaseModel]:
    """`{"records": [record, ...]}` with 1..`max_records` records."""
    record = record_model(schema)

    class PredictRequest(BaseModel):
        """A batch of raw records to score for every task."""

        model_config = ConfigDict(extra="forbid")

        records: list[record] = Field(  # type: ignore[valid-type]
            description=f"1 to {max_records} raw records", min_length=1
        )

        @field_validator("records", mode="before")
        @classmethod
        def _at_most_max_records(cls, value: Any) -> Any:
            """Refuse an oversized batch before validating thousands of records."""
            if isinstance(value, list) and len(value) > max_records:
                raise PydanticCustomError(
                    "too_many_records",
                    "{count} records exceed this deployment's limit of {limit} per request "
                    "(max_records_per_request); split the batch",
                    {"count": len(value), "limit": max_records},
                )
            return value

    return PredictRequest


def response_model(tasks: Sequence[str]) -> type[BaseModel]:
    """`{"predictions": [{task: probability}], "model": ..., "warnings": [...]}`."""
    prediction = create_model(
        "TaskProbabilities",
        __config__=ConfigDict(extra="forbid"),
        **{
            f"t{i}": (float, Field(alias=task, description=f"P({task}) for the record"))
            for i, task in enumerate(tasks)
        },
    )

    class PredictResponse(BaseModel):
        """Probabilities per record (request order) and task, and what answered."""

        predictions: list[prediction]  # type: ignore[valid-type]
        model: ModelDescription
        warnings: list[UnknownCategory] = Field(
            default_factory=list, description="unseen categories scored as out-of-vocabulary"
        )

    return PredictResponse


class ModelDescription(BaseModel):
    """The registered model version a replica serves."""

    name: str
    version: str
    alias: str | None
    run_id: str | None
    kind: str
    schema_hash: str
    tasks: list[str]


class UnknownCategory(BaseModel):
    """A categorical value not in the field's training vocabulary."""

    record: int
    field: str
    value: str
    message: str = "unseen category, scored with the out-of-vocabulary embedding"


@dataclass(frozen=True)
class EncodedRecords:
    """Model inputs for one request: `sparse [B, S] int64`, `dense [B, D] float32`."""

    sparse: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return self.sparse.shape[0]


class RecordEncoder:
    """Validated records -> model inputs, exactly as `FeatureSchema.encode` encodes a table.

    Built once per replica: each field's vocabulary becomes a dict, where `encode` rebuilds
    a hash set of the vocabulary at every call (and pays pyarrow's per-column overhead),
    which made encoding cost more than the model on small requests. Unseen categories go
    to `OOV_INDEX`; numbers get the schema's transform and scaling, in float64 then cast
    to float32, as `encode` does. Tests hold it equal to `encode` on generated records.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        self.lookups: list[dict[str, int]] = []
        for field in schema.sparse:
            lookup: dict[str, int] = {}
            for position, value in enumerate(field.vocabulary):
                lookup.setdefault(value, position + 1)  # first occurrence, as pc.index_in
            self.lookups.append(lookup)
        self.sparse_values = _getter("s", len(schema.sparse))
        self.dense_values = _getter("d", len(schema.dense))
        self.mean = np.array([f.mean for f in schema.dense], dtype=np.float64)
        self.std = np.array([f.std for f in schema.dense], dtype=np.float64)
        self.log1p = np.array([f.transform == "log1p" for f in schema.dense], dtype=bool)

    def __call__(self, records: Sequence[BaseModel]) -> EncodedRecords:
        rows = len(records)
        sparse = np.empty((rows, len(self.lookups)), dtype=np.int64)
        for row, record in enumerate(records):
            sparse[row] = [
                lookup.get(value, OOV_INDEX)
                for lookup, value in zip(self.lookups, self.sparse_values(record), strict=True)
            ]
        raw = np.array([self.dense_values(r) for r in records], dtype=np.float64)
        raw = raw.reshape(rows, len(self.mean))
        raw[:, self.log1p] = np.log1p(np.maximum(raw[:, self.log1p], 0.0))
        dense = ((raw - self.mean) / self.std).astype(np.float32)
        return EncodedRecords(sparse, dense)


def _getter(prefix: str, count: int) -> Callable[[BaseModel], tuple[Any, ...]]:
    """A record's fields `<prefix>0..<prefix>{count-1}` as a tuple (`attrgetter` returns a
    bare value for one name and cannot take none)."""
    if count == 0:
        return lambda _: ()
    getter = attrgetter(*(f"{prefix}{i}" for i in range(count)))
    return getter if count > 1 else lambda record: (getter(record),)


def unknown_categories(
    schema: FeatureSchema, records: Sequence[BaseModel], encoded: EncodedRecords
) -> list[UnknownCategory]:
    """Every (record, field) whose value fell into the out-of-vocabulary bucket."""
    rows, fields = np.nonzero(encoded.sparse == OOV_INDEX)
    return [
        UnknownCategory(
            record=int(row), field=schema.sparse[col].name, value=getattr(records[row], f"s{col}")
        )
        for row, col in zip(rows, fields, strict=True)
    ]


def _identifier(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_") if part)
