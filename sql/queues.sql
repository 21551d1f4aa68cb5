-- Queries on skiplock.queues and the queue views.

-- name: queue_stats
SELECT * FROM skiplock.queue_stats ORDER BY queue;

-- name: set_paused
INSERT INTO skiplock.queues (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
RETURNING name, paused, max_waiting;

-- name: count_ready
-- Jobs due now in the given queues (NULL: all); an index-only count on jobs_claim_idx.
SELECT count(*) AS ready FROM skiplock.jobs
 WHERE state = 'queued' AND run_at <= now()
   AND (%(queues)s::text[] IS NULL OR queue = ANY (%(queues)s::text[]));
