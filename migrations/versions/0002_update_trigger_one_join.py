"""The update trigger joins the transition tables once per statement (jobs_after_update_v2).

v1 joined OLD and NEW three times per UPDATE statement, once under LIMIT 1, where the
planner chose a nested loop: a claim or acknowledgement of 1,000 jobs cost a million
comparisons (~200 ms). v2 materialises one hash join and reads it three times.
Measured with `make bench` (README, Performance).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = """
CREATE FUNCTION skiplock.jobs_after_update_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  bad_id uuid;
  bad_old skiplock.job_state;
  bad_new skiplock.job_state;
  wake text[];
  q text;
BEGIN
  WITH t AS MATERIALIZED (
    SELECT n.id, o.state AS old_state, n.state AS new_state, o.attempt AS old_attempt, n.attempt,
           coalesce(n.worker_id, o.worker_id) AS worker_id, n.last_error, n.queue, n.run_at
      FROM old_jobs o JOIN new_jobs n ON n.id = o.id
  ), history AS (
    INSERT INTO skiplock.job_history (job_id, state, attempt, worker_id, error, correlation_id)
    SELECT t.id, t.new_state, t.attempt, t.worker_id,
           CASE WHEN t.old_state = 'running' AND t.new_state IN ('queued', 'failed') THEN t.last_error END,
           nullif(current_setting('skiplock.correlation_id', true), '')
      FROM t
     WHERE t.new_state <> t.old_state OR t.attempt <> t.old_attempt
  )
  -- A job back in queued (retry, rescue, release, operator's retry) that is due now
  -- wakes a sleeping worker, once per queue.
  SELECT b.id, b.old_state, b.new_state, w.queues INTO bad_id, bad_old, bad_new, wake
    FROM (SELECT array_agg(DISTINCT t.queue) AS queues FROM t
           WHERE t.new_state = 'queued' AND t.old_state <> 'queued' AND t.run_at <= now()) w
    LEFT JOIN LATERAL (SELECT t.id, t.old_state, t.new_state FROM t
                        WHERE NOT skiplock.transition_allowed(t.old_state, t.new_state) LIMIT 1) b ON true;
  IF bad_id IS NOT NULL THEN
    RAISE EXCEPTION 'skiplock: job % cannot go from % to %', bad_id, bad_old, bad_new
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  IF wake IS NOT NULL THEN
    FOREACH q IN ARRAY wake LOOP
      BEGIN
        PERFORM pg_notify('skiplock_jobs', q);
      EXCEPTION WHEN OTHERS THEN
        NULL;
      END;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER jobs_after_update ON skiplock.jobs;
CREATE TRIGGER jobs_after_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_update_v2();

DROP FUNCTION skiplock.jobs_after_update_v1();
"""

DOWNGRADE = """
CREATE FUNCTION skiplock.jobs_after_update_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  bad record;
  q text;
BEGIN
  SELECT o.id, o.state AS old_state, n.state AS new_state INTO bad
    FROM old_jobs o JOIN new_jobs n ON n.id = o.id
   WHERE NOT skiplock.transition_allowed(o.state, n.state)
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'skiplock: job % cannot go from % to %', bad.id, bad.old_state, bad.new_state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  INSERT INTO skiplock.job_history (job_id, state, attempt, worker_id, error, correlation_id)
  SELECT n.id, n.state, n.attempt,
         coalesce(n.worker_id, o.worker_id),
         CASE WHEN o.state = 'running' AND n.state IN ('queued', 'failed') THEN n.last_error END,
         nullif(current_setting('skiplock.correlation_id', true), '')
    FROM old_jobs o JOIN new_jobs n ON n.id = o.id
   WHERE n.state <> o.state OR n.attempt <> o.attempt;
  -- A job back in queued (retry, rescue, release, operator's retry) that is due now:
  -- wake a sleeping worker, once per queue.
  FOR q IN SELECT DISTINCT n.queue FROM new_jobs n JOIN old_jobs o ON o.id = n.id
            WHERE n.state = 'queued' AND o.state <> 'queued' AND n.run_at <= now() LOOP
    BEGIN
      PERFORM pg_notify('skiplock_jobs', q);
    EXCEPTION WHEN OTHERS THEN
      NULL;
    END;
  END LOOP;
  RETURN NULL;
END
$$;

DROP TRIGGER jobs_after_update ON skiplock.jobs;
CREATE TRIGGER jobs_after_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_update_v1();

DROP FUNCTION skiplock.jobs_after_update_v2();
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
