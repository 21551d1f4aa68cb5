-- Queries behind the HTTP API that the engine itself does not need.

-- name: queue_overview
-- Per queue: counts by state (the queue_stats view), its limits, and throughput (jobs
-- finished in the last minute, from jobs_finished_at_idx).
SELECT s.*, q.max_waiting,
       (SELECT count(*) FROM skiplock.jobs j
         WHERE j.queue = s.queue AND j.finished_at > coalesce(%(now)s, now()) - interval '1 minute')
           AS finished_last_minute
  FROM skiplock.queue_stats s
  LEFT JOIN skiplock.queues q ON q.name = s.queue
 ORDER BY s.queue;

-- name: set_max_waiting
INSERT INTO skiplock.queues (name, max_waiting) VALUES (%(name)s, %(max_waiting)s)
ON CONFLICT (name) DO UPDATE SET max_waiting = excluded.max_waiting, updated_at = now()
RETURNING name, paused, max_waiting;

-- name: queue_room
-- Whether a queue can take `n` more waiting jobs (no row or no limit: yes).
SELECT q.max_waiting,
       (SELECT count(*) FROM skiplock.jobs j WHERE j.queue = q.name AND j.state = 'queued') AS waiting
  FROM skiplock.queues q
 WHERE q.name = %(queue)s AND q.max_waiting IS NOT NULL;

-- name: schema_revision
SELECT version_num FROM public.alembic_version;

-- name: limited_queues
SELECT name FROM skiplock.queues WHERE max_waiting IS NOT NULL;
