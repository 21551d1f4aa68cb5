"""Results typed by the handler's return annotation, on a real worker and database: a result
that matches is validated and stored as pydantic serialises it; one that does not match, or
that JSON would store wrongly, fails the job at once with an error naming the annotation.
Untyped handlers keep the rules of skiplock/storable.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import typing_extensions
from pydantic import BaseModel

from skiplock import InvalidInput, TaskRegistry, Worker, enqueue, task


class Report(BaseModel):
    pages: int
    at: datetime
    tags: set[str] = set()


class Totals(typing_extensions.TypedDict):
    count: int
    mean: float


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @task(registry=reg)
    async def report(pages: Any) -> Report:
        return Report(pages=pages, at=datetime(2026, 12, 3, 10, tzinfo=UTC), tags={"x"})

    @task(registry=reg)
    async def report_from_dict(pages: Any) -> Report:
        return {"pages": pages, "at": datetime(2026, 12, 3, 10, tzinfo=UTC)}  # type: ignore[return-value]

    @task(registry=reg)
    async def report_unchecked(pages: Any) -> Report:
        return Report.model_construct(pages=pages, at=datetime(2026, 12, 3, 10, tzinfo=UTC))  # skips validation

    @task(registry=reg)
    def numbers(values: list[Any]) -> list[int]:
        return values

    @task(registry=reg)
    async def totals(count: Any) -> Totals:
        return {"count": count, "mean": 1.5}

    @task(registry=reg)
    async def keyed() -> dict[int | str, str]:
        return {1: "one", "1": "also one"}

    @task(registry=reg)
    async def nothing() -> None:
        return "something"  # type: ignore[return-value]

    @task(registry=reg)
    async def untyped(value: Any):  # type: ignore[no-untyped-def]
        return value

    @task(registry=reg)
    async def untyped_set():  # type: ignore[no-untyped-def]
        return {"x"}

    return reg


def run(url: str, jobs: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, Any, str | None]]:
    reg = registry()

    async def go() -> dict[str, uuid.UUID]:
        ids = {}
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for i, (name, args) in enumerate(jobs):
                ids[f"{i}:{name}"] = (await enqueue(conn, name, args, registry=reg, max_attempts=3)).id
        await asyncio.wait_for(Worker(url, registry=reg, burst=True, poll_interval=0.02).run(), timeout=60)
        return ids

    ids = asyncio.run(go())
    with psycopg.connect(url) as c:
        return {key: c.execute("SELECT state::text, result, last_error FROM skiplock.jobs WHERE id = %s",
                               (job_id,)).fetchone() for key, job_id in ids.items()}  # type: ignore[misc]


def test_a_typed_result_is_validated_and_stored_as_pydantic_serialises_it(db_url):
    got = run(db_url, [("report", {"pages": 3}), ("report_from_dict", {"pages": 4}), ("numbers", {"values": [1, 2]}),
                       ("totals", {"count": 2}), ("untyped", {"value": {"a": [1]}})])
    assert got["0:report"] == ("succeeded", {"pages": 3, "at": "2026-12-03T10:00:00Z", "tags": ["x"]}, None)
    assert got["1:report_from_dict"][:2] == ("succeeded", {"pages": 4, "at": "2026-12-03T10:00:00Z", "tags": []})
    assert got["2:numbers"] == ("succeeded", [1, 2], None)
    assert got["3:totals"] == ("succeeded", {"count": 2, "mean": 1.5}, None)
    assert got["4:untyped"] == ("succeeded", {"a": [1]}, None)


def test_a_result_that_does_not_match_its_annotation_fails_the_job_at_once_naming_it(db_url):
    got = run(db_url, [("report_from_dict", {"pages": "three"}), ("numbers", {"values": [1, "2"]}),
                       ("totals", {"count": 2.5}), ("keyed", {}), ("nothing", {}), ("untyped_set", {}),
                       ("report_unchecked", {"pages": "three"})])
    for key, (state, result, error) in got.items():
        assert (state, result) == ("failed", None), key
        assert error is not None and "Not retried" in error, key
    assert got["0:report_from_dict"][2].startswith(
        "Invalid result: task 'report_from_dict' returned dict, which does not match its return annotation Report: "
        "pages: Input should be a valid integer")
    assert "returned list, which does not match its return annotation list[int]: 1: Input should be a valid " \
           "integer" in got["1:numbers"][2]
    assert "return annotation Totals: count: Input should be a valid integer" in got["2:totals"][2]
    assert "two keys that JSON stores as the same key '1'" in got["3:keyed"][2]
    assert "returned str, which does not match its return annotation None" in got["4:nothing"][2]
    # untyped: today's rules (a set is not JSON), not the annotation's
    assert got["5:untyped_set"][2].startswith("Unstorable result: task 'untyped_set' returned set")
    assert "returned Report, which cannot be serialised as its return annotation Report" in \
        got["6:report_unchecked"][2]
    with psycopg.connect(db_url) as c:  # one attempt each: the same code returns the same value
        assert c.execute("SELECT max(attempt) FROM skiplock.jobs").fetchone() == (1,)


def test_an_annotation_pydantic_cannot_use_is_refused_when_the_task_is_defined():
    import typing

    class Old(typing.TypedDict):  # pydantic needs typing_extensions.TypedDict before Python 3.12
        n: int

    with pytest.raises(InvalidInput, match="its return annotation cannot be validated") as e:
        @task(registry=TaskRegistry())
        async def old() -> Old: ...
    assert e.value.field == "return"
