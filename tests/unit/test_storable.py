"""What may be stored as a job's result, checkpoint or progress, and error text made safe."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from skiplock.storable import Unstorable, safe_text, to_json


@pytest.mark.parametrize("value", [{"a": 1, "b": [1.5, "é", None, True]}, [1, (2, 3)], "text", 7, {1: "int key"},
                                   "a backslash and u0000: \\u0000", "\U0001f600"])
def test_json_values_are_stored_as_compact_utf8_json(value: Any) -> None:
    data = to_json(value, what="it", limit=1000)
    assert data == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize(("value", "says"), [
    (float("nan"), "contains NaN or Infinity"),
    ({"x": [float("inf")]}, "contains NaN or Infinity"),
    ("a\x00b", "contains the NUL character"),
    ({"key\x00": 1}, "contains the NUL character"),
    ("\\\x00", "contains the NUL character"),
    ("\ud800", "lone surrogate"),
    ({1, 2}, "Object of type set is not JSON serializable"),
    (b"x", "Object of type bytes is not JSON serializable"),
    (object(), "Object of type object is not JSON serializable"),
    ({1: "int", "1": "str"}, "same key '1'"),
    ({"deep": [{True: 1, "true": 2}]}, "same key 'true'"),
    ({None: 1, "null": 2}, "same key 'null'"),
    ("x" * 1000, "is 1002 bytes of JSON; the limit is 1000"),
    ("é" * 500, "is 1002 bytes of JSON; the limit is 1000"),
])
def test_values_postgresql_would_refuse_or_json_would_change_are_unstorable(value: Any, says: str) -> None:
    with pytest.raises(Unstorable, match="^it ") as err:
        to_json(value, what="it", limit=1000)
    assert says in err.value.message


def test_circular_and_too_deep_values_are_unstorable() -> None:
    loop: list[Any] = []
    loop.append(loop)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for value in (loop, deep):
        with pytest.raises(Unstorable):
            to_json(value, what="it", limit=10**9)


def test_a_coroutine_is_unstorable() -> None:
    coro = asyncio.sleep(0)
    with pytest.raises(Unstorable, match="coroutine"):
        to_json(coro, what="it", limit=1000)
    coro.close()


def test_error_text_is_made_safe_for_postgresql_text() -> None:
    assert safe_text("a\x00b\ud800c") == "a\\x00b\\ud800c"
    assert safe_text("plain", limit=3) == "pla"
    safe_text("é\U0001f600").encode()
