"""The HTTP interface of a replica: `POST /predict`, `GET /healthz`, OpenAPI at `/docs`.

Built per replica, after its model is loaded, because the request and response models
are generated from that model's feature schema and tasks (see `records`). Every
rejection is a 422 with one entry per problem, each naming the record index and the
field, and a one-line `message` joining them (a body over `max_request_bytes` is a 413
of the same shape, `limits`); nothing a client sends can reach the model unvalidated,
so bad input never becomes a 500.

This module must not use `from __future__ import annotations`: FastAPI reads the
endpoint's parameter annotation at run time, and here it is a class built locally.
"""

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from emm_ray.data.schema import FeatureSchema
from emm_ray.serve.limits import BodyLimit
from emm_ray.serve.records import (
    EncodedRecords,
    ModelDescription,
    RecordEncoder,
    request_model,
    response_model,
    unknown_categories,
)
from emm_ray.serve.servable import Servable
from emm_ray.serve.settings import ServeSettings

Forward = Callable[[EncodedRecords], Awaitable[np.ndarray]]
MAX_REPORTED_ERRORS = 50
EXTREME_STD = 1e3  # a scaled number this many std from the training mean is named as suspect


class Problem(BaseModel):
    """One reason a request was refused."""

    loc: list[str | int]
    record: int | None
    field: str | None
    type: str
    msg: str


class ErrorResponse(BaseModel):
    """Body of every 422: the problems, and a `message` a person can read."""

    message: str
    detail: list[Problem]


def build_api(
    servable: Servable,
    description: ModelDescription,
    settings: ServeSettings,
    forward: Forward,
    served_by: dict[str, str] | None = None,
) -> FastAPI:
    """A FastAPI app scoring raw records with `forward` (the replica's batched model call).

    `served_by` (the replica and its Ray node) is reported by `/healthz`, so an operator
    sees which replica answered and where it runs."""
    schema = servable.schema
    encode_records = RecordEncoder(schema)
    model_json = description.model_dump(mode="json")
    predict_request = request_model(schema, settings.max_records_per_request)
    predict_response = response_model(servable.tasks)
    app = FastAPI(
        title=f"emm-ray model {description.name}",
        version=description.version,
        description=(
            f"Scores raw {schema.dataset} records for tasks {', '.join(servable.tasks)} "
            f"with registered model {description.name} version {description.version} "
            f"({description.kind}, schema {description.schema_hash}). Unseen categories: "
            f"{settings.unknown_category}."
        ),
    )
    app.add_exception_handler(RequestValidationError, _refuse)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and what is being served."""
        answer = {"status": "ok", "model": description.model_dump()}
        return {**answer, "served_by": served_by} if served_by else answer

    @app.post(
        "/predict",
        response_model=predict_response,
        responses={422: {"model": ErrorResponse, "description": "a record or field is invalid"}},
    )
    async def predict(body: predict_request) -> Response:  # type: ignore[valid-type]
        """Probability of every task for every record, in request order."""
        records = body.records
        encoded = encode_records(records)
        unknown = unknown_categories(schema, records, encoded)
        if unknown and settings.unknown_category == "reject":
            raise RequestValidationError(
                [
                    {
                        "type": "unknown_category",
                        "loc": ("body", "records", u.record, u.field),
                        "msg": f"unknown category {u.value!r}: not in the training vocabulary",
                    }
                    for u in unknown
                ]
            )
        overflow = _out_of_range(schema, records, encoded.dense)
        if overflow:
            raise RequestValidationError(overflow)
        probabilities = await forward(encoded)
        failed = _not_finite(schema, records, encoded.dense, probabilities)
        if failed:
            raise RequestValidationError(failed)
        answer = {
            "predictions": [
                dict(zip(servable.tasks, row, strict=True)) for row in probabilities.tolist()
            ],
            "model": model_json,
            "warnings": [u.model_dump() for u in unknown],
        }
        # Built here, finite (`_not_finite`) and in the documented shape: returning the
        # bytes skips FastAPI re-validating every prediction against `response_model`.
        return Response(json.dumps(answer, allow_nan=False).encode(), media_type="application/json")

    return app


def _out_of_range(
    schema: FeatureSchema, records: Sequence[BaseModel], dense: np.ndarray
) -> list[dict[str, Any]]:
    """A number so large that, scaled, it leaves float32 (the model's arithmetic)."""
    rows, columns = np.nonzero(~np.isfinite(dense))
    return [
        {
            "type": "value_out_of_range",
            "loc": ("body", "records", int(row), schema.dense[col].name),
            "msg": f"{getattr(records[row], f'd{col}')!r} is beyond the range the model "
            "computes in (float32) once scaled",
        }
        for row, col in zip(rows, columns, strict=True)
    ]


def _not_finite(
    schema: FeatureSchema,
    records: Sequence[BaseModel],
    dense: np.ndarray,
    probabilities: np.ndarray,
) -> list[dict[str, Any]]:
    """Records whose prediction is not a number, naming their most extreme numbers: values
    far outside the training data can overflow inside the model, and a NaN must never be
    answered as a probability (nor break the JSON response)."""
    problems = []
    for row in np.flatnonzero(~np.isfinite(probabilities).all(axis=1)):
        extreme = [
            f"{field.name}={getattr(records[row], f'd{col}')!r} "
            f"({dense[row, col]:.3g} std from the training mean)"
            for col, field in enumerate(schema.dense)
            if abs(dense[row, col]) > EXTREME_STD
        ]
        problems.append(
            {
                "type": "prediction_not_finite",
                "loc": ("body", "records", int(row)),
                "msg": "the model's output for this record is not a number"
                + (
                    f"; values far outside the training data: {', '.join(extreme)}"
                    if extreme
                    else ""
                ),
            }
        )
    return problems


async def _refuse(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming record and field for each problem (and never echoing NaN, which JSON lacks)."""
    errors = list(exc.errors())
    problems = [_problem(error) for error in errors[:MAX_REPORTED_ERRORS]]
    lines = [_describe(p) for p in problems]
    if len(errors) > MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(errors) - MAX_REPORTED_ERRORS} more problems")
    body = ErrorResponse(message="; ".join(lines), detail=problems)
    return JSONResponse(status_code=422, content=body.model_dump())


def _problem(error: dict[str, Any]) -> Problem:
    loc = [p if isinstance(p, int) else str(p) for p in error.get("loc", ())]
    record = field = None
    if len(loc) >= 3 and loc[:2] == ["body", "records"] and isinstance(loc[2], int):
        record = loc[2]
        field = str(loc[3]) if len(loc) > 3 else None
    elif len(loc) >= 2 and loc[0] == "body" and isinstance(loc[1], str):
        field = loc[1]
    message = str(error.get("msg", "invalid"))
    context = error.get("ctx", {})
    if error.get("type") == "json_invalid" and "error" in context:
        message = f"{message}: {context['error']}"
    value = error.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        message = f"{message} (got {value})"
    return Problem(loc=loc, record=record, field=field, type=str(error.get("type")), msg=message)


def _describe(problem: Problem) -> str:
    if problem.record is not None:
        where = f"records[{problem.record}]" + (f".{problem.field}" if problem.field else "")
    elif problem.field is not None:
        where = problem.field
    elif problem.type == "json_invalid" and len(problem.loc) > 1:
        where = f"request body (character {problem.loc[1]})"
    else:
        where = "request body"
    return f"{where}: {problem.msg}"
