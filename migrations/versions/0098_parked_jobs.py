"""Jobs parked for a person: a handler parks its job (ctx.park(reason, data) or raise Park) and
the job leaves the claim path in state `waiting`, without failing and with its attempt given
back, until an operator resumes it (optionally with data its next attempt receives as
ctx.review), fails it or cancels it.

Parking reuses the `waiting` state of dependencies: a waiting job has unfinished dependencies
or is parked (`parked` holds the reason, the handler's data, when and by which attempt; it is
cleared, by a trigger that only parked rows fire, whenever the job leaves `waiting`). running ->
waiting (a park) and waiting -> failed (an operator fails it) become allowed; the history row
of both carries the reason.

Revision ID: 0098
Revises: 0097
Create Date: 2026-12-01
"""

from alembic import op

revision = "0098"
down_revision = "0097"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
ALTER TABLE skiplock.jobs
    ADD COLUMN parked jsonb,
    ADD COLUMN review jsonb,
    DROP CONSTRAINT jobs_waiting_has_dependencies,
    ADD CONSTRAINT jobs_waiting_has_a_reason CHECK (state <> 'waiting' OR depends_on IS NOT NULL OR parked IS NOT NULL),
    ADD CONSTRAINT jobs_parked_waiting CHECK (parked IS NULL OR state = 'waiting');

CREATE INDEX jobs_parked_idx ON skiplock.jobs (id) WHERE parked IS NOT NULL;

CREATE OR REPLACE FUNCTION skiplock.transition_allowed(old_state skiplock.job_state, new_state skiplock.job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_state
    WHEN 'waiting'   THEN new_state IN ('waiting', 'queued', 'cancelled', 'failed')
    WHEN 'queued'    THEN new_state IN ('queued', 'running', 'cancelled')
    WHEN 'running'   THEN new_state IN ('running', 'queued', 'succeeded', 'failed', 'cancelled', 'waiting')
    WHEN 'failed'    THEN new_state IN ('failed', 'queued', 'waiting')
    WHEN 'cancelled' THEN new_state IN ('cancelled', 'queued', 'waiting')
    ELSE false  -- succeeded is final
  END
$$;

CREATE OR REPLACE FUNCTION skiplock.jobs_transition_v1() RETURNS trigger
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
            CASE WHEN (OLD.state = 'running' AND NEW.state IN ('queued', 'failed', 'waiting'))
                   OR (OLD.state = 'waiting' AND NEW.state = 'failed') THEN NEW.last_error END,
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

-- A parked job that leaves `waiting` (resumed, failed, cancelled, by any path) is parked no more.
CREATE FUNCTION skiplock.jobs_unpark_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.parked := NULL;
  RETURN NEW;
END
$$;

CREATE TRIGGER jobs_unpark BEFORE UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.parked IS NOT NULL AND NEW.state <> 'waiting')
    EXECUTE FUNCTION skiplock.jobs_unpark_v1();

-- A parked job waits for a person, not for its dependencies (they have all succeeded).
DROP TRIGGER jobs_relink_dependencies ON skiplock.jobs;
CREATE TRIGGER jobs_relink_dependencies AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state <> 'waiting' AND NEW.state = 'waiting' AND NEW.parked IS NULL)
    EXECUTE FUNCTION skiplock.jobs_link_dependencies_v1();

-- An operator resumes a parked job: back in its queue, due now; `data` (any JSON, or NULL) is
-- what its next attempt receives as ctx.review.
CREATE FUNCTION skiplock.resume(job_id uuid, data jsonb DEFAULT NULL) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE skiplock.jobs j SET state = 'queued', review = data, run_at = now()
   WHERE j.id = job_id AND j.state = 'waiting' AND j.parked IS NOT NULL;
  IF NOT FOUND THEN
    PERFORM 1 FROM skiplock.jobs j WHERE j.id = job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    RAISE EXCEPTION 'skiplock: job % is not parked; only a parked job can be resumed', job_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  RETURN 'queued';
END
$$;

-- An operator fails a parked job for good (it joins the dead-letter set; retry revives it).
CREATE FUNCTION skiplock.fail(job_id uuid, reason text DEFAULT NULL) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE skiplock.jobs j
     SET state = 'failed', finished_at = now(),
         last_error = coalesce(reason, 'failed by an operator after review: ' || (j.parked->>'reason'))
   WHERE j.id = job_id AND j.state = 'waiting' AND j.parked IS NOT NULL;
  IF NOT FOUND THEN
    PERFORM 1 FROM skiplock.jobs j WHERE j.id = job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    RAISE EXCEPTION 'skiplock: job % is not parked; only a parked job can be failed by hand', job_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  RETURN 'failed';
END
$$;

-- The jobs waiting for a person, oldest first.
CREATE VIEW skiplock.parked_jobs AS
SELECT j.id, j.task, j.queue, j.batch_id, j.parked->>'reason' AS reason, j.parked->'data' AS data,
       (j.parked->>'at')::timestamptz AS parked_at, (j.parked->>'attempt')::integer AS parked_attempt,
       j.parked->>'worker_id' AS worker_id, j.args, j.correlation_id
  FROM skiplock.jobs j
 WHERE j.parked IS NOT NULL;
"""

DOWNGRADE = r"""
-- Parked jobs cannot exist below this revision: they go back to their queue, as if resumed.
UPDATE skiplock.jobs SET state = 'queued', run_at = now() WHERE parked IS NOT NULL;
DROP VIEW skiplock.parked_jobs;
DROP FUNCTION skiplock.fail(uuid, text);
DROP FUNCTION skiplock.resume(uuid, jsonb);
DROP TRIGGER jobs_relink_dependencies ON skiplock.jobs;
CREATE TRIGGER jobs_relink_dependencies AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state <> 'waiting' AND NEW.state = 'waiting')
    EXECUTE FUNCTION skiplock.jobs_link_dependencies_v1();
DROP TRIGGER jobs_unpark ON skiplock.jobs;
DROP FUNCTION skiplock.jobs_unpark_v1();
CREATE OR REPLACE FUNCTION skiplock.jobs_transition_v1() RETURNS trigger
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

CREATE OR REPLACE FUNCTION skiplock.transition_allowed(old_state skiplock.job_state, new_state skiplock.job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_state
    WHEN 'waiting'   THEN new_state IN ('waiting', 'queued', 'cancelled')
    WHEN 'queued'    THEN new_state IN ('queued', 'running', 'cancelled')
    WHEN 'running'   THEN new_state IN ('running', 'queued', 'succeeded', 'failed', 'cancelled')
    WHEN 'failed'    THEN new_state IN ('failed', 'queued', 'waiting')
    WHEN 'cancelled' THEN new_state IN ('cancelled', 'queued', 'waiting')
    ELSE false  -- succeeded is final
  END
$$;

DROP INDEX skiplock.jobs_parked_idx;
ALTER TABLE skiplock.jobs
    DROP CONSTRAINT jobs_parked_waiting,
    DROP CONSTRAINT jobs_waiting_has_a_reason,
    ADD CONSTRAINT jobs_waiting_has_dependencies CHECK (state <> 'waiting' OR depends_on IS NOT NULL),
    DROP COLUMN review,
    DROP COLUMN parked;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
