-- Queries on skiplock.jobs, one name each. Parameters are psycopg named placeholders.
-- Every time-dependent query takes %(now)s (NULL means the database's now()).

-- name: insert_job
-- One job. With an idempotency key already used in the queue nothing is inserted and
-- nothing is returned; the caller then reads the existing row (find_by_idempotency_key).
-- One statement is atomic on its own, so no BEGIN/COMMIT. The row itself records the
-- submission (created_at, correlation_id): no history row, no trigger function. The `tag` CTE
-- runs before the insert: it sets skiplock.notify = 'deferred' for the transaction (so the
-- insert trigger's per-row wakeup, meant for plain SQL, stays off) and sends the statement's
-- one NOTIFY itself, unless the caller wakes the workers after its commit (wake_queues; the
-- HTTP API does, see skiplock/wakeup.py). With depends_on the row is inserted waiting and the
-- database links it to its dependencies (sql/schema.sql: jobs_link_dependencies_v1), which may
-- queue it at once: RETURNING shows the row as inserted.
WITH tag AS (
    SELECT set_config('skiplock.notify', 'deferred', true),
           CASE WHEN NOT %(defer_notify)s::boolean AND coalesce(%(run_at)s::timestamptz, now()) <= now()
                THEN pg_notify('skiplock_jobs', %(queue)s::text) END
)
INSERT INTO skiplock.jobs (id, task, args, queue, priority, run_at, max_attempts, timeout,
                           idempotency_key, batch_id, correlation_id, depends_on)
SELECT %(id)s::uuid, %(task)s::text, %(args)s::jsonb, %(queue)s::text, %(priority)s::smallint,
       coalesce(%(run_at)s::timestamptz, now()), %(max_attempts)s::int, %(timeout)s::float8,
       %(idempotency_key)s::text, %(batch_id)s::uuid, %(correlation_id)s::text, %(depends_on)s::uuid[]
  FROM tag
ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: insert_jobs
-- Many jobs in one statement (all or none); returns the ids actually inserted (conflicts are
-- skipped). Wakeup as in insert_job: one NOTIFY per queue with a job due now. Each job carries
-- its own correlation id when `correlation_ids` gives one (jobs of many requests stored
-- together), else the statement's. A job's depends_on comes as the text of a uuid[] (arrays
-- of arrays must be rectangular), or NULL.
WITH i AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(tasks)b::text[], %(args)b::jsonb[], %(queues)b::text[],
                         %(priorities)b::smallint[], %(run_ats)b::timestamptz[], %(max_attempts)b::int[],
                         %(timeouts)b::float8[], %(idempotency_keys)b::text[], %(batch_ids)b::uuid[],
                         %(correlation_ids)b::text[], %(depends_on)b::text[])
           AS i(id, task, args, queue, priority, run_at, max_attempts, timeout, idempotency_key, batch_id,
                correlation_id, depends_on)
), tag AS (
    SELECT set_config('skiplock.notify', 'deferred', true),
           (SELECT count(pg_notify('skiplock_jobs', d.queue))
              FROM (SELECT DISTINCT i.queue FROM i WHERE coalesce(i.run_at, now()) <= now()) d
             WHERE NOT %(defer_notify)s::boolean)
)
INSERT INTO skiplock.jobs (id, task, args, queue, priority, run_at, max_attempts, timeout,
                           idempotency_key, batch_id, correlation_id, depends_on)
SELECT i.id, i.task, i.args, i.queue, i.priority, coalesce(i.run_at, now()), i.max_attempts,
       i.timeout, i.idempotency_key, i.batch_id, coalesce(i.correlation_id, %(correlation_id)s::text),
       i.depends_on::uuid[]
  FROM i, tag
ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, state, run_at, created_at;

-- name: wake_queues
-- Wake workers sleeping on these queues; sent after the jobs' commit by a submitter that
-- deferred the insert trigger's NOTIFY. Its own transaction writes nothing, so its commit
-- does not wait for a WAL flush and holds the notify lock only briefly. %(channel)s is the
-- trigger's channel, named once in Python (skiplock.queries.jobs.NOTIFY_CHANNEL).
SELECT pg_notify(%(channel)s, q) FROM unnest(%(queues)s::text[]) AS q;

-- name: find_by_idempotency_key
SELECT * FROM skiplock.jobs WHERE queue = %(queue)s AND idempotency_key = %(idempotency_key)s;

-- name: find_by_idempotency_keys
-- The jobs holding these (queue, key) pairs, for a bulk submission's repeated keys: one
-- probe of the unique index per pair, in one statement.
SELECT j.*
  FROM unnest(%(queues)s::text[], %(idempotency_keys)s::text[]) AS k(queue, idempotency_key)
  JOIN skiplock.jobs j ON j.queue = k.queue AND j.idempotency_key = k.idempotency_key;

-- name: get_job
SELECT * FROM skiplock.jobs WHERE id = %(id)s;

-- name: job_states
-- The states of these jobs now: a job submitted with dependencies is inserted waiting, and
-- queued in the same statement when they have all succeeded.
SELECT id, state FROM skiplock.jobs WHERE id = ANY (%(ids)s::uuid[]);

-- name: get_history
-- The job's timeline: the row's own transitions merged with its history rows.
SELECT state, at, attempt, worker_id, error, correlation_id
  FROM skiplock.job_timeline WHERE job_id = %(id)s ORDER BY step;

-- name: claim_batch
-- The hot path. Takes up to %(limit)s due jobs in priority, run_at, id order from the
-- worker's queues (NULL = all), skipping rows another worker holds and paused queues,
-- and marks them running under a lease, in one statement.
-- Queues do not slow each other: what waits in a queue the worker does not serve, or in a
-- paused one, is never read. `serve` names the queues to read (the worker's own less the
-- paused ones; for a worker of every queue while some queue is paused, every queue with a
-- waiting job less the paused ones, found by one index descent per queue), or NULL for every
-- queue when none is paused. Then exactly one branch runs (the others stop at their one-time
-- filter): `one` reads that queue's range of jobs_queue_claim_idx in claim order; `many` takes
-- the first 2 x limit of each queue's range as candidates and locks them, skipping those
-- another claim holds (so a claim running beside it still fills up); `every` reads
-- jobs_claim_idx in claim order. tests/integration/test_claim_plan.py checks the plans.
-- Fair queues (`many`): within a priority, the candidates of the queues take turns (each
-- queue's first, then each queue's second, ...), starting from the queue `turn` points at (the
-- worker counts its claims), so a queue with a big backlog of older jobs cannot starve another;
-- priority still comes first, and within a queue the order is run_at, id.
-- Flow limits (max_running, per key, rate) are claim_batch_limited's: this claim takes nothing
-- (`free`) while a queue it would read has one, so a worker whose cached view of the limits is
-- out of date (skiplock/limits.py) never overshoots one; it switches at its next refresh.
-- `asked` hides the worker's queues from the planner: the plan must not depend
-- on them anyway, and planning with them known made each claim ~0.3 ms slower (the
-- statement is still planned at each claim on a large table: with LIMIT known, a custom
-- plan looks cheaper to PostgreSQL than the prepared generic one).
-- Its commit waits for the WAL flush like any other: with synchronous_commit off a server
-- crash could forget a claim whose handler already runs, and the same worker could then
-- claim the job again under the same (attempt, worker) fence, so the first run's answer
-- would count for the second. (Off saved ~0.3 ms of each pickup; correctness first.)
WITH asked AS MATERIALIZED (
    SELECT %(queues)s::text[] AS queues
), free AS MATERIALIZED (
    SELECT NOT EXISTS (
           SELECT 1 FROM skiplock.queues p
            WHERE (p.max_running IS NOT NULL OR p.max_running_per_key IS NOT NULL OR p.rate_limit IS NOT NULL)
              AND NOT p.paused
              AND ((SELECT a.queues FROM asked a) IS NULL OR p.name = ANY ((SELECT a.queues FROM asked a)::text[])))
           AS ok
), serve AS MATERIALIZED (
    SELECT CASE
             WHEN (SELECT a.queues FROM asked a) IS NOT NULL THEN
               ARRAY(SELECT w.q FROM unnest((SELECT a.queues FROM asked a)) AS w(q)
                      WHERE NOT EXISTS (SELECT 1 FROM skiplock.queues p WHERE p.name = w.q AND p.paused))
             WHEN EXISTS (SELECT 1 FROM skiplock.queues p WHERE p.paused) THEN
               ARRAY(WITH RECURSIVE waiting(q) AS (
                       SELECT min(k.queue) FROM skiplock.jobs k WHERE k.state = 'queued'
                       UNION ALL
                       SELECT (SELECT min(k.queue) FROM skiplock.jobs k WHERE k.state = 'queued' AND k.queue > w.q)
                         FROM waiting w WHERE w.q IS NOT NULL)
                     SELECT w.q FROM waiting w
                      WHERE w.q IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM skiplock.queues p WHERE p.name = w.q AND p.paused))
           END AS queues
), one AS (
    SELECT j.id
      FROM skiplock.jobs j
     WHERE (SELECT cardinality(s.queues) FROM serve s) = 1 AND (SELECT f.ok FROM free f)
       AND j.queue = (SELECT s.queues[1] FROM serve s)
       AND j.state = 'queued'
       AND j.run_at <= coalesce(%(now)s, now())
     ORDER BY j.priority, j.run_at, j.id
     LIMIT %(limit)s
       FOR UPDATE OF j SKIP LOCKED
), candidates AS (
    SELECT c.id, c.priority, w.ord,
           row_number() OVER (PARTITION BY w.q, c.priority ORDER BY c.run_at, c.id) AS rank
      FROM unnest((SELECT s.queues FROM serve s)) WITH ORDINALITY AS w(q, ord)
     CROSS JOIN LATERAL (
           SELECT k.id, k.priority, k.run_at FROM skiplock.jobs k
            WHERE k.queue = w.q AND k.state = 'queued' AND k.run_at <= coalesce(%(now)s, now())
            ORDER BY k.priority, k.run_at, k.id
            LIMIT 2 * %(limit)s) c
     WHERE (SELECT cardinality(s.queues) FROM serve s) > 1 AND (SELECT f.ok FROM free f)
), many AS (
    SELECT j.id
      FROM skiplock.jobs j
      JOIN candidates c ON c.id = j.id
     WHERE j.id = ANY (ARRAY(SELECT id FROM candidates))  -- primary-key probes, whatever the plan
       AND j.state = 'queued'                             -- expects of a LIMIT it does not know
     ORDER BY c.priority, c.rank, mod(c.ord - 1 + %(turn)s::bigint, (SELECT cardinality(s.queues) FROM serve s))
     LIMIT %(limit)s
       FOR UPDATE OF j SKIP LOCKED
), every AS (
    SELECT j.id
      FROM skiplock.jobs j
     WHERE (SELECT s.queues FROM serve s) IS NULL AND (SELECT f.ok FROM free f)
       AND j.state = 'queued' AND j.id IS NOT NULL  -- jobs_claim_idx (see its comment)
       AND j.run_at <= coalesce(%(now)s, now())
     ORDER BY j.priority, j.run_at, j.id
     LIMIT %(limit)s
       FOR UPDATE OF j SKIP LOCKED
)
UPDATE skiplock.jobs j
   SET state = 'running',
       attempt = j.attempt + 1,
       worker_id = %(worker_id)s,
       lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_seconds)s),
       started_at = coalesce(%(now)s, now())
 WHERE j.id = ANY (ARRAY(SELECT id FROM one UNION ALL SELECT id FROM many UNION ALL SELECT id FROM every))
       -- primary-key probes (a join became a hash join over the whole table)
RETURNING j.id, j.task, j.args, j.queue, j.priority, j.attempt, j.max_attempts + j.attempt_base AS max_attempts,
          j.timeout,
          j.checkpoint, j.run_at, j.created_at, j.correlation_id, j.review;

-- name: claim_batch_limited
-- claim_batch for workers that serve a queue with flow limits (the worker knows which from
-- skiplock/limits.py): the same claim, plus the limits. `room` (skiplock.claim_room_v1) locks
-- the served queues that have a max_running, per-key or rate limit and says how many more jobs
-- each may start; `one` and the candidates of `many` take no more, and a keyed queue's
-- candidates (its first 1000 due jobs) no more per key. `rated` records the claim in the
-- queue's rate window. A worker of every queue reads the queues one at a time here (as while
-- one is paused). Each queue's candidates are capped by a filter on their row number rather
-- than a LIMIT the planner cannot read: with an unknown LIMIT it expected thousands of rows per
-- queue and planned (and JIT-compiled) for them.
WITH asked AS MATERIALIZED (
    SELECT %(queues)s::text[] AS queues
), limited AS MATERIALIZED (
    SELECT array_agg(p.name ORDER BY p.name) AS queues
      FROM skiplock.queues p
     WHERE (p.max_running IS NOT NULL OR p.max_running_per_key IS NOT NULL OR p.rate_limit IS NOT NULL)
       AND NOT p.paused
       AND ((SELECT a.queues FROM asked a) IS NULL OR p.name = ANY ((SELECT a.queues FROM asked a)::text[]))
), room AS MATERIALIZED (
    SELECT r.* FROM skiplock.claim_room_v1((SELECT l.queues FROM limited l), %(now)s) r
     WHERE (SELECT l.queues FROM limited l) IS NOT NULL
), serve AS MATERIALIZED (
    SELECT CASE
             WHEN (SELECT a.queues FROM asked a) IS NOT NULL THEN
               ARRAY(SELECT w.q FROM unnest((SELECT a.queues FROM asked a)) AS w(q)
                      WHERE NOT EXISTS (SELECT 1 FROM skiplock.queues p WHERE p.name = w.q AND p.paused))
             WHEN EXISTS (SELECT 1 FROM skiplock.queues p WHERE p.paused)
                  OR (SELECT l.queues FROM limited l) IS NOT NULL THEN
               ARRAY(WITH RECURSIVE waiting(q) AS (
                       SELECT min(k.queue) FROM skiplock.jobs k WHERE k.state = 'queued'
                       UNION ALL
                       SELECT (SELECT min(k.queue) FROM skiplock.jobs k WHERE k.state = 'queued' AND k.queue > w.q)
                         FROM waiting w WHERE w.q IS NOT NULL)
                     SELECT w.q FROM waiting w
                      WHERE w.q IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM skiplock.queues p WHERE p.name = w.q AND p.paused))
           END AS queues
), one AS (
    SELECT j.id
      FROM skiplock.jobs j
     WHERE (SELECT cardinality(s.queues) FROM serve s) = 1
       AND NOT EXISTS (SELECT 1 FROM room r WHERE r.key_arg IS NOT NULL)
       AND j.queue = (SELECT s.queues[1] FROM serve s)
       AND j.state = 'queued'
       AND j.run_at <= coalesce(%(now)s, now())
     ORDER BY j.priority, j.run_at, j.id
     LIMIT least(%(limit)s, (SELECT r.room FROM room r WHERE r.queue = (SELECT s.queues[1] FROM serve s)))
       FOR UPDATE OF j SKIP LOCKED
), candidates AS (
    SELECT c.id, c.priority, w.ord, c.rank
      FROM unnest((SELECT s.queues FROM serve s)) WITH ORDINALITY AS w(q, ord)
      LEFT JOIN room r ON r.queue = w.q
     CROSS JOIN LATERAL (
           SELECT x.id, x.priority,
                  row_number() OVER (PARTITION BY x.priority ORDER BY x.run_at, x.id) AS rank,
                  row_number() OVER (ORDER BY x.priority, x.run_at, x.id) AS nth
             FROM ((SELECT k.id, k.priority, k.run_at FROM skiplock.jobs k
                     WHERE r.key_arg IS NULL
                       AND k.queue = w.q AND k.state = 'queued' AND k.run_at <= coalesce(%(now)s, now())
                     ORDER BY k.priority, k.run_at, k.id
                     LIMIT 2 * %(limit)s)
                   UNION ALL
                   (SELECT f.id, f.priority, f.run_at
                      FROM (SELECT e.*, row_number() OVER (PARTITION BY e.key ORDER BY e.priority, e.run_at, e.id) AS n
                              FROM (SELECT k.id, k.priority, k.run_at, coalesce(k.args ->> r.key_arg, '') AS key
                                      FROM skiplock.jobs k
                                     WHERE r.key_arg IS NOT NULL
                                       AND k.queue = w.q AND k.state = 'queued' AND k.run_at <= coalesce(%(now)s, now())
                                     ORDER BY k.priority, k.run_at, k.id
                                     LIMIT 1000) e) f
                     WHERE f.n <= coalesce(r.key_rooms[array_position(r.keys, f.key)], r.key_max)
                     ORDER BY f.priority, f.run_at, f.id
                     LIMIT 2 * %(limit)s)) x) c
     WHERE c.nth <= coalesce(r.room, 2 * %(limit)s)  -- (a LIMIT the planner can read: its estimates stay small)
       AND ((SELECT cardinality(s.queues) FROM serve s) > 1
            OR ((SELECT cardinality(s.queues) FROM serve s) = 1
                AND EXISTS (SELECT 1 FROM room r WHERE r.key_arg IS NOT NULL)))
), many AS (
    SELECT j.id
      FROM skiplock.jobs j
      JOIN candidates c ON c.id = j.id
     WHERE j.id = ANY (ARRAY(SELECT id FROM candidates))  -- primary-key probes, whatever the plan
       AND j.state = 'queued'                             -- expects of a LIMIT it does not know
     ORDER BY c.priority, c.rank, mod(c.ord - 1 + %(turn)s::bigint, (SELECT cardinality(s.queues) FROM serve s))
     LIMIT %(limit)s
       FOR UPDATE OF j SKIP LOCKED
), every AS (
    SELECT j.id
      FROM skiplock.jobs j
     WHERE (SELECT s.queues FROM serve s) IS NULL
       AND j.state = 'queued' AND j.id IS NOT NULL  -- jobs_claim_idx (see its comment)
       AND j.run_at <= coalesce(%(now)s, now())
     ORDER BY j.priority, j.run_at, j.id
     LIMIT %(limit)s
       FOR UPDATE OF j SKIP LOCKED
), claimed AS (
    UPDATE skiplock.jobs j
       SET state = 'running',
           attempt = j.attempt + 1,
           worker_id = %(worker_id)s,
           lease_expires_at = coalesce(%(now)s, (SELECT min(r.at) FROM room r), now())
                              + make_interval(secs => %(lease_seconds)s),
           started_at = coalesce(%(now)s, (SELECT min(r.at) FROM room r), now())
     WHERE j.id = ANY (ARRAY(SELECT id FROM one UNION ALL SELECT id FROM many UNION ALL SELECT id FROM every))
           -- primary-key probes (a join became a hash join over the whole table)
    RETURNING j.id, j.task, j.args, j.queue, j.priority, j.attempt, j.max_attempts + j.attempt_base AS max_attempts,
              j.timeout, j.checkpoint, j.run_at, j.created_at, j.correlation_id, j.review
), rated AS (
    UPDATE skiplock.queues p  -- drop the claims out of the window, append this one
       SET rate_starts = ARRAY(SELECT s.at FROM unnest(p.rate_starts, p.rate_counts) WITH ORDINALITY AS s(at, k, i)
                                WHERE s.at > n.at - p.rate_period ORDER BY s.i) || n.at,
           rate_counts = ARRAY(SELECT s.k FROM unnest(p.rate_starts, p.rate_counts) WITH ORDINALITY AS s(at, k, i)
                                WHERE s.at > n.at - p.rate_period ORDER BY s.i) || n.started
      FROM (SELECT c.queue, count(*)::integer AS started, min(r.at) AS at
              FROM claimed c JOIN room r ON r.queue = c.queue AND r.rated
             GROUP BY c.queue) n
     WHERE p.name = n.queue
)
SELECT * FROM claimed;

-- name: finish_many_if_held
-- Acknowledges a batch of outcomes in one statement. Fenced: a row changes only if it is
-- still running (it holds a lease) under the same attempt and worker that claimed it, so the
-- late answer of a worker whose job was rescued, cancelled or released changes nothing.
-- worker_id stays: the row keeps who ran its latest attempt. Returns each id still held,
-- `done` where its outcome was written.
-- Locked rows are skipped, not waited for (`o`: FOR UPDATE SKIP LOCKED): a handler that
-- returned with its own job row still locked (a transaction it left open) must not hold up
-- the acknowledgement of every other job of its worker. Such a row comes back with `done`
-- false (still held in this statement's snapshot); the worker keeps its outcome buffered and
-- sends it again. The last SELECT probes only the rows not done: none, normally.
-- Plan: one primary-key probe per input row, whatever the statistics say. The fence on
-- the worker is a join condition against a column of the input (`worker`), not a filter
-- on jobs: as a filter, statistics taken before anything ran (worker_id all NULL) made the
-- planner expect one matching row, scan jobs first and re-read the input for each row it
-- found, so acknowledging 1,000 jobs cost a million comparisons. For the same reason the row
-- must still be running (worker_id stays after a run) as a join condition too, `j.state =
-- i.held`: as a filter (`state = 'running'`, or `lease_expires_at IS NOT NULL`) the planner
-- took a rare value for a selective one and scanned jobs (or jobs_lease_idx) first.
WITH input AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(states)b::text[]::skiplock.job_state[],
                         %(results)b::jsonb[], %(errors)b::text[], %(run_ats)b::timestamptz[],
                         %(checkpoints)b::jsonb[], %(progresses)b::jsonb[],
                         array_fill(%(worker_id)s::text, ARRAY[cardinality(%(ids)b::uuid[])]),
                         array_fill('running'::skiplock.job_state, ARRAY[cardinality(%(ids)b::uuid[])]))
           AS i(id, attempt, state, result, error, run_at, checkpoint, progress, worker, held)
), o AS (
    SELECT i.* FROM skiplock.jobs j
      JOIN input i ON j.id = i.id AND j.attempt = i.attempt AND j.worker_id = i.worker AND j.state = i.held
       FOR UPDATE OF j SKIP LOCKED
), done AS (
    UPDATE skiplock.jobs j
       SET state = o.state,
           result = o.result,
           last_error = coalesce(o.error, j.last_error),
           run_at = coalesce(o.run_at, j.run_at),
           checkpoint = coalesce(o.checkpoint, j.checkpoint),
           progress = coalesce(o.progress, j.progress),
           lease_expires_at = NULL,
           finished_at = CASE WHEN o.state = 'queued' THEN NULL ELSE coalesce(%(now)s, now()) END
      FROM o
     WHERE j.id = o.id  -- locked by `o`, still under its fence
    RETURNING j.id
)
SELECT id, true AS done FROM done
UNION ALL
SELECT i.id, false FROM input i
  JOIN skiplock.jobs j ON j.id = i.id AND j.attempt = i.attempt AND j.worker_id = i.worker AND j.state = i.held
 WHERE i.id NOT IN (SELECT id FROM done);

-- name: held_in_transaction
-- Opens a handler's own transaction (JobContext.transaction) with a check that its attempt
-- still holds the job. No lock: the heartbeat and the rescuer must not wait on a handler.
-- The acknowledgement at the end of the handler is the fence; this check only spares a
-- handler work that could never commit.
SELECT 1 AS held FROM skiplock.jobs
 WHERE id = %(id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s AND state = 'running';

-- name: park_many_if_held
-- Handlers that parked their job for a person: waiting, with the reason (also last_error, on
-- the timeline) and the handler's data, and the attempt given back (a park uses up no
-- attempt). Fenced like finish_many_if_held.
UPDATE skiplock.jobs j
   SET state = 'waiting', attempt = j.attempt - 1, lease_expires_at = NULL, last_error = r.reason,
       parked = jsonb_build_object('reason', r.reason, 'data', r.data, 'at', coalesce(%(now)s, now()),
                                   'attempt', j.attempt, 'worker_id', j.worker_id),
       progress = coalesce(r.progress, j.progress), checkpoint = coalesce(r.checkpoint, j.checkpoint)
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(reasons)s::text[], %(datas)s::jsonb[],
              %(checkpoints)s::jsonb[], %(progresses)s::jsonb[],
              array_fill(%(worker_id)s::text, ARRAY[cardinality(%(ids)s::uuid[])]),
              array_fill('running'::skiplock.job_state, ARRAY[cardinality(%(ids)s::uuid[])]))
       AS r(id, attempt, reason, data, checkpoint, progress, worker, held)
 WHERE j.id = r.id AND j.attempt = r.attempt AND j.worker_id = r.worker AND j.state = r.held  -- plan: see finish_many_if_held
RETURNING j.id;

-- name: release_many_if_held
-- Graceful shutdown: jobs still running after the grace period go back to queued, due
-- now, and the interrupted attempt is given back.
UPDATE skiplock.jobs j
   SET state = 'queued', attempt = j.attempt - 1, lease_expires_at = NULL,
       run_at = coalesce(%(now)s, now()),
       progress = coalesce(r.progress, j.progress), checkpoint = coalesce(r.checkpoint, j.checkpoint)
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(checkpoints)s::jsonb[], %(progresses)s::jsonb[],
              array_fill(%(worker_id)s::text, ARRAY[cardinality(%(ids)s::uuid[])]),
              array_fill('running'::skiplock.job_state, ARRAY[cardinality(%(ids)s::uuid[])]))
       AS r(id, attempt, checkpoint, progress, worker, held)
 WHERE j.id = r.id AND j.attempt = r.attempt AND j.worker_id = r.worker AND j.state = r.held  -- plan: see finish_many_if_held
RETURNING j.id;

-- name: release_unknown_holds
-- After a claim whose answer never arrived (the connection broke, the server crashed): the
-- claim may have committed, leaving rows running under this worker that it never started.
-- They go back to queued, due now, with the attempt given back, instead of waiting out the
-- lease and being rescued as if the worker had died. `known` are the ids the worker runs or
-- still has to acknowledge; the plan scans jobs_lease_idx (running rows only).
UPDATE skiplock.jobs j
   SET state = 'queued', attempt = j.attempt - 1, lease_expires_at = NULL,
       run_at = coalesce(%(now)s, now())
 WHERE j.state = 'running' AND j.worker_id = %(worker_id)s AND j.id <> ALL (%(known)s::uuid[])
RETURNING j.id, j.task, j.attempt + 1 AS attempt;

-- name: update_many_if_held
-- Progress and checkpoints reported by running handlers, fenced like acknowledgements.
UPDATE skiplock.jobs j
   SET progress = coalesce(u.progress, j.progress), checkpoint = coalesce(u.checkpoint, j.checkpoint)
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(checkpoints)s::jsonb[], %(progresses)s::jsonb[],
              array_fill(%(worker_id)s::text, ARRAY[cardinality(%(ids)s::uuid[])]),
              array_fill('running'::skiplock.job_state, ARRAY[cardinality(%(ids)s::uuid[])]))
       AS u(id, attempt, checkpoint, progress, worker, held)
 WHERE j.id = u.id AND j.attempt = u.attempt AND j.worker_id = u.worker AND j.state = u.held  -- plan: see finish_many_if_held
RETURNING j.id;

-- name: extend_leases_if_held
-- Heartbeat: renew the lease of every job this worker still holds. Returns each id still
-- held under its attempt, with `renewed` false where another transaction has the row locked
-- (a handler updating its own job in an open transaction): the row is skipped, not waited
-- for, so one handler's lock cannot hold up the renewal of every other job. Ids missing from
-- the result were cancelled or rescued meanwhile; the worker stops running them.
-- `mine` reads the snapshot (no lock); `renewable` locks and re-checks the fence.
WITH h AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[],
                         array_fill(%(worker_id)s::text, ARRAY[cardinality(%(ids)s::uuid[])]),
                         array_fill('running'::skiplock.job_state, ARRAY[cardinality(%(ids)s::uuid[])]))
           AS h(id, attempt, worker, held)
), mine AS (
    SELECT j.id FROM skiplock.jobs j
      JOIN h ON j.id = h.id AND j.attempt = h.attempt AND j.worker_id = h.worker AND j.state = h.held
), renewable AS (
    SELECT j.id FROM skiplock.jobs j
      JOIN h ON j.id = h.id AND j.attempt = h.attempt AND j.worker_id = h.worker AND j.state = h.held
       FOR UPDATE OF j SKIP LOCKED  -- plan: see finish_many_if_held
), renewed AS (
    UPDATE skiplock.jobs j
       SET lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_seconds)s)
      FROM renewable r
     WHERE j.id = r.id
    RETURNING j.id
)
SELECT m.id, r.id IS NOT NULL AS renewed FROM mine m LEFT JOIN renewed r ON r.id = m.id;

-- name: extend_leases_waiting
-- Heartbeat, for the rows extend_leases_if_held found locked: the same fenced renewal, but
-- waiting for the lock (on a connection of its own). Queued on the row lock, it renews the
-- lease as soon as the holder commits, before a rescuer (which skips locked rows) can take it.
UPDATE skiplock.jobs j
   SET lease_expires_at = coalesce(%(now)s, now()) + make_interval(secs => %(lease_seconds)s)
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], array_fill(%(worker_id)s::text, ARRAY[cardinality(%(ids)s::uuid[])]),
              array_fill('running'::skiplock.job_state, ARRAY[cardinality(%(ids)s::uuid[])]))
       AS h(id, attempt, worker, held)
 WHERE j.id = h.id AND j.attempt = h.attempt AND j.worker_id = h.worker AND j.state = h.held  -- plan: see finish_many_if_held
RETURNING j.id;

-- name: rescue_expired
-- Running jobs whose lease expired (worker killed, host lost, heartbeats failing) go back
-- to queued, or to failed if that was their last attempt. The lost run counts as an attempt.
WITH expired AS (
    SELECT id FROM skiplock.jobs
     WHERE state = 'running' AND lease_expires_at < coalesce(%(now)s, now())
     ORDER BY lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE skiplock.jobs j
   SET state = CASE WHEN j.attempt >= j.max_attempts + j.attempt_base THEN 'failed' ELSE 'queued' END::skiplock.job_state,
       last_error = format('lease expired: worker %%s stopped renewing it during attempt %%s', j.worker_id, j.attempt),
       lease_expires_at = NULL,
       run_at = coalesce(%(now)s, now()),
       finished_at = CASE WHEN j.attempt >= j.max_attempts + j.attempt_base THEN coalesce(%(now)s, now()) END
  FROM expired
 WHERE j.id = expired.id
RETURNING j.id, j.state, j.attempt;

-- name: cancel_job
SELECT skiplock.cancel(%(id)s) AS state;

-- name: retry_job
SELECT skiplock.retry(%(id)s) AS state;

-- name: resume_job
SELECT skiplock.resume(%(id)s, %(data)s::jsonb) AS state;

-- name: fail_job
SELECT skiplock.fail(%(id)s, %(reason)s::text) AS state;

-- name: list_jobs
-- Newest first (ids are time-ordered); the cursor is the last id of the previous page.
SELECT * FROM skiplock.jobs
 WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
   AND (%(state)s::skiplock.job_state IS NULL OR state = %(state)s)
   AND (%(task)s::text IS NULL OR task = %(task)s)
   AND (%(batch_id)s::uuid IS NULL OR batch_id = %(batch_id)s)
   AND (%(before)s::uuid IS NULL OR id < %(before)s)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: prune_finished
-- Deletes finished jobs (and their history) older than the cutoff, a small batch at a time
-- so it never holds many locks.
WITH doomed AS (
    SELECT id FROM skiplock.jobs
     WHERE finished_at < coalesce(%(now)s, now()) - make_interval(secs => %(older_than_seconds)s)
       AND state IN ('succeeded', 'failed', 'cancelled')
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM skiplock.jobs j USING doomed WHERE j.id = doomed.id RETURNING j.id
), history AS (
    DELETE FROM skiplock.job_history h USING gone WHERE h.job_id = gone.id
)
SELECT count(*) AS deleted FROM gone;
