-- Queries on skiplock.queues and the queue views.

-- name: queue_stats
SELECT * FROM skiplock.queue_stats ORDER BY queue;

-- name: set_paused
INSERT INTO skiplock.queues (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
RETURNING name, paused, max_waiting, max_running, key_arg, max_running_per_key, rate_limit,
          extract(epoch FROM rate_period)::float8 AS rate_period;

-- name: count_ready
-- Jobs due now in the given queues (NULL: all); an index-only count on jobs_queue_claim_idx.
SELECT count(*) AS ready FROM skiplock.jobs
 WHERE state = 'queued' AND run_at <= now()
   AND (%(queues)s::text[] IS NULL OR queue = ANY (%(queues)s::text[]));

-- name: queue_page
-- One page of GET /queues, in name order after the cursor (the last name of the previous
-- page). A queue exists while it has jobs or a settings row (queue_stats). The per-queue
-- throughput subquery runs for the page's rows only (it is evaluated after the LIMIT).
SELECT s.*, q.max_waiting, q.max_running, q.key_arg, q.max_running_per_key, q.rate_limit,
       extract(epoch FROM q.rate_period)::float8 AS rate_period,
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

-- name: flow_limited_queues
-- Queues whose claims are limited (max_running, per key, rate): a worker caches this set briefly
-- (skiplock/limits.py) to know when a short claim may have been held back by a limit.
SELECT name FROM skiplock.queues
 WHERE max_running IS NOT NULL OR max_running_per_key IS NOT NULL OR rate_limit IS NOT NULL;

-- name: next_rate_room
-- When the first of these queues that its rate limit holds back gets room again, in seconds
-- from now (NULL: none is held back): once the oldest claims in its window have left it, so
-- that the rest started at most rate_limit - 1 jobs. A worker whose claim came back short
-- sleeps until then instead of polling.
SELECT extract(epoch FROM min(w.at + q.rate_period) - coalesce(%(now)s, now()))::float8 AS wait
  FROM skiplock.queues q
 CROSS JOIN LATERAL (
       SELECT s.at, sum(s.k) OVER (ORDER BY s.i) AS upto, sum(s.k) OVER () AS total
         FROM unnest(q.rate_starts, q.rate_counts) WITH ORDINALITY AS s(at, k, i)
        WHERE s.at > coalesce(%(now)s, now()) - q.rate_period) w
 WHERE q.rate_limit IS NOT NULL AND NOT q.paused
   AND w.total >= q.rate_limit AND w.upto >= w.total - q.rate_limit + 1
   AND (%(queues)s::text[] IS NULL OR q.name = ANY (%(queues)s::text[]));
