"""Submitting jobs from Python: validation before storage, the caller's transaction,
idempotency under races, bulk all-or-nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from skiplock import InvalidArguments, InvalidInput, JobSpec, TaskRegistry, UnknownTask, enqueue, enqueue_many, task


@pytest.fixture
def reg() -> TaskRegistry:
    r = TaskRegistry()

    @task(name="echo", registry=r)
    async def echo(message: str, times: int = 1) -> None: ...

    class Resize(BaseModel):
        url: str
        width: int

    @task(name="resize", queue="images", priority="high", max_attempts=7, timeout=30, registry=r)
    def resize(args: Resize) -> None: ...

    return r


def count(pg_conn: psycopg.Connection[Any]) -> int:
    n = pg_conn.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0]
    pg_conn.commit()
    return int(n)


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


def test_task_defaults_apply_and_options_override(db_url, pg_conn, reg):
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with await connect(db_url) as c:
            a = await enqueue(c, "resize", {"url": "u", "width": 3}, registry=reg)
            b = await enqueue(c, "resize", {"url": "u", "width": "4"}, registry=reg, queue="other",
                              priority="low", max_attempts=1, delay=60)
            return a.row, b.row

    a, b = asyncio.run(go())
    assert (a["queue"], a["priority"], a["max_attempts"], a["timeout"]) == ("images", 0, 7, 30)
    assert (b["queue"], b["priority"], b["max_attempts"]) == ("other", 2, 1)
    assert b["args"] == {"url": "u", "width": 4}  # validated and normalised before storage
    assert (b["run_at"] - b["created_at"]).total_seconds() > 55


@pytest.mark.parametrize("name,args,options,error,field", [
    ("nope", {}, {}, UnknownTask, "task"),
    ("echo", {}, {}, InvalidArguments, "args.message"),
    ("echo", {"message": "x", "extra": 1}, {}, InvalidArguments, "args.extra"),
    ("echo", {"message": "x", "times": "many"}, {}, InvalidArguments, "args.times"),
    ("echo", {"message": "x"}, {"queue": "Bad Queue"}, InvalidInput, "queue"),
    ("echo", {"message": "x"}, {"delay": -1}, InvalidInput, "delay"),
    ("echo", {"message": "x"}, {"max_attempts": 0}, InvalidInput, "max_attempts"),
    ("echo", {"message": "x"}, {"priority": "urgent"}, InvalidInput, "priority"),
    ("echo", {"message": "x"}, {"timeout": 0}, InvalidInput, "timeout"),
    ("echo", {"message": "x" * 300_000}, {}, InvalidInput, "args"),
])
def test_bad_input_names_the_field_and_writes_nothing(db_url, pg_conn, reg, name, args, options, error, field):
    async def go() -> None:
        async with await connect(db_url) as c:
            await enqueue(c, name, args, registry=reg, **options)

    with pytest.raises(error) as info:
        asyncio.run(go())
    assert info.value.details["field"] == field
    assert count(pg_conn) == 0


def test_enqueue_inside_the_callers_transaction_rolls_back_with_it(db_url, pg_conn, reg):
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as c:  # not autocommit
            await enqueue(c, "echo", {"message": "kept"}, registry=reg)
            await c.commit()
            await enqueue(c, "echo", {"message": "gone"}, registry=reg)
            await c.rollback()

    asyncio.run(go())
    rows = pg_conn.execute("SELECT args->>'message' FROM skiplock.jobs").fetchall()
    assert rows == [("kept",)]


def test_concurrent_submits_with_one_idempotency_key_create_one_job(db_url, pg_conn, reg):
    async def one() -> tuple[str, bool]:
        async with await connect(db_url) as c:
            r = await enqueue(c, "echo", {"message": "x"}, registry=reg, idempotency_key="order-42")
            return str(r.id), r.created

    async def go() -> list[tuple[str, bool]]:
        return await asyncio.gather(*(one() for _ in range(30)))

    results = asyncio.run(go())
    assert len({r[0] for r in results}) == 1
    assert sum(1 for r in results if r[1]) == 1
    assert count(pg_conn) == 1


def test_bulk_is_all_or_nothing_and_names_the_bad_index(db_url, pg_conn, reg):
    specs = [JobSpec("echo", {"message": str(i)}) for i in range(500)]
    bad = [*specs[:10], JobSpec("echo", {"message": 1.5j if False else None}), *specs[10:20]]

    async def go(s: list[JobSpec]) -> int:
        async with await connect(db_url) as c:
            return len(await enqueue_many(c, s, registry=reg))

    with pytest.raises(InvalidArguments) as info:
        asyncio.run(go(bad))
    assert info.value.details["index"] == 10
    assert count(pg_conn) == 0
    assert asyncio.run(go(specs)) == 500
    assert count(pg_conn) == 500


def test_bulk_with_repeated_idempotency_keys_returns_the_existing_jobs(db_url, pg_conn, reg):
    async def go() -> list[tuple[str, bool]]:
        async with await connect(db_url) as c:
            first = await enqueue(c, "echo", {"message": "a"}, registry=reg, idempotency_key="k")
            out = await enqueue_many(c, [JobSpec("echo", {"message": "a"}, idempotency_key="k"),
                                         JobSpec("echo", {"message": "b"})], registry=reg)
            assert out[0].id == first.id
            return [(str(o.id), o.created) for o in out]

    out = asyncio.run(go())
    assert [c for _, c in out] == [False, True]
    assert count(pg_conn) == 2


def test_history_carries_the_correlation_id(db_url, pg_conn, reg):
    async def go() -> None:
        async with await connect(db_url) as c:
            await enqueue(c, "echo", {"message": "x"}, registry=reg, correlation_id="req-123")

    asyncio.run(go())
    assert pg_conn.execute("SELECT correlation_id FROM skiplock.job_timeline").fetchall() == [("req-123",)]


def test_args_are_stored_exactly_as_validated_single_and_bulk(db_url, pg_conn, reg):
    """Arguments are serialised once (the size check and the INSERT share the text): what is
    stored equals what was validated, non-ASCII, nesting, escapes and big numbers included."""
    r = TaskRegistry()

    @task(name="any", registry=r)
    async def anything(payload: dict[str, Any]) -> None: ...

    payload = {"text": "héllo ✓ 雪 \"q\" \\ \n", "nested": {"list": [1, 2.5, None, True, "😀"]},
               "big": 2**62, "neg": -1e-9}

    async def go() -> list[Any]:
        async with await connect(db_url) as c:
            one = await enqueue(c, "any", {"payload": payload}, registry=r)
            many = await enqueue_many(c, [JobSpec("any", {"payload": payload}) for _ in range(3)], registry=r)
            return [one, *many]

    jobs = asyncio.run(go())
    assert all("args_json" not in j.row for j in jobs)
    stored = pg_conn.execute("SELECT args FROM skiplock.jobs WHERE id = ANY(%s)", ([j.id for j in jobs],)).fetchall()
    pg_conn.commit()
    assert [s[0] for s in stored] == [{"payload": payload}] * 4
    assert all(j.row["args"] == {"payload": payload} for j in jobs)
