-- Queries of the dashboard's job list, charts and bulk actions (app/dashboard/).

-- name: search_jobs
-- One page of the job list, newest first, bounded in cost whatever the filters: the inner
-- query walks the primary key backwards from %(before)s (the cursor, or the end of the time
-- range: ids are time-ordered) down to %(after)s, reading at most %(scan)s rows; the filters
-- and the text search apply to those. With rare matches a page comes back short and the
-- caller continues below the last row read (window_end). The subquery is evaluated lazily,
-- so a page that fills early reads no further.
-- %(text)s is lower case; it matches the task, the arguments' JSON text or the last error.
SELECT j.*
  FROM (SELECT * FROM skiplock.jobs
         WHERE id < %(before)s::uuid AND id >= %(after)s::uuid
         ORDER BY id DESC
         LIMIT %(scan)s) j
 WHERE (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
   AND (%(state)s::skiplock.job_state IS NULL OR j.state = %(state)s::skiplock.job_state)
   AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
   AND (%(text)s::text IS NULL OR strpos(lower(j.task), %(text)s::text) > 0
        OR strpos(lower(j.args::text), %(text)s::text) > 0 OR strpos(lower(j.last_error), %(text)s::text) > 0)
 ORDER BY j.id DESC
 LIMIT %(limit)s;

-- name: window_end
-- The last row search_jobs read with the same bounds, when it read all %(scan)s of them
-- (else none: it reached %(after)s). An index-only walk of the primary key.
SELECT id FROM skiplock.jobs
 WHERE id < %(before)s::uuid AND id >= %(after)s::uuid
 ORDER BY id DESC
OFFSET %(scan)s - 1 LIMIT 1;

-- name: search_batch_jobs
-- search_jobs within one batch: its rows come from jobs_batch_idx, so an old batch is found
-- without walking every newer job.
SELECT j.*
  FROM (SELECT * FROM skiplock.jobs
         WHERE batch_id = %(batch_id)s::uuid AND id < %(before)s::uuid AND id >= %(after)s::uuid
         ORDER BY id DESC
         LIMIT %(scan)s) j
 WHERE (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
   AND (%(state)s::skiplock.job_state IS NULL OR j.state = %(state)s::skiplock.job_state)
   AND (%(task)s::text IS NULL OR j.task = %(task)s::text)
   AND (%(text)s::text IS NULL OR strpos(lower(j.task), %(text)s::text) > 0
        OR strpos(lower(j.args::text), %(text)s::text) > 0 OR strpos(lower(j.last_error), %(text)s::text) > 0)
 ORDER BY j.id DESC
 LIMIT %(limit)s;

-- name: batch_window_end
SELECT id FROM skiplock.jobs
 WHERE batch_id = %(batch_id)s::uuid AND id < %(before)s::uuid AND id >= %(after)s::uuid
 ORDER BY id DESC
OFFSET %(scan)s - 1 LIMIT 1;

-- name: finished_per_minute
-- Jobs that finished (succeeded, failed for good, cancelled) per minute from %(since)s to
-- %(until)s, from jobs_finished_at_idx; minutes without any are left out. Jobs already
-- pruned are not counted.
SELECT date_bin('1 minute', finished_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
  FROM skiplock.jobs
 WHERE finished_at >= %(since)s::timestamptz AND finished_at < %(until)s::timestamptz
 GROUP BY 1
 ORDER BY 1;

-- name: retry_failed_in_queue
-- Up to %(limit)s failed jobs of a queue back to queued, each through skiplock.retry (the
-- same fresh round of attempts and history as one retry). Rows another transaction holds
-- are skipped. Returns how many were retried.
SELECT count(skiplock.retry(f.id)) AS retried
  FROM (SELECT id FROM skiplock.jobs
         WHERE queue = %(queue)s AND state = 'failed'
         ORDER BY id
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED) f;
