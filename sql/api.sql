-- Queries behind the HTTP API that the engine itself does not need.

-- name: set_max_waiting
INSERT INTO skiplock.queues (name, max_waiting) VALUES (%(name)s, %(max_waiting)s)
ON CONFLICT (name) DO UPDATE SET max_waiting = excluded.max_waiting, updated_at = now()
RETURNING name, paused, max_waiting;

-- name: lock_limited_queues
-- The limits of those of `queues` that have one, locking their rows until the caller's
-- transaction ends: submitters to a limited queue then count and insert one at a time, so
-- concurrent requests cannot overshoot max_waiting. Sorted so two bulk requests naming the
-- same queues lock them in the same order (no deadlock). The count is a separate statement
-- (count_waiting): in READ COMMITTED only a statement that starts after the lock is granted
-- sees the jobs the previous holder committed.
SELECT name, max_waiting
  FROM skiplock.queues
 WHERE name = ANY (%(queues)s::text[]) AND max_waiting IS NOT NULL
 ORDER BY name
   FOR UPDATE;

-- name: count_waiting_in
-- Waiting (queued, due or scheduled) jobs per queue, for the given queues.
SELECT queue, count(*) AS waiting
  FROM skiplock.jobs
 WHERE queue = ANY (%(queues)s::text[]) AND state = 'queued'
 GROUP BY queue;

-- name: schema_revision
SELECT version_num FROM public.alembic_version;

-- name: limited_queues
SELECT name FROM skiplock.queues WHERE max_waiting IS NOT NULL;
