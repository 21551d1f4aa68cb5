"""History without redundancy: the job row tells the happy path, job_history the rest.

- skiplock.jobs.correlation_id: the submitting request's id, set at insert (the engine passes
  it; plain SQL takes the transaction's skiplock.correlation_id setting by default).
- worker_id stays after the run: it names the worker of the latest claim. The CHECK
  jobs_running_has_lease now ties only the lease to the running state (and a running job to a
  worker); the engine's fences say `lease_expires_at IS NOT NULL`.
- The statement-level triggers (history for every transition, and the insert NOTIFY) become
  row triggers with WHEN clauses: an insert, a claim and a success call no trigger function.
  Any other transition calls jobs_transition_v1 for its row: it refuses a forbidden one,
  writes the run that ends and the transition to job_history, and wakes the workers of a job
  back in its queue.
- skiplock.job_timeline merges the row and its history rows into the job's transitions.
- skiplock.retry keeps the 98 latest history rows (the submission is on the row now), so the
  timeline still holds at most 100 entries after a retry; skiplock.cancel keeps worker_id.

Existing history is converted: the submission row's correlation id moves to the job row and
the row is deleted; for a running or succeeded job its latest `running` row (and its
`succeeded` row) are deleted, since the row holds them; a finished job's worker_id is set from
its latest `running` row; history rows without a correlation id take the job's. The
downgrade rebuilds the full history from the timeline, in order.

Revision ID: 0092
Revises: 0091
Create Date: 2026-12-03
"""

from alembic import op

revision = "0092"
down_revision = "0091"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
DROP TRIGGER jobs_after_update ON skiplock.jobs;
DROP TRIGGER jobs_after_insert ON skiplock.jobs;
DROP FUNCTION skiplock.jobs_after_update_v2();
DROP FUNCTION skiplock.jobs_after_insert_v2();

ALTER TABLE skiplock.jobs ADD COLUMN correlation_id text;
ALTER TABLE skiplock.jobs DROP CONSTRAINT jobs_running_has_lease;
ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_running_has_lease CHECK (
    (state = 'running') = (lease_expires_at IS NOT NULL) AND (state <> 'running' OR worker_id IS NOT NULL));

-- The submission's correlation id moves to the row, and its history row goes.
UPDATE skiplock.jobs j SET correlation_id = f.correlation_id
  FROM (SELECT DISTINCT ON (h.job_id) h.job_id, h.state, h.correlation_id
          FROM skiplock.job_history h ORDER BY h.job_id, h.id) f
 WHERE f.job_id = j.id AND f.state = 'queued' AND f.correlation_id IS NOT NULL;
DELETE FROM skiplock.job_history h
 USING (SELECT DISTINCT ON (x.job_id) x.id, x.state FROM skiplock.job_history x ORDER BY x.job_id, x.id) f
 WHERE h.id = f.id AND f.state = 'queued';

-- worker_id names the worker of the latest claim.
UPDATE skiplock.jobs j SET worker_id = r.worker_id
  FROM (SELECT DISTINCT ON (h.job_id) h.job_id, h.worker_id
          FROM skiplock.job_history h WHERE h.state = 'running' ORDER BY h.job_id, h.id DESC) r
 WHERE r.job_id = j.id AND j.state <> 'running' AND r.worker_id IS NOT NULL;

-- The latest run of a running or succeeded job, and a success, are on the row.
DELETE FROM skiplock.job_history h
 USING (SELECT DISTINCT ON (x.job_id) x.id
          FROM skiplock.job_history x JOIN skiplock.jobs j ON j.id = x.job_id
         WHERE x.state = 'running' AND j.state IN ('running', 'succeeded')
         ORDER BY x.job_id, x.id DESC) c
 WHERE h.id = c.id;
DELETE FROM skiplock.job_history h USING skiplock.jobs j
 WHERE h.job_id = j.id AND j.state = 'succeeded' AND h.state = 'succeeded';

-- Worker-side rows carry the job's correlation id.
UPDATE skiplock.job_history h SET correlation_id = j.correlation_id
  FROM skiplock.jobs j
 WHERE h.job_id = j.id AND h.correlation_id IS NULL AND j.correlation_id IS NOT NULL;

ALTER TABLE skiplock.jobs ALTER COLUMN correlation_id
    SET DEFAULT nullif(current_setting('skiplock.correlation_id', true), '');

CREATE FUNCTION skiplock.jobs_transition_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  -- A transition made within a request carries that request's id; any other (a worker's) the
  -- id of the request that submitted the job.
  cid text := coalesce(nullif(current_setting('skiplock.correlation_id', true), ''), NEW.correlation_id);
BEGIN
  IF NOT skiplock.transition_allowed(OLD.state, NEW.state) THEN
    RAISE EXCEPTION 'skiplock: job % cannot go from % to %', NEW.id, OLD.state, NEW.state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  -- The run that ends here: the next claim overwrites started_at, worker_id and attempt. A
  -- worker claimed it, so it carries the job's own correlation id.
  IF OLD.state = 'running' AND (NEW.state <> 'running' OR NEW.attempt <> OLD.attempt) THEN
    INSERT INTO skiplock.job_history (job_id, state, at, attempt, worker_id, correlation_id)
    VALUES (OLD.id, 'running', coalesce(OLD.started_at, clock_timestamp()), OLD.attempt, OLD.worker_id,
            OLD.correlation_id);
  END IF;
  IF NEW.state <> 'running' THEN
    INSERT INTO skiplock.job_history (job_id, state, attempt, worker_id, error, correlation_id)
    VALUES (NEW.id, NEW.state, NEW.attempt,
            CASE WHEN OLD.state = 'running' THEN OLD.worker_id END,
            CASE WHEN OLD.state = 'running' AND NEW.state IN ('queued', 'failed') THEN NEW.last_error END,
            cid);
  END IF;
  -- Back in its queue (retry, rescue, release, operator's retry) and due: wake a sleeping
  -- worker (Postgres folds identical notifications within a transaction).
  IF NEW.state = 'queued' AND OLD.state <> 'queued' AND NEW.run_at <= now() THEN
    PERFORM pg_notify('skiplock_jobs', NEW.queue);
  END IF;
  RETURN NULL;
END
$$;

CREATE FUNCTION skiplock.jobs_wake_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('skiplock_jobs', NEW.queue);
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_after_update AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state = 'succeeded'
                       OR ((OLD.state <> NEW.state OR OLD.attempt <> NEW.attempt)
                           AND NOT (OLD.state = 'queued' AND NEW.state = 'running')
                           AND NOT (OLD.state = 'running' AND NEW.state = 'succeeded')))
    EXECUTE FUNCTION skiplock.jobs_transition_v1();

CREATE TRIGGER jobs_after_insert AFTER INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.run_at <= now() AND current_setting('skiplock.notify', true) IS DISTINCT FROM 'deferred')
    EXECUTE FUNCTION skiplock.jobs_wake_v1();

CREATE OR REPLACE FUNCTION skiplock.retry(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
BEGIN
  SELECT j.state INTO s FROM skiplock.jobs j WHERE j.id = retry.job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', retry.job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('failed', 'cancelled') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only failed or cancelled jobs can be retried', retry.job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  -- Keep the 98 latest rows; the UPDATE below adds the 99th, the submission is the 100th entry.
  DELETE FROM skiplock.job_history h
   WHERE h.job_id = retry.job_id
     AND h.id < (SELECT l.id FROM skiplock.job_history l WHERE l.job_id = retry.job_id
                  ORDER BY l.id DESC OFFSET 97 LIMIT 1);
  UPDATE skiplock.jobs j
     SET state = 'queued', attempt_base = j.attempt, run_at = now(), finished_at = NULL, result = NULL
   WHERE j.id = retry.job_id;
  RETURN 'queued';
END
$$;

CREATE OR REPLACE FUNCTION skiplock.cancel(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
  a integer;
BEGIN
  SELECT j.state, j.attempt INTO s, a FROM skiplock.jobs j WHERE j.id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('queued', 'running') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only queued or running jobs can be cancelled', job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  UPDATE skiplock.jobs j
     SET state = 'cancelled', lease_expires_at = NULL, finished_at = now()
   WHERE j.id = job_id;
  IF s = 'running' THEN
    BEGIN
      PERFORM pg_notify('skiplock_cancel', job_id::text || ':' || a);
    EXCEPTION WHEN OTHERS THEN
      NULL;  -- a failed NOTIFY never fails the cancel: the heartbeat delivers it
    END;
  END IF;
  RETURN 'cancelled';
END
$$;

CREATE VIEW skiplock.job_timeline AS
SELECT t.job_id, row_number() OVER (PARTITION BY t.job_id ORDER BY t.part, t.seq) AS step,
       t.state, t.at, t.attempt, t.worker_id, t.error, t.correlation_id
  FROM (SELECT j.id AS job_id, 0 AS part, 0::bigint AS seq, 'queued'::skiplock.job_state AS state,
               j.created_at AS at, 0 AS attempt, NULL::text AS worker_id, NULL::text AS error, j.correlation_id
          FROM skiplock.jobs j
        UNION ALL
        SELECT h.job_id, 1, h.id, h.state, h.at, h.attempt, h.worker_id, h.error, h.correlation_id
          FROM skiplock.job_history h
        UNION ALL
        SELECT j.id, 2, 0, 'running', coalesce(j.started_at, j.created_at), j.attempt, j.worker_id, NULL,
               j.correlation_id
          FROM skiplock.jobs j WHERE j.state IN ('running', 'succeeded')
        UNION ALL
        SELECT j.id, 3, 0, 'succeeded', coalesce(j.finished_at, j.started_at, j.created_at), j.attempt,
               j.worker_id, NULL, j.correlation_id
          FROM skiplock.jobs j WHERE j.state = 'succeeded') t;
"""

DOWNGRADE = r"""
-- The full history again, in timeline order, ids renumbered.
CREATE TEMPORARY TABLE skiplock_timeline ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY t.job_id, t.step) AS id, t.job_id, t.state, t.at, t.attempt, t.worker_id,
       t.error, t.correlation_id
  FROM skiplock.job_timeline t;
TRUNCATE skiplock.job_history;
INSERT INTO skiplock.job_history (id, job_id, state, at, attempt, worker_id, error, correlation_id)
OVERRIDING SYSTEM VALUE
SELECT id, job_id, state, at, attempt, worker_id, error, correlation_id FROM skiplock_timeline;
SELECT setval(pg_get_serial_sequence('skiplock.job_history', 'id'),
              (SELECT coalesce(max(id), 0) + 1 FROM skiplock.job_history), false);

DROP VIEW skiplock.job_timeline;
DROP TRIGGER jobs_after_update ON skiplock.jobs;
DROP TRIGGER jobs_after_insert ON skiplock.jobs;
DROP FUNCTION skiplock.jobs_transition_v1();
DROP FUNCTION skiplock.jobs_wake_v1();

UPDATE skiplock.jobs SET worker_id = NULL WHERE state <> 'running' AND worker_id IS NOT NULL;
ALTER TABLE skiplock.jobs DROP CONSTRAINT jobs_running_has_lease;
ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_running_has_lease CHECK (
    (state = 'running') = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL));
ALTER TABLE skiplock.jobs DROP COLUMN correlation_id;

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

CREATE FUNCTION skiplock.jobs_after_insert_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  q text;
BEGIN
  INSERT INTO skiplock.job_history (job_id, state, attempt, correlation_id)
  SELECT n.id, n.state, n.attempt, nullif(current_setting('skiplock.correlation_id', true), '')
    FROM new_jobs n;
  -- Wake sleeping workers: one NOTIFY per queue per statement (Postgres folds identical
  -- notifications within a transaction). A failed NOTIFY must never fail the insert.
  IF current_setting('skiplock.notify', true) IS DISTINCT FROM 'deferred' THEN
    FOR q IN SELECT DISTINCT n.queue FROM new_jobs n WHERE n.state = 'queued' AND n.run_at <= now() LOOP
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

CREATE TRIGGER jobs_after_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_update_v2();

CREATE TRIGGER jobs_after_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_insert_v2();

CREATE OR REPLACE FUNCTION skiplock.retry(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
BEGIN
  SELECT j.state INTO s FROM skiplock.jobs j WHERE j.id = retry.job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', retry.job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('failed', 'cancelled') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only failed or cancelled jobs can be retried', retry.job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  -- Keep the first row (the submission) and the 98 latest; the UPDATE below adds the 100th.
  DELETE FROM skiplock.job_history h
   WHERE h.job_id = retry.job_id
     AND h.id > (SELECT min(f.id) FROM skiplock.job_history f WHERE f.job_id = retry.job_id)
     AND h.id < (SELECT l.id FROM skiplock.job_history l WHERE l.job_id = retry.job_id
                  ORDER BY l.id DESC OFFSET 97 LIMIT 1);
  UPDATE skiplock.jobs j
     SET state = 'queued', attempt_base = j.attempt, run_at = now(), finished_at = NULL, result = NULL
   WHERE j.id = retry.job_id;
  RETURN 'queued';
END
$$;

CREATE OR REPLACE FUNCTION skiplock.cancel(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
  a integer;
BEGIN
  SELECT j.state, j.attempt INTO s, a FROM skiplock.jobs j WHERE j.id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('queued', 'running') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only queued or running jobs can be cancelled', job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  UPDATE skiplock.jobs j
     SET state = 'cancelled', worker_id = NULL, lease_expires_at = NULL, finished_at = now()
   WHERE j.id = job_id;
  IF s = 'running' THEN
    BEGIN
      PERFORM pg_notify('skiplock_cancel', job_id::text || ':' || a);
    EXCEPTION WHEN OTHERS THEN
      NULL;  -- a failed NOTIFY never fails the cancel: the heartbeat delivers it
    END;
  END IF;
  RETURN 'cancelled';
END
$$;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
