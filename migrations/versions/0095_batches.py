"""Batches: a group of jobs with exact live counts, a final state and one completion job.

skiplock.batches holds each batch's counts (its queued and running jobs together as `pending`;
the view splits them by counting its running jobs in the new partial index
jobs_batch_running_idx); three statement-level triggers on skiplock.jobs
(skiplock.batches_count_v1, with transition tables) keep them equal to its jobs' states in the
statement that changes the jobs, and end the batch with its completion job in the transaction
that ends its last job. Functions open_batch, seal_batch, cancel_batch, retry_batch and the view
batch_progress. Existing jobs keep their batch_id as a label: no batch row names it.

Revision ID: 0095
Revises: 0094
Create Date: 2026-12-01
"""

from alembic import op

revision = "0095"
down_revision = "0094"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
-- Batches: a group of jobs with exact live counts and one completion job. A batch is created
-- `open`, filled (jobs inserted with its id as batch_id, in one transaction or several) and
-- sealed: `active` while any of its jobs is queued or running, then final in the transaction
-- that ends its last job: `cancelled` if any of its jobs was cancelled, else `failed` if any
-- failed, else `succeeded`. An open batch never completes. A job whose batch_id names no batch
-- is only labelled with it (as before batches existed); a sealed batch takes no new jobs.
-- The counts change in the statement that changes the jobs (skiplock.batches_count_v1), once
-- per batch per statement, so they always equal a count of the batch's jobs by state; pruning
-- its finished jobs leaves them as they were. `pending` counts its queued and running jobs
-- together: a claim (queued -> running) and a job put back (rescue, release, retry after
-- backoff) leave the row alone, so a worker's claims never wait on its acknowledgements for
-- this row. How many of them run is counted where they are (jobs_batch_running_idx, at most
-- the workers' concurrency): skiplock.batch_progress shows queued and running, exact in one
-- snapshot. on_complete is the completion job (task, args, queue, priority, max_attempts,
-- timeout; what is left out comes from skiplock.tasks).
CREATE TABLE skiplock.batches (
    id                uuid        NOT NULL DEFAULT skiplock.uuid_v7(),
    state             text        NOT NULL DEFAULT 'open',
    total             integer     NOT NULL DEFAULT 0,
    pending           integer     NOT NULL DEFAULT 0,
    succeeded         integer     NOT NULL DEFAULT 0,
    failed            integer     NOT NULL DEFAULT 0,
    cancelled         integer     NOT NULL DEFAULT 0,
    on_complete       jsonb,
    completion_job_id uuid,
    correlation_id    text        DEFAULT nullif(current_setting('skiplock.correlation_id', true), ''),
    created_at        timestamptz NOT NULL DEFAULT now(),
    sealed_at         timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    CONSTRAINT batches_pkey PRIMARY KEY (id),
    CONSTRAINT batches_state_name CHECK (state IN ('open', 'active', 'succeeded', 'failed', 'cancelled')),
    -- The counts can never drift apart unnoticed: a statement that would break this fails.
    CONSTRAINT batches_counts CHECK (pending >= 0 AND succeeded >= 0 AND failed >= 0 AND cancelled >= 0
                                     AND total = pending + succeeded + failed + cancelled),
    -- The completion job is inserted by the statement that ends the last job: it must not fail.
    CONSTRAINT batches_on_complete_valid CHECK (on_complete IS NULL OR (
        jsonb_typeof(on_complete) = 'object'
        AND length(on_complete->>'task') BETWEEN 1 AND 128 AND on_complete->>'task' !~ '[^A-Za-z0-9_.:-]'
        AND on_complete->>'task' !~ '^[0-9.:-]'
        AND jsonb_typeof(coalesce(on_complete->'args', '{}')) = 'object'
        AND (on_complete->>'queue' IS NULL OR (length(on_complete->>'queue') BETWEEN 1 AND 63
             AND on_complete->>'queue' !~ '[^a-z0-9_.-]' AND on_complete->>'queue' !~ '^[.-]'))
        AND coalesce(on_complete->>'priority', '1') IN ('0', '1', '2')
        AND coalesce(on_complete->>'max_attempts', '1') ~ '^[1-9][0-9]{0,3}$'
        AND (jsonb_typeof(on_complete->'timeout') IS NULL OR jsonb_typeof(on_complete->'timeout') = 'null'
             OR (jsonb_typeof(on_complete->'timeout') = 'number' AND (on_complete->>'timeout')::float8 > 0))))
);
ALTER TABLE skiplock.batches SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0,
                                  autovacuum_vacuum_threshold = 200);
-- The running jobs of each batch (skiplock.batch_progress); jobs of no batch are not in it.
CREATE INDEX jobs_batch_running_idx ON skiplock.jobs (batch_id) WHERE state = 'running' AND batch_id IS NOT NULL;

-- Inserts the completion job of a batch that just reached its final state, in the same
-- transaction: its arguments are on_complete's with "batch" set to the batch's id, state and
-- counts. Called once per completion, by skiplock.batches_count_v1 or skiplock.seal_batch
-- while they hold the batch's row lock.
CREATE FUNCTION skiplock.batch_complete_v1(batch_id uuid) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
  b skiplock.batches%ROWTYPE;
  d skiplock.tasks%ROWTYPE;
  new_id uuid;
BEGIN
  SELECT * INTO b FROM skiplock.batches x WHERE x.id = batch_complete_v1.batch_id;
  IF b.on_complete IS NULL THEN
    RETURN NULL;
  END IF;
  SELECT * INTO d FROM skiplock.tasks t WHERE t.name = b.on_complete->>'task';
  INSERT INTO skiplock.jobs AS j (task, args, queue, priority, max_attempts, timeout, correlation_id)
  VALUES (b.on_complete->>'task',
          coalesce(b.on_complete->'args', '{}') || jsonb_build_object('batch', jsonb_build_object(
              'id', b.id, 'state', b.state, 'total', b.total, 'succeeded', b.succeeded, 'failed', b.failed,
              'cancelled', b.cancelled)),
          coalesce(b.on_complete->>'queue', d.queue, 'default'),
          coalesce((b.on_complete->>'priority')::smallint, d.priority, 1),
          coalesce((b.on_complete->>'max_attempts')::integer, d.max_attempts, 3),
          CASE WHEN jsonb_typeof(b.on_complete->'timeout') = 'number' THEN (b.on_complete->>'timeout')::float8
               ELSE d.timeout END,
          b.correlation_id)
  RETURNING j.id INTO new_id;
  UPDATE skiplock.batches x SET completion_job_id = new_id WHERE x.id = b.id;
  RETURN new_id;
END
$$;

-- Keeps every batch's counts equal to its jobs' states, in the statement that changes them:
-- each job a statement inserts, changes or deletes counts -1 in its old (batch, state) and +1
-- in its new one, summed per batch, so the batch's row is updated once per statement (not per
-- job) and only when a count changes: not for a claim, a job put back in its queue or a lease
-- renewal (queued and running are both `pending`). Deleting a finished job (pruning) keeps
-- the counts; deleting an unfinished one takes it out of its batch.
-- Under READ COMMITTED, an UPDATE that waited for another transaction's lock on the batch row
-- recomputes from the version that transaction committed, so exactly one transaction sees the
-- last pending job end: that one sets the final state and inserts the completion job. Rows of
-- several batches are locked in id order first, so two statements cannot deadlock on them.
-- A statement that touches no batch job returns after one pass over its transition tables.
CREATE FUNCTION skiplock.batches_count_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  ids uuid[];
  dp integer[];
  ds integer[];
  df integer[];
  dc integer[];
  started uuid[];
  r record;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT array_agg(c.batch_id ORDER BY c.batch_id), array_agg(c.n ORDER BY c.batch_id)
      INTO ids, dp
      FROM (SELECT n.batch_id, count(*)::integer AS n FROM new_jobs n WHERE n.batch_id IS NOT NULL
             GROUP BY n.batch_id) c;
  ELSIF TG_OP = 'UPDATE' THEN
    SELECT array_agg(c.batch_id ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.p ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.s ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.f ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.c ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.batch_id) FILTER (WHERE c.runs)
      INTO ids, dp, ds, df, dc, started
      FROM (SELECT m.batch_id,
                   coalesce(sum(m.n) FILTER (WHERE m.state NOT IN ('succeeded', 'failed', 'cancelled')),
                            0)::integer AS p,
                   coalesce(sum(m.n) FILTER (WHERE m.state = 'succeeded'), 0)::integer AS s,
                   coalesce(sum(m.n) FILTER (WHERE m.state = 'failed'), 0)::integer AS f,
                   coalesce(sum(m.n) FILTER (WHERE m.state = 'cancelled'), 0)::integer AS c,
                   bool_or(m.n = 1 AND m.state = 'running') AS runs
              FROM (SELECT o.batch_id, o.state, -1 AS n FROM old_jobs o WHERE o.batch_id IS NOT NULL
                    UNION ALL
                    SELECT n.batch_id, n.state, 1 FROM new_jobs n WHERE n.batch_id IS NOT NULL) m
             GROUP BY m.batch_id) c;
    -- A batch's first claim sets started_at; later ones find it set and write nothing.
    IF started IS NOT NULL THEN
      UPDATE skiplock.batches b SET started_at = now() WHERE b.id = ANY (started) AND b.started_at IS NULL;
    END IF;
  ELSE  -- DELETE
    SELECT array_agg(c.batch_id ORDER BY c.batch_id), array_agg(c.p ORDER BY c.batch_id)
      INTO ids, dp
      FROM (SELECT o.batch_id, -count(*)::integer AS p FROM old_jobs o
             WHERE o.batch_id IS NOT NULL AND o.state NOT IN ('succeeded', 'failed', 'cancelled')
             GROUP BY o.batch_id) c;
  END IF;
  IF ids IS NULL THEN
    RETURN NULL;
  END IF;
  IF TG_OP <> 'UPDATE' THEN
    ds := array_fill(0, ARRAY[cardinality(ids)]);
    df := ds;
    dc := ds;
  END IF;
  IF cardinality(ids) > 1 THEN
    PERFORM 1 FROM skiplock.batches b WHERE b.id = ANY (ids) ORDER BY b.id FOR NO KEY UPDATE;
  END IF;
  FOR r IN
    UPDATE skiplock.batches b
       SET total = b.total + d.p + d.s + d.f + d.c,
           pending = b.pending + d.p, succeeded = b.succeeded + d.s, failed = b.failed + d.f,
           cancelled = b.cancelled + d.c,
           state = CASE WHEN b.state = 'open' THEN 'open'
                        WHEN b.pending + d.p > 0 THEN 'active'  -- (re)opened by a retry
                        WHEN b.state <> 'active' THEN b.state   -- final already
                        WHEN b.cancelled + d.c > 0 THEN 'cancelled'
                        WHEN b.failed + d.f > 0 THEN 'failed'
                        ELSE 'succeeded' END,
           finished_at = CASE WHEN b.state = 'open' OR b.pending + d.p > 0 THEN NULL
                              ELSE coalesce(b.finished_at, now()) END
      FROM unnest(ids, dp, ds, df, dc) AS d(id, p, s, f, c)
     WHERE b.id = d.id
    RETURNING b.id, b.state, d.p + d.s + d.f + d.c > 0 AS entered,
              -- final now, and this statement ended its last pending jobs
              b.state IN ('succeeded', 'failed', 'cancelled') AND d.p < 0 AS completed
  LOOP
    IF r.entered AND r.state <> 'open' THEN
      RAISE EXCEPTION 'skiplock: batch % is sealed (%); it takes no new jobs', r.id, r.state
        USING ERRCODE = 'check_violation', CONSTRAINT = 'batches_sealed';
    END IF;
    IF r.completed THEN
      PERFORM skiplock.batch_complete_v1(r.id);
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_batch_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.batches_count_v1();
CREATE TRIGGER jobs_batch_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.batches_count_v1();
CREATE TRIGGER jobs_batch_delete AFTER DELETE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.batches_count_v1();
-- Open a batch; returns its id. Fill it with jobs naming it as batch_id (skiplock.enqueue(...,
-- batch_id => id), in this transaction or later ones), then seal it (skiplock.seal_batch).
-- The completion job's options left out come from the task's row in skiplock.tasks.
CREATE FUNCTION skiplock.open_batch(
    on_complete_task text DEFAULT NULL,
    on_complete_args jsonb DEFAULT '{}'::jsonb,
    on_complete_queue text DEFAULT NULL,
    on_complete_priority text DEFAULT NULL,
    on_complete_max_attempts integer DEFAULT NULL,
    on_complete_timeout double precision DEFAULT NULL
) RETURNS uuid
LANGUAGE sql AS $$
  INSERT INTO skiplock.batches (on_complete)
  SELECT CASE WHEN on_complete_task IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
           'task', on_complete_task, 'args', coalesce(on_complete_args, '{}'::jsonb), 'queue', on_complete_queue,
           'priority', CASE WHEN on_complete_priority IS NOT NULL
                            THEN skiplock.priority_value(on_complete_priority) END,
           'max_attempts', on_complete_max_attempts, 'timeout', on_complete_timeout)) END
  RETURNING id
$$;

-- No more jobs join the batch: it becomes active, or final at once (with its completion job)
-- when none of its jobs is left to run. Sealing a sealed batch changes nothing. Returns the
-- batch's state.
CREATE FUNCTION skiplock.seal_batch(batch_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  s text;
BEGIN
  UPDATE skiplock.batches b
     SET state = CASE WHEN b.pending > 0 THEN 'active' WHEN b.cancelled > 0 THEN 'cancelled'
                      WHEN b.failed > 0 THEN 'failed' ELSE 'succeeded' END,
         sealed_at = now(),
         finished_at = CASE WHEN b.pending > 0 THEN NULL ELSE now() END
   WHERE b.id = seal_batch.batch_id AND b.state = 'open'
  RETURNING b.state INTO s;
  IF FOUND THEN
    IF s <> 'active' THEN
      PERFORM skiplock.batch_complete_v1(seal_batch.batch_id);
    END IF;
    RETURN s;
  END IF;
  SELECT b.state INTO s FROM skiplock.batches b WHERE b.id = seal_batch.batch_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no batch %', seal_batch.batch_id USING ERRCODE = 'no_data_found';
  END IF;
  RETURN s;
END
$$;

-- Cancel every queued and running job of a batch, as skiplock.cancel does one job (the
-- workers running them are told at once), and seal it if it was open: it ends `cancelled`
-- in this transaction unless other jobs still join or run. Returns how many were cancelled.
CREATE FUNCTION skiplock.cancel_batch(batch_id uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  held text[];
BEGIN
  PERFORM 1 FROM skiplock.batches b WHERE b.id = cancel_batch.batch_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no batch %', cancel_batch.batch_id USING ERRCODE = 'no_data_found';
  END IF;
  WITH doomed AS (
      SELECT j.id, j.state, j.attempt FROM skiplock.jobs j
       WHERE j.batch_id = cancel_batch.batch_id AND j.state NOT IN ('succeeded', 'failed', 'cancelled')
       ORDER BY j.id
         FOR UPDATE OF j
  ), done AS (
      UPDATE skiplock.jobs j
         SET state = 'cancelled', lease_expires_at = NULL, finished_at = now()
        FROM doomed d
       WHERE j.id = d.id
      RETURNING j.id, d.state AS was, d.attempt
  )
  SELECT count(*), array_agg(done.id::text || ':' || done.attempt) FILTER (WHERE done.was = 'running')
    INTO n, held FROM done;
  IF held IS NOT NULL THEN
    BEGIN
      PERFORM pg_notify('skiplock_cancel', h) FROM unnest(held) AS h;
    EXCEPTION WHEN OTHERS THEN
      NULL;  -- a failed NOTIFY never fails the cancel: the heartbeat delivers it
    END;
  END IF;
  PERFORM skiplock.seal_batch(cancel_batch.batch_id);
  RETURN n;
END
$$;

-- Put every failed job of a batch back in its queue (skiplock.retry, one job at a time); a
-- finished batch becomes active again and completes again, with a new completion job, when
-- they end. Returns how many were retried.
CREATE FUNCTION skiplock.retry_batch(batch_id uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
BEGIN
  PERFORM 1 FROM skiplock.batches b WHERE b.id = retry_batch.batch_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no batch %', retry_batch.batch_id USING ERRCODE = 'no_data_found';
  END IF;
  SELECT count(skiplock.retry(f.id)) INTO n
    FROM (SELECT j.id FROM skiplock.jobs j
           WHERE j.batch_id = retry_batch.batch_id AND j.state = 'failed'
           ORDER BY j.id
             FOR UPDATE OF j) f;
  RETURN n;
END
$$;

-- Batches with their progress: queued and running split `pending` by counting its running jobs
-- (jobs_batch_running_idx), percent is the share of jobs finished (succeeded, failed or
-- cancelled), and the completion job's state once it exists.
CREATE VIEW skiplock.batch_progress AS
SELECT b.id, b.state, b.total, b.pending - r.running AS queued, r.running, b.succeeded, b.failed, b.cancelled,
       CASE WHEN b.total = 0 THEN CASE WHEN b.finished_at IS NOT NULL THEN 100 ELSE 0 END
            ELSE floor(1000.0 * (b.succeeded + b.failed + b.cancelled) / b.total) / 10
       END::double precision AS percent,
       b.on_complete->>'task' AS on_complete_task, b.completion_job_id, c.state AS completion_job_state,
       b.created_at, b.sealed_at, b.started_at, b.finished_at
  FROM skiplock.batches b
 CROSS JOIN LATERAL (SELECT count(*)::integer AS running FROM skiplock.jobs j
                      WHERE j.batch_id = b.id AND j.state = 'running' AND b.pending > 0) r
  LEFT JOIN skiplock.jobs c ON c.id = b.completion_job_id;
"""

DOWNGRADE = r"""
DROP VIEW skiplock.batch_progress;
DROP TRIGGER jobs_batch_insert ON skiplock.jobs;
DROP TRIGGER jobs_batch_update ON skiplock.jobs;
DROP TRIGGER jobs_batch_delete ON skiplock.jobs;
DROP FUNCTION skiplock.retry_batch(uuid);
DROP FUNCTION skiplock.cancel_batch(uuid);
DROP FUNCTION skiplock.seal_batch(uuid);
DROP FUNCTION skiplock.open_batch(text, jsonb, text, text, integer, double precision);
DROP FUNCTION skiplock.batches_count_v1();
DROP FUNCTION skiplock.batch_complete_v1(uuid);
DROP INDEX skiplock.jobs_batch_running_idx;
DROP TABLE skiplock.batches;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
