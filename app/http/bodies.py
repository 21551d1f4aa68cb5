"""Reading request bodies: bounded in size while streaming, parsed as JSON, validated by a
pydantic model into errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from skiplock.errors import InvalidInput

from .errors import PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request, limit: int) -> Any:
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes", details={"limit": limit})
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidInput("the request body is empty; send a JSON object", field="body")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", field="body") from None


def _no_constants(name: str) -> Any:
    """NaN and Infinity are not JSON (and PostgreSQL's jsonb refuses them)."""
    raise ValueError(f"{name} is not valid JSON")


def field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc) or "body"


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": field_name(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = errors[0]
        raise InvalidInput(f"{first['field']}: {first['message']}", field=first["field"],
                           details={"errors": errors}) from None
