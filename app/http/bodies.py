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

MAX_DEPTH = 64
"""Deepest JSON nesting accepted in a body. Deeper input would hit recursion limits in the
parser, in pydantic's serializer or in json.dumps (500 instead of 422); no job needs it."""


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
    too_deep = InvalidInput(f"the request body is nested deeper than {MAX_DEPTH} levels", field="body",
                            details={"limit": MAX_DEPTH})
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise too_deep from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", field="body") from None
    if _deeper_than(data, MAX_DEPTH):
        raise too_deep
    return data


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON containers nest more than `limit` deep (iterative, like the check it guards)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


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
