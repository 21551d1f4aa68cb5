"""The database holds the rules: transitions, history, constraints, SQL functions."""

from __future__ import annotations

import psycopg
import pytest


def test_update_queued_to_succeeded_from_psql_is_refused(pg_conn, make_job):
    job = make_job(state="queued")
    with pytest.raises(psycopg.errors.CheckViolation, match="cannot go from queued to succeeded"):
        pg_conn.execute("UPDATE skiplock.jobs SET state = 'succeeded' WHERE id = %s", (job,))
    pg_conn.rollback()
    assert pg_conn.execute("SELECT state FROM skiplock.jobs WHERE id = %s", (job,)).fetchone()[0] == "queued"


@pytest.mark.parametrize("old,new", [("succeeded", "queued"), ("succeeded", "failed"), ("failed", "succeeded"),
                                     ("cancelled", "running"), ("queued", "failed"), ("failed", "running")])
def test_forbidden_transitions_are_refused(pg_conn, make_job, old, new):
    job = make_job(state=old)
    with pytest.raises(psycopg.errors.CheckViolation):
        pg_conn.execute("UPDATE skiplock.jobs SET state = %s, worker_id = NULL, lease_expires_at = NULL"
                        " WHERE id = %s", (new, job))


def test_every_transition_is_written_to_history_in_the_same_statement(pg_conn):
    job = pg_conn.execute("SELECT skiplock.enqueue('echo', '{\"message\": \"x\"}')").fetchone()[0]
    pg_conn.execute("UPDATE skiplock.jobs SET state='running', attempt=1, worker_id='w', "
                    "lease_expires_at=now()+interval '30s' WHERE id=%s", (job,))
    pg_conn.execute("UPDATE skiplock.jobs SET state='queued', worker_id=NULL, lease_expires_at=NULL, "
                    "last_error='boom' WHERE id=%s", (job,))
    pg_conn.execute("SELECT skiplock.cancel(%s)", (job,))
    pg_conn.execute("SELECT skiplock.retry(%s)", (job,))
    rows = pg_conn.execute("SELECT state, attempt, worker_id, error FROM skiplock.job_timeline "
                           "WHERE job_id=%s ORDER BY step", (job,)).fetchall()
    assert rows == [("queued", 0, None, None), ("running", 1, "w", None), ("queued", 1, "w", "boom"),
                    ("cancelled", 1, None, None), ("queued", 1, None, None)]


def test_sql_enqueue_validates_and_is_idempotent_per_queue(pg_conn):
    a = pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', idempotency_key => 'k1')").fetchone()[0]
    b = pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', idempotency_key => 'k1')").fetchone()[0]
    c = pg_conn.execute(
        "SELECT skiplock.enqueue('echo', '{}', queue => 'other', idempotency_key => 'k1')").fetchone()[0]
    assert a == b != c
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="priority"):
        pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', priority => 'urgent')")
    pg_conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_queue_format"):
        pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', queue => 'Bad Queue!')")
    pg_conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_max_attempts_positive"):
        pg_conn.execute("SELECT skiplock.enqueue('echo', '{}', max_attempts => 0)")


def test_sql_retry_and_cancel_refuse_wrong_states(pg_conn, make_job):
    done = make_job(state="succeeded")
    with pytest.raises(psycopg.errors.CheckViolation, match="only failed or cancelled"):
        pg_conn.execute("SELECT skiplock.retry(%s)", (done,))
    pg_conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation, match="only waiting, queued or running"):
        pg_conn.execute("SELECT skiplock.cancel(%s)", (done,))
    pg_conn.rollback()
    failed = make_job(state="failed", attempt=3)
    assert pg_conn.execute("SELECT skiplock.retry(%s)", (failed,)).fetchone()[0] == "queued"
    # the attempt counter never resets (it fences claims); the used attempts move to attempt_base
    assert pg_conn.execute("SELECT attempt, attempt_base FROM skiplock.jobs WHERE id=%s",
                           (failed,)).fetchone() == (3, 3)


def test_views_show_stats_dead_letter_and_stuck_jobs(pg_conn, make_job):
    make_job(state="queued")
    make_job(state="failed", attempt=3, last_error="boom")
    make_job(state="running", lease_expires_at=__import__("datetime").datetime(2000, 1, 1,
             tzinfo=__import__("datetime").timezone.utc))
    stats = pg_conn.execute("SELECT queue, ready, running, failed FROM skiplock.queue_stats").fetchall()
    assert stats == [("default", 1, 1, 1)]
    assert pg_conn.execute("SELECT last_error FROM skiplock.dead_letter").fetchall() == [("boom",)]
    assert len(pg_conn.execute("SELECT id FROM skiplock.stuck_jobs").fetchall()) == 1


def test_an_insert_in_any_state_but_queued_is_refused(pg_conn):
    with pytest.raises(psycopg.errors.CheckViolation, match="inserted queued, not succeeded"):
        pg_conn.execute("INSERT INTO skiplock.jobs (task, state) VALUES ('echo', 'succeeded')")
    pg_conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation, match="inserted queued, not running"):
        pg_conn.execute("INSERT INTO skiplock.jobs (task, state, attempt, worker_id, lease_expires_at) "
                        "VALUES ('echo', 'running', 1, 'w', now() + interval '30s')")
    pg_conn.rollback()
    pg_conn.execute("INSERT INTO skiplock.jobs (task) VALUES ('echo')")
    assert pg_conn.execute("SELECT state FROM skiplock.jobs").fetchall() == [("queued",)]


def test_a_running_job_cannot_be_deleted_but_a_finished_one_can(pg_conn, make_job):
    running = make_job(state="running")
    done = make_job(state="succeeded", attempt=1)
    with pytest.raises(psycopg.errors.CheckViolation, match=f"job {running} is running; cancel it"):
        pg_conn.execute("DELETE FROM skiplock.jobs WHERE id = %s", (running,))
    pg_conn.rollback()
    pg_conn.execute("SELECT skiplock.cancel(%s)", (running,))
    assert pg_conn.execute("DELETE FROM skiplock.jobs WHERE id = ANY(%s)", ([running, done],)).rowcount == 2


def test_sql_enqueue_takes_the_recorded_tasks_defaults(pg_conn):
    pg_conn.execute("INSERT INTO skiplock.tasks (name, queue, priority, max_attempts, timeout, args_schema) "
                    "VALUES ('report', 'reports', 0, 7, 12.5, '{}')")
    job = pg_conn.execute("SELECT skiplock.enqueue('report', '{}')").fetchone()[0]
    row = pg_conn.execute("SELECT queue, priority, max_attempts, timeout FROM skiplock.jobs WHERE id = %s",
                          (job,)).fetchone()
    assert row == ("reports", 0, 7, 12.5)
    # what the caller gives wins over the task's defaults; an unknown task gets the built-in ones
    job = pg_conn.execute("SELECT skiplock.enqueue('report', '{}', queue => 'adhoc', priority => 'low', "
                          "max_attempts => 2)").fetchone()[0]
    assert pg_conn.execute("SELECT queue, priority, max_attempts, timeout FROM skiplock.jobs WHERE id = %s",
                           (job,)).fetchone() == ("adhoc", 2, 2, 12.5)
    job = pg_conn.execute("SELECT skiplock.enqueue('unknown_task', '{}')").fetchone()[0]
    assert pg_conn.execute("SELECT queue, priority, max_attempts, timeout FROM skiplock.jobs WHERE id = %s",
                           (job,)).fetchone() == ("default", 1, 3, None)


NAMES = ["a", "_", "A", "0", "9x", ".a", "-a", ":a", "a.b-c_d:e", "a b", "a\n", "\na", "é", "aé", "", "a" * 63,
         "a" * 64, "A" * 128, "A" * 129, "x" * 62 + ".", "Z9", "q-1", "q:1", "Q", "a/b", "a%", "a'", "_9.-", "a\tb"]


def test_names_are_checked_by_the_same_rule_as_the_engines_patterns(pg_conn):
    """The database's name checks (cheaper than one anchored pattern) accept exactly the task
    and queue names the engine's patterns (skiplock.job) accept, for names in every corner."""
    from skiplock.job import QUEUE_RE, TASK_RE

    def accepted(sql: str, name: str) -> bool:
        try:
            with pg_conn.transaction():
                pg_conn.execute(sql, (name,))
                raise psycopg.Rollback()
        except psycopg.errors.CheckViolation:
            return False
        return True

    for name in NAMES:
        queue_ok = QUEUE_RE.match(name) is not None and "\n" not in name
        task_ok = TASK_RE.match(name) is not None and "\n" not in name
        assert accepted("INSERT INTO skiplock.queues (name) VALUES (%s)", name) == queue_ok, repr(name)
        assert accepted("INSERT INTO skiplock.jobs (task, queue) VALUES ('t', %s)", name) == queue_ok, repr(name)
        assert accepted("INSERT INTO skiplock.jobs (task) VALUES (%s)", name) == task_ok, repr(name)
        assert accepted("INSERT INTO skiplock.tasks (name, queue, priority, max_attempts, args_schema) "
                        "VALUES (%s, 'q', 1, 1, '{}')", name) == task_ok, repr(name)
