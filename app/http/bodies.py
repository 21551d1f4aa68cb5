"""Reading request bodies: bounded in size while streaming, parsed as strict JSON off the event
loop when large, validated by a pydantic model into errors that name the field.

Strict JSON here means what PostgreSQL's jsonb and the job's reader can hold without a
surprise: no duplicate keys (json.loads keeps the last one silently), no NaN or Infinity
(literal or overflowing, like 1e400, which Python reads as inf), no lone UTF-16 surrogates
("\\ud800", not a character), no NUL characters, nesting at most MAX_DEPTH deep. A refusal is a
422 whose `details.field` is the path to the value at fault (`args.items.3`)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from skiplock.errors import InvalidInput

from .errors import PayloadTooLarge

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64
"""Deepest JSON nesting accepted in a body. Deeper input would hit recursion limits in the
parser, in pydantic's serializer or in json.dumps (500 instead of 422); no job needs it."""

BYTES_PER_ITEM = 32
"""A body may hold at most one JSON item (value or key) per this many bytes of the body limit
(1,048,576 items for the default 32 MiB). Python spends 50-100 bytes per parsed item, so a
32 MiB body of `[{},{},...]` (11 million objects) would take over 1.5 GB and seconds of CPU;
under this bound a body costs at most a few times the body limit."""

PARSE_IN_THREAD = 64 * 1024
"""Bodies over this many bytes are parsed in a worker thread, so the event loop keeps serving
other requests meanwhile."""

PARSE_SLOTS = 2
"""Large bodies parsed at once per process: their parsed form is what costs memory."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


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
    check_item_count(raw, max(1, limit // BYTES_PER_ITEM))
    if len(raw) <= PARSE_IN_THREAD:
        return parse_strict(raw)
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, asyncio.Semaphore(PARSE_SLOTS))
    async with slots:
        return await asyncio.to_thread(parse_strict, raw)


def check_item_count(raw: bytes, limit: int) -> None:
    """Refuse a body that may hold more than `limit` JSON items, before parsing it. Every value
    but the first follows a `[`, `,` or `:`, and every key a `{` or `,`: counting those bytes
    (a C loop over the body) bounds the items from above; the same characters inside strings
    only make the bound looser."""
    count = 1 + sum(raw.count(c) for c in (b"[", b"{", b",", b":"))
    if count > limit:
        raise InvalidInput(f"the request body holds too many JSON values: up to {limit} items (values and keys) "
                           "are accepted per request; send fewer jobs per request", field="body",
                           details={"limit": limit})


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Marked(dict[str, Any]):
    """An object that held a duplicate key (second parse only, to find where it was)."""

    duplicate = ""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey(_first_duplicate(pairs))
    return obj


def _marking_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _Marked(obj)
    marked.duplicate = _first_duplicate(pairs)
    return marked


def _first_duplicate(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            return k
        seen.add(k)
    raise AssertionError("no duplicate key")


def _no_constants(name: str) -> Any:
    """NaN and Infinity are not JSON (and PostgreSQL's jsonb refuses them)."""
    raise ValueError(f"{name} is not valid JSON")


_STRICT = json.JSONDecoder(parse_constant=_no_constants, object_pairs_hook=_unique_pairs)
"""One decoder for every body (json.loads with options builds a new one per call)."""


def parse_strict(raw: bytes) -> Any:
    """The body as JSON, or InvalidInput naming what is refused and where."""
    try:
        # what json.loads does with bytes: UTF-8, -16 or -32 by the first bytes
        data = _STRICT.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise _too_deep() from None
    except _DuplicateKey:
        marked = json.loads(raw, parse_constant=_no_constants, object_pairs_hook=_marking_pairs)
        path, obj = _find(marked, lambda v: isinstance(v, _Marked))
        key = obj.duplicate
        raise InvalidInput(f"duplicate key {key!r} in a JSON object: each key may appear once",
                           field=_field((*path, key)), details={"key": key}) from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", field="body") from None
    problem = _first_problem(data)
    if problem == "depth":
        raise _too_deep()
    if problem is not None:
        test, message = _PROBLEMS[problem]
        path, _ = _find(data, test)
        raise InvalidInput(f"{_field(path)}: {message}", field=_field(path))
    return data


def _too_deep() -> InvalidInput:
    return InvalidInput(f"the request body is nested deeper than {MAX_DEPTH} levels", field="body",
                        details={"limit": MAX_DEPTH})


def _has_nul(v: Any) -> bool:
    return isinstance(v, str) and "\x00" in v


def _has_surrogate(v: Any) -> bool:
    return isinstance(v, str) and not v.isascii() and _SURROGATE.search(v) is not None


def _out_of_range(v: Any) -> bool:
    return type(v) is float and not math.isfinite(v)


_PROBLEMS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "nul": (_has_nul, "NUL characters (\\u0000) cannot be stored"),
    "surrogate": (_has_surrogate, "a lone UTF-16 surrogate (\\ud800-\\udfff) is not a character"),
    "number": (_out_of_range, "a number beyond +-1.8e308 cannot be stored"),
}


def _text_problem(s: str) -> str | None:
    return "nul" if "\x00" in s else "surrogate" if _has_surrogate(s) else None


def _first_problem(data: Any) -> str | None:
    """One pass over every value and key (iterative: the nesting depth is the client's choice)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if (problem := _text_problem(v)) is not None:
                return problem
        elif isinstance(v, dict):
            if depth > MAX_DEPTH:
                return "depth"
            for k, child in v.items():
                if (problem := _text_problem(k)) is not None:
                    return problem
                stack.append((child, depth + 1))
        elif isinstance(v, list):
            if depth > MAX_DEPTH:
                return "depth"
            stack.extend((c, depth + 1) for c in v)
        elif _out_of_range(v):
            return "number"
    return None


def _find(data: Any, test: Callable[[Any], bool]) -> tuple[tuple[str | int, ...], Any]:
    """The path to the first value (or key) passing `test`, depth first in document order."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        v, path = stack.pop()
        if test(v):
            return path, v
        if isinstance(v, dict):
            for k in v:
                if test(k):
                    return (*path, k), k
            stack.extend(((c, (*path, k)) for k, c in reversed(v.items())))
        elif isinstance(v, list):
            stack.extend(((c, (*path, i)) for i, c in reversed(list(enumerate(v)))))
    raise AssertionError("no value matched")


def _field(path: tuple[Any, ...]) -> str:
    """A path as `a.b.3`; a key that cannot be shown as text is shown JSON-escaped."""
    return ".".join(json.dumps(x)[1:-1] if _has_nul(x) or _has_surrogate(x) else str(x) for x in path) or "body"


def field_name(loc: tuple[Any, ...]) -> str:
    return _field(loc)


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": field_name(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = errors[0]
        raise InvalidInput(f"{first['field']}: {first['message']}", field=first["field"],
                           details={"errors": errors}) from None
