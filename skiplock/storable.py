"""What a handler hands back must be storable. Results, checkpoints and progress become jsonb,
errors become text, and PostgreSQL refuses NaN and Infinity, the NUL character and lone
surrogates. Acknowledgements are written in batches, so one refused value would fail every
job of the batch: values are checked (error text is made safe) before they are buffered."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import InvalidInput

MAX_RESULT_BYTES = 1024 * 1024
"""Default bound on a result, a checkpoint and a progress report: UTF-8 bytes of the JSON."""

MAX_ERROR_CHARS = 20_000

# `\u0000` preceded by an even number of backslashes: the escape of a NUL, not an escaped
# backslash followed by the letters "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_CONTAINERS = (dict, list, tuple)


class Unstorable(InvalidInput):
    """The value cannot be stored as JSON."""

    code = "unstorable"


class InvalidResult(Unstorable):
    """The handler's result does not match its return annotation."""

    code = "invalid_result"


def merged_key(value: Any) -> str | None:
    """The first key that two keys of one object of `value` become in JSON (1 and "1"), if any."""
    return _merged_key(value)


def to_json(value: Any, *, what: str, limit: int) -> bytes:
    """`value` as the UTF-8 JSON that will be stored, or Unstorable saying why not: not JSON
    (sets, bytes, objects...), NaN or Infinity, a NUL character, a lone surrogate, two keys
    of one object that JSON would merge (`{1: ..., "1": ...}`), or more than `limit` bytes."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise Unstorable(f"{what} is nested too deeply to store as JSON") from None
    except ValueError as exc:
        if "float" in str(exc):  # "Out of range float values are not JSON compliant"
            raise Unstorable(f"{what} contains NaN or Infinity, which JSON cannot hold") from None
        raise Unstorable(f"{what} is not JSON: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - TypeError, or whatever a container's own methods raise
        raise Unstorable(f"{what} is not JSON: {type(exc).__name__}: {exc}") from None
    try:
        data = text.encode()
    except UnicodeEncodeError as exc:
        raise Unstorable(f"{what} contains a lone surrogate ({text[exc.start]!r}), which is not valid "
                         "Unicode and cannot be stored") from None
    if len(data) > limit:
        raise Unstorable(f"{what} is {len(data)} bytes of JSON; the limit is {limit}", value=len(data))
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise Unstorable(f"{what} contains the NUL character (\\u0000), which PostgreSQL cannot store")
    if "{" in text:  # no object, no key to merge
        try:
            clash = _merged_key(value)
        except Exception as exc:  # noqa: BLE001 - a dict subclass's own methods raised
            raise Unstorable(f"{what} could not be read: {type(exc).__name__}: {exc}") from None
        if clash is not None:
            raise Unstorable(f"{what} has two keys in one object that JSON stores as the same key {clash!r} "
                             "(JSON keys are strings); one value would be lost")
    return data


def _merged_key(value: Any) -> str | None:
    """The first key that two keys of one object become in JSON (1 and "1", True and "true")."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                seen: set[str] = set()
                for k in v:
                    key = k if isinstance(k, str) else json.dumps(k)
                    if key in seen:
                        return key
                    seen.add(key)
            stack.extend(x for x in v.values() if isinstance(x, _CONTAINERS))
        elif isinstance(v, list | tuple):
            stack.extend(x for x in v if isinstance(x, _CONTAINERS))
    return None


def safe_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as PostgreSQL's text type accepts it: NUL characters and lone surrogates
    written as visible escapes (`\\x00`, `\\ud800`), at most `limit` characters."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text[:limit]
