"""The last two jobs of a batch end in two workers at the same instant: the batch ends once
and its completion job exists exactly once, every time."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from skiplock.queries.loader import q

ROUNDS = 200


def new_batch(c: psycopg.Connection[Any]) -> uuid.UUID:
    with c.transaction():
        b = c.execute("SELECT skiplock.open_batch('batch_done', on_complete_queue => 'reports') AS id").fetchone()["id"]
        c.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}', batch_id => %s) "
                  "FROM generate_series(1, 2)", (b,))
        c.execute("SELECT skiplock.seal_batch(%s)", (b,))
    return b


def claim_one(c: psycopg.Connection[Any], worker: str) -> dict[str, Any]:
    [job] = c.execute(q("claim_batch"), {"worker_id": worker, "queues": ["default"], "limit": 1,
                                         "lease_seconds": 60, "now": None, "turn": 0}).fetchall()
    return job


def finish(c: psycopg.Connection[Any], worker: str, job: dict[str, Any]) -> None:
    [(_, done)] = c.execute(q("finish_many_if_held"), {
        "worker_id": worker, "ids": [job["id"]], "attempts": [job["attempt"]], "states": ["succeeded"],
        "results": None, "errors": None, "run_ats": None, "checkpoints": None, "progresses": None,
        "now": None}).fetchall()
    assert done


def test_the_last_two_jobs_ending_at_once_enqueue_the_completion_job_exactly_once(db_url):
    """Even rounds: both acknowledgements start together (a barrier). Odd rounds: the second
    one provably waits on the first's lock on the batch row, which then commits."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as main, \
            psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as a, \
            psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as b:
        b_pid = b.info.backend_pid
        waited = 0
        for i in range(ROUNDS):
            batch = new_batch(main)
            ja, jb = claim_one(a, "wa"), claim_one(b, "wb")
            if i % 2 == 0:
                gate = threading.Barrier(2)

                def ack(c: psycopg.Connection[Any], worker: str, job: dict[str, Any]) -> None:
                    gate.wait()
                    finish(c, worker, job)
                threads = [threading.Thread(target=ack, args=(a, "wa", ja)),
                           threading.Thread(target=ack, args=(b, "wb", jb))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:
                with a.transaction():
                    finish(a, "wa", ja)
                    t = threading.Thread(target=finish, args=(b, "wb", jb))
                    t.start()
                    while not main.execute("SELECT wait_event_type = 'Lock' AS w FROM pg_stat_activity "
                                           "WHERE pid = %s", (b_pid,)).fetchone()["w"]:
                        pass  # until b's statement is queued behind a's lock
                    waited += 1
                t.join()
            row = main.execute(
                "SELECT b.state, b.succeeded, b.completion_job_id, "
                "       (SELECT count(*) FROM skiplock.jobs j WHERE j.task = 'batch_done' "
                "          AND j.args->'batch'->>'id' = b.id::text) AS completions "
                "  FROM skiplock.batches b WHERE b.id = %s", (batch,)).fetchone()
            assert (row["state"], row["succeeded"], row["completions"]) == ("succeeded", 2, 1), f"round {i}"
            assert row["completion_job_id"] is not None
        assert waited == ROUNDS // 2
