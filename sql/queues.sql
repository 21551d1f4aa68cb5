-- Queries on skiplock.queues and the queue views.

-- name: queue_stats
SELECT * FROM skiplock.queue_stats ORDER BY queue;

-- name: set_paused
INSERT INTO skiplock.queues (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
RETURNING name, paused, max_waiting;

-- name: count_ready
-- Jobs due now in the given queues (NULL: all); an index-only count on jobs_queue_claim_idx.
SELECT count(*) AS ready FROM skiplock.jobs
 WHERE state = 'queued' AND run_at <= now()
   AND (%(queues)s::text[] IS NULL OR queue = ANY (%(queues)s::text[]));

-- name: queue_page
-- One page of GET /queues, in name order after the cursor (the last name of the previous
-- page). A queue exists while it has jobs or a settings row (queue_stats). The per-queue
-- throughput subquery runs for the page's rows only (it is evaluated after the LIMIT).
SELECT s.*, q.max_waiting,
       (SELECT count(*) FROM skiplock.jobs j
         WHERE j.queue = s.queue AND j.finished_at > coalesce(%(now)s, now()) - interval '1 minute')
           AS finished_last_minute
  FROM skiplock.queue_stats s
  LEFT JOIN skiplock.queues q ON q.name = s.queue
 WHERE %(after)s::text IS NULL OR s.queue > %(after)s::text
 ORDER BY s.queue
 LIMIT %(limit)s;

-- name: delete_queue_if_empty
-- Forget a queue's settings, only while no job (in any state, until the pruner deletes it)
-- names the queue. One statement: `jobs` is the count it decided on, `existed` whether it had
-- settings (read before the delete). A job committed concurrently makes the queue exist again,
-- with default settings, as any first job does.
WITH left_over AS (
    SELECT count(*) AS jobs FROM skiplock.jobs WHERE queue = %(name)s
), gone AS (
    DELETE FROM skiplock.queues q
     WHERE q.name = %(name)s AND (SELECT jobs FROM left_over) = 0
    RETURNING q.name
)
SELECT (SELECT jobs FROM left_over) AS jobs,
       EXISTS (SELECT 1 FROM gone) AS deleted,
       EXISTS (SELECT 1 FROM skiplock.queues WHERE name = %(name)s) AS existed;

-- name: limited_queues
-- Queues that have a max_waiting: submitters cache this set briefly (skiplock/limits.py) and
-- reserve room only in these, so queues without a limit cost nothing per insert.
SELECT name FROM skiplock.queues WHERE max_waiting IS NOT NULL;

-- name: reserve_queue_room
-- Inside the transaction that inserts: lock each limited queue's row and raise queue_full
-- unless it has room for `wanted` more waiting jobs (the rule: skiplock.reserve_room_v1).
SELECT skiplock.reserve_room_v1(%(queues)s::text[], %(wanted)s::int[]);
