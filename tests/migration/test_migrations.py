"""Migrations are the only way the schema changes: they reproduce sql/schema.sql exactly,
and go up, down and up again on a database that holds jobs."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from app import migrate
from app.embedded_pg import Cluster
from skiplock.queries.loader import schema_sql


def dump_schema(cluster: Cluster, dbname: str) -> str:
    out = subprocess.run([str(cluster.bindir / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                          "-n", "skiplock", cluster.url(dbname)], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("--")
             and not re.match(r"^(SET|SELECT pg_catalog\.set_config)", ln) and not ln.startswith("\\")]
    return "\n".join(lines)


def fresh_db(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.url(name)


@pytest.fixture(scope="module")
def reference_dump(pg_cluster: Cluster) -> str:
    """The schema as sql/schema.sql builds it."""
    with psycopg.connect(fresh_db(pg_cluster, "mig_from_file"), autocommit=True) as c:
        c.execute(schema_sql())  # type: ignore[arg-type]
    return dump_schema(pg_cluster, "mig_from_file")


def test_migrations_reproduce_schema_sql(pg_cluster, reference_dump):
    migrate.upgrade(fresh_db(pg_cluster, "mig_migrated"))
    assert "CREATE TABLE skiplock.jobs" in reference_dump
    assert dump_schema(pg_cluster, "mig_migrated") == reference_dump


def test_up_down_up_on_a_database_with_jobs(pg_cluster, reference_dump):
    url = fresh_db(pg_cluster, "mig_cycle")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as c:
        for i in range(50):
            c.execute("SELECT skiplock.enqueue('echo', jsonb_build_object('message', %s::text))", (str(i),))
    migrate.downgrade(url, "base")
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'skiplock'").fetchone()[0] == 0
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT skiplock.enqueue('echo', '{}')")
        row: Any = c.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row[0] == migrate.head_revision()
        assert c.execute("SELECT count(*) FROM skiplock.jobs").fetchone()[0] == 1
    assert dump_schema(pg_cluster, "mig_cycle") == reference_dump


# -- 0007: history without redundancy ---------------------------------------------------------
# Transitions as the engine before 0007 made them (it cleared worker_id whenever a run ended).
CLAIM = ("UPDATE skiplock.jobs SET state = 'running', attempt = attempt + 1, worker_id = %(w)s, "
         "lease_expires_at = now() + interval '30 seconds', started_at = now() WHERE id = %(id)s")
END_RUN = ("UPDATE skiplock.jobs SET state = %(to)s::skiplock.job_state, attempt = attempt - %(back)s::int, "
           "worker_id = NULL, lease_expires_at = NULL, last_error = coalesce(%(error)s::text, last_error), "
           "finished_at = CASE WHEN %(to)s::text IN ('succeeded', 'failed') THEN now() END WHERE id = %(id)s")


def _old_engine_jobs(url: str) -> dict[str, Any]:
    """Jobs in every state, each reached through the transitions the engine made before 0007."""
    jobs: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as c:
        def submit(name: str, cid: str | None) -> Any:
            with c.transaction():
                if cid:
                    c.execute("SELECT set_config('skiplock.correlation_id', %s, true)", (cid,))
                jobs[name] = c.execute("SELECT skiplock.enqueue('echo', '{}')").fetchone()[0]  # type: ignore[index]
            return jobs[name]

        def claim(name: str, worker: str) -> None:
            c.execute(CLAIM, {"w": worker, "id": jobs[name]})

        def end(name: str, to: str, error: str | None = None, back: int = 0) -> None:
            c.execute(END_RUN, {"to": to, "error": error, "back": back, "id": jobs[name]})

        def operator(name: str, fn: str, cid: str) -> None:
            with c.transaction():
                c.execute("SELECT set_config('skiplock.correlation_id', %s, true)", (cid,))
                c.execute(f"SELECT skiplock.{fn}(%s)", (jobs[name],))

        submit("queued", "r-queued")
        submit("queued_no_cid", None)
        submit("running", "r-running")
        claim("running", "w1")
        submit("succeeded", "r-ok")
        claim("succeeded", "w1")
        end("succeeded", "succeeded")
        submit("retried_then_succeeded", "r-retry")
        claim("retried_then_succeeded", "w1")
        end("retried_then_succeeded", "queued", "boom 1")
        claim("retried_then_succeeded", "w2")
        end("retried_then_succeeded", "succeeded")
        submit("waiting_retry", "r-wait")
        claim("waiting_retry", "w1")
        end("waiting_retry", "queued", "boom 1")
        submit("released", "r-rel")
        claim("released", "w1")
        end("released", "queued", back=1)
        submit("failed", "r-fail")
        for w in ("w1", "w2", "w3"):
            claim("failed", w)
            end("failed", "queued" if w != "w3" else "failed", f"boom {w}")
        submit("cancelled_queued", "r-cq")
        operator("cancelled_queued", "cancel", "op-c1")
        submit("cancelled_running", None)
        claim("cancelled_running", "w1")
        operator("cancelled_running", "cancel", "op-c2")
        submit("operator_retried", "r-op")
        claim("operator_retried", "w1")
        end("operator_retried", "failed", "fatal")
        operator("operator_retried", "retry", "op-r1")
        claim("operator_retried", "w2")
        end("operator_retried", "succeeded")
    return jobs


def _history(url: str, relation: str, order: str, job_id: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(f"SELECT state::text, attempt, worker_id, error, correlation_id, at FROM {relation} "  # noqa: S608
                         f"WHERE job_id = %s ORDER BY {order}", (job_id,)).fetchall()


def test_0007_converts_history_up_and_down_on_jobs_in_every_state(pg_cluster, reference_dump):
    url = fresh_db(pg_cluster, "mig_history")
    migrate.upgrade(url, "0006")
    jobs = _old_engine_jobs(url)
    before = {name: _history(url, "skiplock.job_history", "id", job) for name, job in jobs.items()}
    with psycopg.connect(url, autocommit=True) as c:
        states = {r[0] for r in c.execute("SELECT state::text FROM skiplock.jobs")}
    assert states == {"queued", "running", "succeeded", "failed", "cancelled"}

    def expected(name: str) -> list[tuple[Any, ...]]:
        submitted = before[name][0][4]  # worker-side rows now carry the submission's id
        return [(s, a, w, e, cid if cid is not None else submitted) for s, a, w, e, cid, _ in before[name]]

    def same_moments(got: list[tuple[Any, ...]], name: str) -> None:
        for new, old in zip(got, before[name], strict=True):
            assert abs(new[5] - old[5]) < timedelta(seconds=5), name

    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_history") == reference_dump
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM skiplock.job_history h JOIN skiplock.jobs j ON j.id = h.job_id "
                         "WHERE j.state = 'succeeded' AND j.attempt = 1").fetchone() == (0,)
        row = c.execute("SELECT correlation_id, worker_id FROM skiplock.jobs WHERE id = %s",
                        (jobs["succeeded"],)).fetchone()
        assert row == ("r-ok", "w1")
    for name, job in jobs.items():
        got = _history(url, "skiplock.job_timeline", "step", job)
        assert [r[:5] for r in got] == expected(name), name
        same_moments(got, name)

    migrate.downgrade(url, "0006")
    for name, job in jobs.items():
        got = _history(url, "skiplock.job_history", "id", job)
        assert [r[:5] for r in got] == expected(name), name
        same_moments(got, name)
    with psycopg.connect(url, autocommit=True) as c:  # the old engine's rules hold again
        assert c.execute("SELECT count(*) FROM skiplock.jobs WHERE state <> 'running' AND worker_id IS NOT NULL"
                         ).fetchone() == (0,)
        c.execute("SELECT skiplock.enqueue('echo', '{}')")
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_history") == reference_dump


# -- 0096: dependencies ---------------------------------------------------------------------------
def _before_dependencies() -> str:
    """The revision 0096 follows (whatever the chain becomes)."""
    from alembic.script import ScriptDirectory

    down = ScriptDirectory.from_config(migrate.alembic_config("")).get_revision("0096").down_revision
    assert isinstance(down, str)
    return down


def _run(c: psycopg.Connection[Any], job: Any, to: str) -> None:
    c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = attempt + 1, worker_id = 'w', "
              "lease_expires_at = now() + interval '1 minute', started_at = now() WHERE id = %s", (job,))
    c.execute("UPDATE skiplock.jobs SET state = %s::text::skiplock.job_state, lease_expires_at = NULL, "
              "finished_at = now(), last_error = 'boom' WHERE id = %s", (to, job))


def test_0096_up_and_down_on_a_database_with_jobs_waiting_and_in_every_state(pg_cluster, reference_dump):
    before = _before_dependencies()
    migrate.upgrade(fresh_db(pg_cluster, "mig_deps_ref"), before)
    before_dump = dump_schema(pg_cluster, "mig_deps_ref")
    url = fresh_db(pg_cluster, "mig_deps")
    migrate.upgrade(url, before)
    with psycopg.connect(url, autocommit=True) as c:
        old = {s: c.execute("SELECT skiplock.enqueue('echo')").fetchone()[0]  # type: ignore[index]
               for s in ("queued", "succeeded", "failed", "cancelled")}
        for s in ("succeeded", "failed"):
            _run(c, old[s], s)
        c.execute("SELECT skiplock.cancel(%s)", (old["cancelled"],))
        timelines = {s: c.execute("SELECT state::text, attempt FROM skiplock.job_timeline WHERE job_id = %s "
                                  "ORDER BY step", (j,)).fetchall() for s, j in old.items()}
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_deps") == reference_dump
    with psycopg.connect(url, autocommit=True) as c:
        for s, j in old.items():  # the jobs from before are as they were, with no dependency
            assert c.execute("SELECT state::text, depends_on, has_dependents FROM skiplock.jobs WHERE id = %s",
                             (j,)).fetchone() == (s, None, False)
            assert c.execute("SELECT state::text, attempt FROM skiplock.job_timeline WHERE job_id = %s "
                             "ORDER BY step", (j,)).fetchall() == timelines[s]
        waits = c.execute("SELECT skiplock.enqueue('echo', depends_on => ARRAY[%s::uuid])",
                          (old["queued"],)).fetchone()[0]  # type: ignore[index]
        b = c.execute("SELECT skiplock.enqueue('echo')").fetchone()[0]  # type: ignore[index]
        again = c.execute("SELECT skiplock.enqueue('echo', depends_on => ARRAY[%s::uuid])", (b,)).fetchone()[0]  # type: ignore[index]
        _run(c, b, "failed")  # cancels `again`
        c.execute("SELECT skiplock.retry(%s)", (b,))
        c.execute("SELECT skiplock.retry(%s)", (again,))  # waits again: a history row says so
        assert c.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'waiting'").fetchone() == (2,)
    migrate.downgrade(url, before)
    assert dump_schema(pg_cluster, "mig_deps") == before_dump
    with psycopg.connect(url, autocommit=True) as c:
        for j in (waits, again):
            state, error = c.execute("SELECT state::text, last_error FROM skiplock.jobs WHERE id = %s",
                                     (j,)).fetchone()  # type: ignore[misc]
            assert state == "cancelled" and "downgrade" in error
        assert c.execute("SELECT state::text FROM skiplock.job_timeline WHERE job_id = %s ORDER BY step",
                         (again,)).fetchall() == [("queued",), ("cancelled",), ("queued",), ("cancelled",)]
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            c.execute("SELECT 'waiting'::skiplock.job_state")
        c.execute("SELECT skiplock.enqueue('echo')")
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_deps") == reference_dump
    with psycopg.connect(url, autocommit=True) as c:
        d = c.execute("SELECT skiplock.enqueue('echo', depends_on => ARRAY[%s::uuid])", (old["queued"],)).fetchone()[0]  # type: ignore[index]
        _run(c, old["queued"], "succeeded")
        assert c.execute("SELECT state::text FROM skiplock.jobs WHERE id = %s", (d,)).fetchone() == ("queued",)


# -- 0095: batches ----------------------------------------------------------------------------
def test_0095_batches_up_and_down_on_a_database_with_labelled_jobs_and_batches(pg_cluster, reference_dump):
    """Jobs labelled with a batch_id before 0095 keep it as a label (no batch row is made for
    them, so nothing counts them); batches work at once; going down keeps every job."""
    url = fresh_db(pg_cluster, "mig_batches")
    migrate.upgrade(url, "0094")
    label = "0190a0b0-0000-7000-8000-00000000b001"
    with psycopg.connect(url, autocommit=True) as c:
        for _ in range(3):
            c.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s)", (label,))
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_batches") == reference_dump
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM skiplock.batches").fetchone() == (0,)
        c.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s)", (label,))  # still a label
        b = c.execute("SELECT skiplock.open_batch('echo')").fetchone()[0]
        c.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s) FROM generate_series(1, 2)", (b,))
        c.execute("SELECT skiplock.seal_batch(%s)", (b,))
        assert c.execute("SELECT state, total, queued FROM skiplock.batch_progress").fetchone() == ("active", 2, 2)
    migrate.downgrade(url, "0094")
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM skiplock.jobs WHERE batch_id IS NOT NULL").fetchone() == (6,)
        assert c.execute("SELECT to_regclass('skiplock.batches')").fetchone() == (None,)
        c.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s)", (b,))  # a label again
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_batches") == reference_dump


# -- 0098: parked jobs ------------------------------------------------------------------------------
def test_0098_up_and_down_with_a_parked_job(pg_cluster, reference_dump):
    from alembic.script import ScriptDirectory

    before = ScriptDirectory.from_config(migrate.alembic_config("")).get_revision("0098").down_revision
    assert isinstance(before, str)
    migrate.upgrade(fresh_db(pg_cluster, "mig_park_ref"), before)
    before_dump = dump_schema(pg_cluster, "mig_park_ref")
    url = fresh_db(pg_cluster, "mig_park")
    migrate.upgrade(url, before)
    with psycopg.connect(url, autocommit=True) as c:
        job = c.execute("SELECT skiplock.enqueue('echo')").fetchone()[0]  # type: ignore[index]
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_park") == reference_dump
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                  "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (job,))
        c.execute("UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                  "parked = '{\"reason\": \"look\"}' WHERE id = %s", (job,))
    migrate.downgrade(url, before)
    assert dump_schema(pg_cluster, "mig_park") == before_dump
    with psycopg.connect(url, autocommit=True) as c:  # a parked job cannot exist below: back in its queue
        assert c.execute("SELECT state::text FROM skiplock.jobs WHERE id = %s", (job,)).fetchone() == ("queued",)
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_park") == reference_dump


# -- 0099: a batch's jobs in review --------------------------------------------------------------
def test_0099_up_and_down_with_a_batch_holding_every_pending_kind(pg_cluster, reference_dump):
    """A batch with a parked job, a job waiting on a dependency, a running and a queued job:
    above 0099 each has its own count; below, parked and waiting show as queued, as before."""
    from alembic.script import ScriptDirectory

    before = ScriptDirectory.from_config(migrate.alembic_config("")).get_revision("0099").down_revision
    assert isinstance(before, str)
    migrate.upgrade(fresh_db(pg_cluster, "mig_review_ref"), before)
    before_dump = dump_schema(pg_cluster, "mig_review_ref")
    url = fresh_db(pg_cluster, "mig_review")
    migrate.upgrade(url, before)
    with psycopg.connect(url, autocommit=True) as c:
        b = c.execute("SELECT skiplock.open_batch('echo')").fetchone()[0]  # type: ignore[index]
        ids = [c.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s)", (b,)).fetchone()[0]  # type: ignore[index]
               for _ in range(3)]
        c.execute("SELECT skiplock.enqueue('echo', '{}', batch_id => %s, depends_on => ARRAY[%s::uuid])", (b, ids[0]))
        c.execute("SELECT skiplock.seal_batch(%s)", (b,))
        for job in ids[:2]:
            c.execute("UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                      "lease_expires_at = now() + interval '1 minute' WHERE id = %s", (job,))
        c.execute("UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                  "parked = '{\"reason\": \"look\"}' WHERE id = %s", (ids[1],))
        assert c.execute("SELECT total, queued, running FROM skiplock.batch_progress").fetchone() == (4, 3, 1)
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_review") == reference_dump
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT total, waiting, queued, running, parked FROM skiplock.batch_progress"
                         ).fetchone() == (4, 1, 1, 1, 1)
    migrate.downgrade(url, before)
    assert dump_schema(pg_cluster, "mig_review") == before_dump
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT total, queued, running FROM skiplock.batch_progress").fetchone() == (4, 3, 1)
    migrate.upgrade(url)
    assert dump_schema(pg_cluster, "mig_review") == reference_dump
