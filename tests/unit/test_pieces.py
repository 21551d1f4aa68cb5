"""Pure pieces, no database: named-query parsing, ids, task argument models, settings."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from app.settings import Settings
from skiplock import InvalidArguments, InvalidInput, JobContext, TaskRegistry, UnknownTask, task, uuid7
from skiplock.queries.loader import parse, queries

ROOT = Path(__file__).resolve().parents[2]


def test_parse_splits_named_queries_and_drops_comment_lines():
    text = "-- header\n-- name: a\n-- about a\nSELECT 1;\n\n-- name: b\nSELECT %(x)s\n  FROM t;\n"
    assert parse(text) == {"a": "SELECT 1", "b": "SELECT %(x)s\n  FROM t"}
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


def test_every_engine_query_is_loaded_once():
    names = set(queries())
    assert {"claim_batch", "finish_many_if_held", "rescue_expired", "insert_job", "insert_jobs"} <= names


def test_uuid7_is_version_7_and_time_ordered():
    ids = [uuid7(ms) for ms in (1, 2, 3, 1_800_000_000_000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)


def test_task_model_from_type_hints_forbids_unknown_and_coerces():
    reg = TaskRegistry()

    @task(name="t", registry=reg)
    async def t(n: int, label: str = "x", ctx: JobContext | None = None) -> None: ...

    spec = reg.get("t")
    assert spec.context_param == "ctx"
    assert spec.validate({"n": "3"}) == {"n": 3, "label": "x"}
    with pytest.raises(InvalidArguments) as info:
        spec.validate({"n": 1, "zzz": 2})
    assert info.value.field == "args.zzz"
    assert set(spec.json_schema()["properties"]) == {"n", "label"}


def test_task_taking_a_pydantic_model_validates_with_it():
    reg = TaskRegistry()

    class Args(BaseModel):
        url: str

    @task(name="m", registry=reg)
    def m(args: Args) -> None: ...

    assert reg.get("m").call_kwargs({"url": "u"}) == {"args": Args(url="u")}


def test_registry_refuses_bad_definitions_and_names_unknown_tasks():
    reg = TaskRegistry()
    with pytest.raises(InvalidInput, match="max_attempts"):
        task(name="bad", max_attempts=0, registry=reg)(lambda: None)
    with pytest.raises(InvalidInput, match="queue name"):
        task(name="bad", queue="No Spaces", registry=reg)(lambda: None)
    with pytest.raises(UnknownTask, match="unknown task 'nope'"):
        reg.get("nope")


def test_settings_validate_with_the_variable_name(monkeypatch: Any):
    monkeypatch.setenv("SKIPLOCK_CONCURRENCY", "0")
    with pytest.raises(Exception, match="concurrency"):
        Settings()


def test_the_wheel_ships_every_package_the_sql_files_and_migrations(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("skiplock-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"skiplock/_sql/jobs.sql", "skiplock/_sql/schema.sql", "migrations/env.py",
            "migrations/versions/0001_initial.py", "skiplock/runtime/worker.py", "skiplock/queries/jobs.py",
            "app/http/auth.py", "app/dashboard/templates/base.html", "app/dashboard/static/live.js"} <= names


def test_args_too_deeply_nested_to_store_are_invalid_arguments():
    reg = TaskRegistry()

    @task(name="deep", registry=reg)
    def deep(data: Any) -> None: ...

    nested: Any = 1
    for _ in range(2000):
        nested = [nested]
    with pytest.raises(InvalidArguments) as info:
        reg.get("deep").validate({"data": nested})
    assert info.value.field == "args"


@pytest.mark.parametrize("name", ["default\n", "default\r\n", "a\nb"])
def test_a_name_with_a_line_break_is_refused_whole_not_cut_at_the_break(name: str):
    from skiplock.job import check_queue, check_task_name
    with pytest.raises(InvalidInput):
        check_queue(name)
    with pytest.raises(InvalidInput):
        check_task_name(name)
