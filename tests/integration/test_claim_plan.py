"""The hot path's plans stay index scans on a large table full of dead tuples, whatever the
statistics say: the claim reads jobs_claim_idx in claim order (never the whole table), and an
acknowledgement probes the primary key once per job (never a scan of jobs per input row).
Checked as a custom plan (parameters known) and as the generic plan a prepared statement
falls back to after five runs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from skiplock.queries.loader import q

QUEUED = 30_000
FINISHED = 150_000
CHURNED = 15_000  # claimed and acknowledged (dead index entries at the head of jobs_claim_idx)

CLAIM_PARAMS: dict[str, Any] = {"worker_id": "w", "queues": None, "limit": 100, "lease_seconds": 30.0, "turn": 0,
                                "now": None}


def walk(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from walk(child)


def explain(conn: psycopg.Connection[Any], query: str, params: Any) -> list[dict[str, Any]]:
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    return list(walk(row[0][0]["Plan"]))


def explain_generic(conn: psycopg.Connection[Any], name: str, query: str,
                    params: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan a prepared statement uses once PostgreSQL settles on a generic plan."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)[sbt]", number, query)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE {name} AS {text}")
    try:
        values = ", ".join("NULL" if params[k] is None else f"'{_literal(params[k])}'" for k in order)
        row = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({values})").fetchone()
        assert row is not None
        return list(walk(row[0][0]["Plan"]))
    finally:
        conn.execute(f"DEALLOCATE {name}")
        conn.execute("RESET plan_cache_mode")


def _literal(v: Any) -> str:
    if isinstance(v, list):
        return "{" + ",".join(str(x) for x in v) + "}"
    return str(v)


def scans_of_jobs(nodes: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(n["Node Type"], n.get("Index Name")) for n in nodes
            if n.get("Relation Name") == "jobs" and n["Node Type"] != "ModifyTable"]


@pytest.fixture
def churned(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A big jobs table: finished jobs, a queued backlog, and the dead tuples of many claims
    and acknowledgements that no vacuum has removed."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("ALTER TABLE skiplock.jobs SET (autovacuum_enabled = false)")
        c.execute("ALTER TABLE skiplock.jobs DISABLE TRIGGER jobs_after_insert")  # history is not the point here
        c.execute("ALTER TABLE skiplock.jobs DISABLE TRIGGER jobs_insert_queued")  # finished rows, loaded directly
        c.execute("INSERT INTO skiplock.jobs (task, state, finished_at) "
                  "SELECT 'noop', 'succeeded', now() FROM generate_series(1, %s)", (FINISHED,))
        c.execute("INSERT INTO skiplock.jobs (task, priority) SELECT 'noop', (g %% 3)::smallint "
                  "FROM generate_series(1, %s) g", (QUEUED + CHURNED,))
        c.execute("ALTER TABLE skiplock.jobs ENABLE TRIGGER jobs_after_insert")
        c.execute("ALTER TABLE skiplock.jobs ENABLE TRIGGER jobs_insert_queued")
        c.execute("ANALYZE skiplock.jobs")  # statistics from before any job ran, as after a bulk load
        for _ in range(CHURNED // 1000):
            claimed = c.execute(q("claim_batch"), dict(CLAIM_PARAMS, limit=1000)).fetchall()
            ids: list[uuid.UUID] = [r[0] for r in claimed]
            c.execute(q("finish_many_if_held"), {
                "worker_id": "w", "ids": ids, "attempts": [r[5] for r in claimed], "states": ["succeeded"] * len(ids),
                "results": None, "errors": None, "run_ats": None, "checkpoints": None, "progresses": None,
                "now": None})
        churn = c.execute("SELECT count(*) FROM skiplock.jobs WHERE attempt = 1 AND state = 'succeeded'").fetchone()
        assert churn == (CHURNED,)  # each left two dead versions behind (queued, running)
        yield c


def branch(plan: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The nodes of the claim's CTE `name` (one, many, every)."""
    for node in walk(plan):
        if node.get("Subplan Name") == f"CTE {name}":
            return list(walk(node))
    raise AssertionError(f"no CTE {name} in the plan")


def root(conn: psycopg.Connection[Any], params: Any, *, generic: bool = False,
         query: str = "claim_batch") -> dict[str, Any]:
    if generic:
        nodes = explain_generic(conn, "claim", q(query), params)
    else:
        nodes = explain(conn, q(query), params)
    return nodes[0]


def check_claim_plan(plan: dict[str, Any]) -> None:
    nodes = list(walk(plan))
    scans = scans_of_jobs(nodes)
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    # the UPDATE finds the claimed rows by primary key, not by scanning the table
    assert ("Index Scan", "jobs_pkey") in scans, scans
    # one queue, or every queue: the claim order comes from the index, no sort of the backlog
    for name, index in (("one", "jobs_queue_claim_idx"), ("every", "jobs_claim_idx")):
        part = branch(plan, name)
        assert ("Index Scan", index) in scans_of_jobs(part), (name, scans_of_jobs(part))
        assert not any(n["Node Type"] == "Sort" for n in part), f"{name}: the claim order must come from the index"
    # several queues: each queue's first rows in index order (a Limit over an ordered index scan),
    # then primary-key probes and a sort of those candidates only
    assert ("Index Scan", "jobs_pkey") in scans_of_jobs(branch(plan, "many")), scans_of_jobs(branch(plan, "many"))
    part = branch(plan, "candidates")
    # (the innermost Limits: a keyed queue's branch sorts its first rows again, per key, above them)
    limited = [n for n in part if n["Node Type"] == "Limit"
               and any(c.get("Index Name") == "jobs_queue_claim_idx" for c in walk(n))
               and not any(c["Node Type"] in ("LockRows", "Limit") for c in list(walk(n))[1:])]
    assert limited, scans_of_jobs(part)
    inside = [(m["Node Type"], m.get("Index Name")) for n in limited for m in walk(n)]
    assert not any(kind == "Sort" for kind, _ in inside), ("each queue's range is read in order", inside)


@pytest.mark.parametrize("query", ["claim_batch", "claim_batch_limited"])
def test_claim_reads_the_partial_indexes_in_order_on_a_big_churned_table(churned, query):
    for generic in (False, True):
        check_claim_plan(root(churned, CLAIM_PARAMS, generic=generic, query=query))
        check_claim_plan(root(churned, dict(CLAIM_PARAMS, queues=["default"]), generic=generic, query=query))
    churned.execute("ANALYZE skiplock.jobs")  # and with statistics that know about the churn
    check_claim_plan(root(churned, CLAIM_PARAMS, query=query))


def rows_read(plan: dict[str, Any]) -> int:
    """Rows the claim's scans of jobs produced or threw away (executed plan)."""
    return sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0)
               + n.get("Rows Removed by Index Recheck", 0)
               for n in walk(plan) if n.get("Relation Name") == "jobs" and n["Node Type"] != "ModifyTable")


@pytest.mark.parametrize("served", [["urgent"], ["urgent", "other"], None], ids=["its-queue", "its-queues", "all"])
def test_a_claim_never_reads_what_waits_in_queues_it_does_not_take_from(churned, served):
    """30,000 jobs wait in queue `default`, paused or served by other workers: a claim of the
    one `urgent` job reads about as many rows as there are jobs to take, not the backlog."""
    c = churned
    c.execute("INSERT INTO skiplock.jobs (task, queue) VALUES ('noop', 'urgent'), ('noop', 'other')")
    if served is None:
        c.execute("INSERT INTO skiplock.queues (name, paused) VALUES ('default', true)")
    params = dict(CLAIM_PARAMS, queues=served, limit=10)
    for attempt in range(2):  # as planned first, and again once the churn is in the statistics
        with c.transaction(force_rollback=True):
            row = c.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {q('claim_batch')}", params).fetchone()
            assert row is not None
            plan = row[0][0]["Plan"]
            claimed = c.execute("SELECT queue FROM skiplock.jobs WHERE state = 'running' ORDER BY queue").fetchall()
            assert claimed == ([("urgent",)] if served == ["urgent"] else [("other",), ("urgent",)])
            assert rows_read(plan) <= 20, rows_read(plan)
        if attempt == 0:
            c.execute("ANALYZE skiplock.jobs")


def test_acknowledgement_probes_the_primary_key_whatever_the_statistics(churned):
    claimed = churned.execute(q("claim_batch"), dict(CLAIM_PARAMS, limit=1000)).fetchall()
    params = {"worker_id": "w", "ids": [r[0] for r in claimed], "attempts": [r[5] for r in claimed],
              "states": ["succeeded"] * len(claimed), "results": None, "errors": None, "run_ats": None,
              "checkpoints": None, "progresses": None, "now": None}
    for nodes in (explain(churned, q("finish_many_if_held"), params),
                  explain_generic(churned, "finish", q("finish_many_if_held"), params)):
        scans = scans_of_jobs(nodes)  # the lock, the update, and the check of the rows not done
        assert scans and set(scans) == {("Index Scan", "jobs_pkey")}, scans
