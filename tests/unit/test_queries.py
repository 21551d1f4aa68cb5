"""SQL is reached one way: every named query of sql/NAME.sql through the function of the same
name in skiplock/queries/NAME.py, and no other module holds SQL text."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from skiplock.queries.jobs import NOTIFY_CHANNEL
from skiplock.queries.loader import parse, schema_sql, sql_dir

PACKAGE = Path(__file__).resolve().parents[2] / "skiplock"
NOT_WRAPPERS = {"__init__", "loader", "_run"}


def wrappers(stem: str) -> set[str]:
    module = importlib.import_module(f"skiplock.queries.{stem}")
    return {name for name, fn in inspect.getmembers(module, inspect.isfunction)
            if fn.__module__ == module.__name__ and not name.startswith("_")}


def test_every_named_query_has_one_wrapper_named_after_it_and_every_wrapper_a_query():
    files = {p.stem: p for p in sql_dir().glob("*.sql") if p.stem != "schema"}
    modules = {p.stem for p in (PACKAGE / "queries").glob("*.py")} - NOT_WRAPPERS
    assert set(files) == modules, "one wrapper module per sql/*.sql file"
    for stem, path in files.items():
        assert wrappers(stem) == set(parse(path.read_text())), f"skiplock/queries/{stem}.py vs sql/{stem}.sql"


def test_no_module_outside_skiplock_queries_holds_sql_or_runs_a_query_by_name():
    sql_text = re.compile(r"""\.execute\(\s*f?["']|\bq\(\s*["']|queries\.loader|queries\._run|fetch_(?:one|all)\(""")
    offenders = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
                 for p in PACKAGE.rglob("*.py") if "queries" not in p.parts
                 for n, line in enumerate(p.read_text().splitlines(), 1) if sql_text.search(line)]
    assert offenders == []


def test_the_notify_channel_named_in_python_is_the_one_the_insert_trigger_notifies_on():
    assert f"pg_notify('{NOTIFY_CHANNEL}'" in schema_sql()
