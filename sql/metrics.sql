-- Queries behind GET /metrics (skiplock/metrics.py). Each reads only what an index bounds:
-- waiting and running rows (the claim and lease indexes), jobs finished within a window of
-- time (jobs_finished_at_idx), history rows written since the last scrape (job_history's
-- primary key), and the workers table. None reads the finished backlog a table accumulates.

-- name: metrics_depth
-- Per queue: ready and scheduled jobs with the oldest ready job's age (jobs_queue_claim_idx,
-- index only), running jobs (jobs_lease_idx), and every queue with settings, so a drained or
-- idle queue shows zeros instead of vanishing.
WITH t AS MATERIALIZED (SELECT coalesce(%(now)s, now()) AS now),
queued AS (
    SELECT j.queue,
           count(*) FILTER (WHERE j.run_at <= (SELECT now FROM t)) AS ready,
           count(*) FILTER (WHERE j.run_at > (SELECT now FROM t)) AS scheduled,
           min(j.run_at) FILTER (WHERE j.run_at <= (SELECT now FROM t)) AS oldest_ready_at
      FROM skiplock.jobs j
     WHERE j.state = 'queued'
     GROUP BY j.queue
), running AS (
    SELECT j.queue, count(*) AS running FROM skiplock.jobs j WHERE j.state = 'running' GROUP BY j.queue
), names AS (
    SELECT queue FROM queued UNION SELECT queue FROM running UNION SELECT name FROM skiplock.queues
)
SELECT n.queue,
       coalesce(q.ready, 0) AS ready,
       coalesce(q.scheduled, 0) AS scheduled,
       coalesce(r.running, 0) AS running,
       coalesce(extract(epoch FROM (SELECT now FROM t) - q.oldest_ready_at), 0)::double precision
           AS oldest_ready_seconds
  FROM names n
  LEFT JOIN queued q ON q.queue = n.queue
  LEFT JOIN running r ON r.queue = n.queue
 ORDER BY n.queue;

-- name: metrics_settled_until
-- The end of the next counting window: `settle_seconds` before now. A job finished (or a
-- history row written) before it is counted once its transaction has committed; a
-- transaction that commits later than that after its statement began is not counted.
-- `history_id` is the last history row stamped by then (walked back from the newest along the
-- primary key: only the rows of the last `settle_seconds` are passed), where a first read starts.
WITH t AS MATERIALIZED (SELECT coalesce(%(now)s, now()) - make_interval(secs => %(settle_seconds)s) AS until)
SELECT t.until,
       coalesce((SELECT h.id FROM skiplock.job_history h WHERE h.at <= t.until ORDER BY h.id DESC LIMIT 1), 0)
           AS history_id
  FROM t;

-- name: metrics_finished
-- Jobs finished within (since, until], by task, queue and state, and the run duration
-- (finished - started, of succeeded and failed jobs) and pickup latency (started - due, of
-- succeeded jobs: a failure may have moved run_at) of each, as counts per bucket:
-- width_bucket gives the number of bounds at or below a value, so bucket i (0-based) holds
-- values in [bounds[i], bounds[i+1]); the caller makes them cumulative. jobs_finished_at_idx
-- bounds the read to the window.
WITH w AS MATERIALIZED (
    SELECT j.task, j.queue, j.state,
           CASE WHEN j.state IN ('succeeded', 'failed') AND j.started_at IS NOT NULL
                THEN greatest(extract(epoch FROM j.finished_at - j.started_at), 0)::double precision END AS run_s,
           CASE WHEN j.state = 'succeeded' AND j.started_at IS NOT NULL
                THEN greatest(extract(epoch FROM j.started_at - j.run_at), 0)::double precision END AS wait_s
      FROM skiplock.jobs j
     WHERE j.finished_at > %(since)s AND j.finished_at <= %(until)s
)
SELECT 'finished' AS kind, task, queue, state::text AS state, NULL::integer AS bucket, count(*) AS n,
       NULL::double precision AS total
  FROM w GROUP BY task, queue, state
UNION ALL
SELECT 'run', task, NULL, NULL, width_bucket(run_s, %(bounds)s::double precision[]), count(*), sum(run_s)
  FROM w WHERE run_s IS NOT NULL GROUP BY task, 5
UNION ALL
SELECT 'pickup', task, NULL, NULL, width_bucket(wait_s, %(bounds)s::double precision[]), count(*), sum(wait_s)
  FROM w WHERE wait_s IS NOT NULL GROUP BY task, 5;

-- name: metrics_runs_ended
-- Runs that ended without finishing the job, from the history rows written after
-- `after_id` (the primary key bounds the read) and stamped within (since, until]: a retry
-- after an error (`retried`) and a lost lease, expired or ended with its worker's session
-- (`rescued`, whether the job goes back to queued or fails). A release (shutdown, or a claim
-- whose answer was lost) gives its attempt back and is neither. Such a row follows the
-- history row of the run it ends, in the same statement; `next_after_id` is where the next
-- read starts: before the first row stamped after `until`, which the next window counts.
WITH h AS MATERIALIZED (
    SELECT h.id, h.job_id, h.state, h.at, h.attempt, h.worker_id, h.error
      FROM skiplock.job_history h
     WHERE h.id > %(after_id)s
), ended AS (
    SELECT j.task, j.queue,
           CASE WHEN h.error LIKE 'lease expired: %%' OR h.error LIKE 'lease ended: %%' THEN 'rescued'
                ELSE 'retried' END AS kind
      FROM h
      JOIN skiplock.jobs j ON j.id = h.job_id
     WHERE h.at > %(since)s AND h.at <= %(until)s
       AND h.worker_id IS NOT NULL                       -- it ended a run
       AND (h.state = 'queued' OR (h.state = 'failed' AND (h.error LIKE 'lease expired: %%'
                                                           OR h.error LIKE 'lease ended: %%')))
       AND (SELECT p.attempt FROM skiplock.job_history p
             WHERE p.job_id = h.job_id AND p.id < h.id ORDER BY p.id DESC LIMIT 1) = h.attempt  -- not a release
)
SELECT kind, task, queue, count(*) AS n, NULL::bigint AS next_after_id FROM ended GROUP BY kind, task, queue
UNION ALL
SELECT 'next', NULL, NULL, 0,
       coalesce((SELECT min(id) - 1 FROM h WHERE h.at > %(until)s), (SELECT max(id) FROM h), %(after_id)s);

-- name: metrics_workers
-- Workers whose heartbeat is within `live_seconds` (live), their execution slots, and the age
-- of the oldest live heartbeat.
SELECT count(*) AS live,
       coalesce(sum(w.concurrency), 0) AS slots,
       coalesce(extract(epoch FROM coalesce(%(now)s, now()) - min(w.heartbeat_at)), 0)::double precision
           AS oldest_heartbeat_seconds
  FROM skiplock.workers w
 WHERE w.heartbeat_at > coalesce(%(now)s, now()) - make_interval(secs => %(live_seconds)s);
