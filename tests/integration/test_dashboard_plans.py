"""The dashboard's queries stay cheap on a large table: the job search walks the primary key
(or a batch's index) and reads at most SCAN_ROWS rows however rare its matches, the charts
read jobs_finished_at_idx, and none of them scans the table. Checked with custom plans
(parameters known) and the generic plan a prepared statement falls back to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from skiplock.insight import HIGHEST, LOWEST, SCAN_ROWS, id_at
from skiplock.queries.loader import q
from tests.integration.test_claim_plan import explain, explain_generic, walk

ROWS = 200_000
BATCH = uuid.UUID("01a00000-0000-7000-8000-000000000001")




@pytest.fixture
def big(pg_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pg_conn.execute("ALTER TABLE skiplock.jobs DISABLE TRIGGER USER")
    pg_conn.execute("""
        INSERT INTO skiplock.jobs (id, task, args, queue, state, finished_at, last_error, batch_id)
        SELECT skiplock.uuid_v7(now() - make_interval(secs => (%(rows)s - g) * 0.4)),
               CASE WHEN g %% 10 = 0 THEN 'add' ELSE 'echo' END,
               jsonb_build_object('message', 'm' || g), 'q' || (g %% 5),
               s.state::skiplock.job_state,
               CASE WHEN s.state <> 'queued' THEN now() - make_interval(secs => (%(rows)s - g) * 0.4) END,
               CASE WHEN s.state = 'failed' THEN 'RuntimeError: e' || g END,
               CASE WHEN g %% 1000 = 0 THEN %(batch)s::uuid END
          FROM generate_series(1, %(rows)s) g,
               LATERAL (SELECT CASE WHEN g %% 100 = 0 THEN 'failed' WHEN g %% 3 = 0 THEN 'queued'
                                    ELSE 'succeeded' END AS state) s""", {"rows": ROWS, "batch": BATCH})
    pg_conn.execute("ALTER TABLE skiplock.jobs ENABLE TRIGGER USER")
    pg_conn.commit()
    pg_conn.autocommit = True
    pg_conn.execute("VACUUM ANALYZE skiplock.jobs")
    return pg_conn


def search_params(**kw: Any) -> dict[str, Any]:
    return {"before": HIGHEST, "after": LOWEST, "scan": SCAN_ROWS, "limit": 51, "queue": None, "state": None,
            "task": None, "text": None, "batch_id": None, **kw}


def no_seq_scan(nodes: list[dict[str, Any]]) -> set[str]:
    assert [n for n in nodes if n["Node Type"] == "Seq Scan"] == [], nodes
    return {n.get("Index Name", "") for n in nodes}


CASES = {
    "all": {}, "state": {"state": "failed"}, "queue+task": {"queue": "q3", "task": "add"},
    "text": {"text": "runtimeerror: e4200"},
    "time range": {"after": id_at(datetime.now(UTC) - timedelta(hours=2)),
                   "before": id_at(datetime.now(UTC) - timedelta(hours=1))},
}


def test_the_job_search_walks_an_index_and_reads_at_most_scan_rows(big: psycopg.Connection[Any]):
    for case, given in CASES.items():
        params = search_params(**given)
        assert "jobs_pkey" in no_seq_scan(explain(big, q("search_jobs"), params)), case
        assert "jobs_pkey" in no_seq_scan(explain_generic(big, "s", q("search_jobs"), params)), case
        ends = {k: params[k] for k in ("before", "after", "scan")}
        assert "jobs_pkey" in no_seq_scan(explain(big, q("window_end"), ends)), case
    # however rare the matches, one page reads SCAN_ROWS rows at most
    row = big.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {q('search_jobs')}",
                      search_params(text="matches-no-job")).fetchone()
    assert row is not None
    scans = [n for n in walk(row[0][0]["Plan"]) if n.get("Index Name") == "jobs_pkey"]
    assert scans and sum(n["Actual Rows"] for n in scans) == SCAN_ROWS < ROWS
    # a batch's jobs come from its index, not from a walk past every newer job
    params = search_params(batch_id=BATCH)
    assert "jobs_batch_idx" in no_seq_scan(explain(big, q("search_batch_jobs"), params))
    assert no_seq_scan(explain_generic(big, "b", q("search_batch_jobs"), params)) & {"jobs_batch_idx", "jobs_pkey"}
    ends = {"batch_id": BATCH, "before": HIGHEST, "after": LOWEST, "scan": SCAN_ROWS}
    assert "jobs_batch_idx" in no_seq_scan(explain(big, q("batch_window_end"), ends))


def test_the_charts_read_the_finished_at_index(big: psycopg.Connection[Any]):
    now = datetime.now(UTC)
    params = {"since": now - timedelta(hours=24), "until": now}
    assert "jobs_finished_at_idx" in no_seq_scan(explain(big, q("finished_per_minute"), params))
    assert "jobs_finished_at_idx" in no_seq_scan(explain_generic(big, "f", q("finished_per_minute"), params))
