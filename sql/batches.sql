-- Queries on skiplock.batches (sql/schema.sql: the counting trigger, open_batch, seal_batch,
-- cancel_batch, retry_batch and the view batch_progress hold the rules). Parameters are
-- psycopg named placeholders.

-- name: open_batch
-- A new open batch; %(on_complete)s is the completion job as stored (sql/schema.sql:
-- batches_on_complete_valid), or NULL for none.
INSERT INTO skiplock.batches (on_complete, correlation_id)
VALUES (%(on_complete)s::jsonb,
        coalesce(%(correlation_id)s::text, nullif(current_setting('skiplock.correlation_id', true), '')))
RETURNING id, state;

-- name: seal_batch
SELECT skiplock.seal_batch(%(id)s) AS state;

-- name: cancel_batch
SELECT skiplock.cancel_batch(%(id)s) AS cancelled;

-- name: retry_batch
SELECT skiplock.retry_batch(%(id)s) AS retried;

-- name: get_batch
SELECT * FROM skiplock.batch_progress WHERE id = %(id)s;

-- name: list_batches
-- Newest first (ids are time-ordered); the cursor is the last id of the previous page.
SELECT * FROM skiplock.batch_progress
 WHERE (%(state)s::text IS NULL OR state = %(state)s)
   AND (%(before)s::uuid IS NULL OR id < %(before)s)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: prune_finished_batches
-- Deletes finished batches older than the cutoff once none of their jobs is left (the
-- pruner deleted them first), a small batch at a time. Their id then names no batch: a job
-- that gives it as batch_id is only labelled with it.
WITH doomed AS (
    SELECT b.id FROM skiplock.batches b
     WHERE b.finished_at < coalesce(%(now)s, now()) - make_interval(secs => %(older_than_seconds)s)
       AND b.state IN ('succeeded', 'failed', 'cancelled')
       AND NOT EXISTS (SELECT 1 FROM skiplock.jobs j WHERE j.batch_id = b.id)
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM skiplock.batches b USING doomed WHERE b.id = doomed.id RETURNING b.id
)
SELECT count(*) AS deleted FROM gone;
