-- Skiplock schema: the one a person reads.
-- Migrations (migrations/versions/*) must reproduce exactly this; a test diffs
-- `pg_dump --schema-only` of a migrated database against a database built from this file.

CREATE SCHEMA skiplock;

CREATE TYPE skiplock.job_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');

-- Time-ordered UUID (version 7): 48 bits of Unix milliseconds, then random bits.
-- New ids sort after old ones, so the primary key index stays append-mostly.
CREATE FUNCTION skiplock.uuid_v7(ts timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send((extract(epoch FROM ts) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

-- Which state may follow which. The only place the rules live; the trigger jobs_after_update
-- asks it for every updated row off the happy path (a claim and a success are allowed here
-- too), whoever runs the UPDATE (worker, API or psql).
CREATE FUNCTION skiplock.transition_allowed(old_state skiplock.job_state, new_state skiplock.job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_state
    WHEN 'queued'    THEN new_state IN ('queued', 'running', 'cancelled')
    WHEN 'running'   THEN new_state IN ('running', 'queued', 'succeeded', 'failed', 'cancelled')
    WHEN 'failed'    THEN new_state IN ('failed', 'queued')
    WHEN 'cancelled' THEN new_state IN ('cancelled', 'queued')
    ELSE false  -- succeeded is final
  END
$$;

CREATE TABLE skiplock.jobs (
    id               uuid                NOT NULL DEFAULT skiplock.uuid_v7(),
    task             text                NOT NULL,
    args             jsonb               NOT NULL DEFAULT '{}'::jsonb,
    queue            text                NOT NULL DEFAULT 'default',
    priority         smallint            NOT NULL DEFAULT 1,
    state            skiplock.job_state  NOT NULL DEFAULT 'queued',
    attempt          integer             NOT NULL DEFAULT 0,
    max_attempts     integer             NOT NULL DEFAULT 3,
    run_at           timestamptz         NOT NULL DEFAULT now(),
    timeout          double precision,
    idempotency_key  text,
    batch_id         uuid,
    result           jsonb,
    last_error       text,
    progress         jsonb,
    checkpoint       jsonb,
    worker_id        text,
    lease_expires_at timestamptz,
    created_at       timestamptz         NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Attempts used before the last operator retry (skiplock.retry): attempt keeps counting up
    -- for the whole life of a job, so (id, attempt) names one claim forever and stays a safe
    -- fence; the job fails once attempt - attempt_base reaches max_attempts.
    attempt_base     integer             NOT NULL DEFAULT 0,
    -- The id of the request that submitted the job (enqueue(correlation_id=), the HTTP request,
    -- or the transaction's skiplock.correlation_id setting). Handlers see it as
    -- ctx.correlation_id; every transition of the job carries it unless made within another
    -- request that set its own.
    correlation_id   text                DEFAULT nullif(current_setting('skiplock.correlation_id', true), ''),
    CONSTRAINT jobs_pkey PRIMARY KEY (id),
    -- Names: a task is 1-128 of A-Z a-z 0-9 _ . : - starting with a letter or _; a queue 1-63 of
    -- a-z 0-9 _ . - not starting with . or -. Written as a length and two searches for a bad
    -- character, which cost a fraction of one anchored pattern with a repeat count (the
    -- pattern '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$' and its queue twin took about half of a bulk
    -- insert's time).
    CONSTRAINT jobs_task_format CHECK (length(task) BETWEEN 1 AND 128 AND task !~ '[^A-Za-z0-9_.:-]' AND task !~ '^[0-9.:-]'),
    CONSTRAINT jobs_queue_format CHECK (length(queue) BETWEEN 1 AND 63 AND queue !~ '[^a-z0-9_.-]' AND queue !~ '^[.-]'),
    CONSTRAINT jobs_priority_range CHECK (priority BETWEEN 0 AND 2),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT jobs_attempt_nonnegative CHECK (attempt >= 0),
    CONSTRAINT jobs_attempt_base_range CHECK (attempt_base BETWEEN 0 AND attempt),
    CONSTRAINT jobs_timeout_positive CHECK (timeout IS NULL OR timeout > 0),
    CONSTRAINT jobs_idempotency_key_length CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255),
    -- A running job always has a holder and a lease; nothing else has a lease. worker_id stays
    -- after the run: it names the worker of the latest claim (the job's timeline needs it).
    CONSTRAINT jobs_running_has_lease CHECK (
        (state = 'running') = (lease_expires_at IS NOT NULL) AND (state <> 'running' OR worker_id IS NOT NULL))
);

-- Hot table: rows are updated several times and deleted by the pruner. Vacuum after
-- 1% dead tuples (default 20%) so the claim index stays small, and leave room on each
-- page for HOT updates (progress, lease renewals).
ALTER TABLE skiplock.jobs SET (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

-- Serve the claim (sql/jobs.sql: claim_batch): queued rows only, in claim order. Rows leave
-- them as soon as they are claimed. jobs_queue_claim_idx holds each queue's rows apart, so a
-- claim from some queues never walks past the rows of others (paused, or served by other
-- workers); it also finds the queues that have waiting jobs, one index descent each.
-- jobs_claim_idx holds every queue's rows together, for a worker of every queue while none is
-- paused. Its predicate says `id IS NOT NULL` (always true) so that only a query saying so
-- may use it: a claim from one queue cannot pick it and filter the other queues' rows out,
-- which the planner may otherwise find as cheap when it cannot see which queue is asked for.
CREATE INDEX jobs_claim_idx ON skiplock.jobs (priority, run_at, id) WHERE state = 'queued' AND id IS NOT NULL;
CREATE INDEX jobs_queue_claim_idx ON skiplock.jobs (queue, priority, run_at, id) WHERE state = 'queued';
-- The rescuer's scan: running rows whose lease expired.
CREATE INDEX jobs_lease_idx ON skiplock.jobs (lease_expires_at) WHERE state = 'running';
-- Idempotency: one job per (queue, key), whatever races.
CREATE UNIQUE INDEX jobs_idempotency_key_uniq ON skiplock.jobs (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The pruner and the listing endpoints.
CREATE INDEX jobs_finished_at_idx ON skiplock.jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_batch_idx ON skiplock.jobs (batch_id) WHERE batch_id IS NOT NULL;

-- What a job's row is about to forget: each earlier run and how it ended (retry with its
-- error, rescue, release, failure), cancellations, operator retries and changes made by hand
-- (written by jobs_transition_v1). The happy path writes nothing here: the job row holds it.
-- skiplock.job_timeline merges both into the job's full sequence of transitions.
CREATE TABLE skiplock.job_history (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    job_id         uuid                NOT NULL,
    state          skiplock.job_state  NOT NULL,
    at             timestamptz         NOT NULL DEFAULT clock_timestamp(),
    attempt        integer             NOT NULL,
    worker_id      text,
    error          text,
    correlation_id text,
    CONSTRAINT job_history_pkey PRIMARY KEY (id)
);
ALTER TABLE skiplock.job_history SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
CREATE INDEX job_history_job_idx ON skiplock.job_history (job_id, id);

CREATE TABLE skiplock.queues (
    name        text        NOT NULL,
    paused      boolean     NOT NULL DEFAULT false,
    max_waiting integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Flow control, enforced by the claim (skiplock.claim_room_v1): at most max_running jobs of
    -- the queue run at once; with key_arg, at most max_running_per_key of them share one value
    -- of that argument (args ->> key_arg; jobs without it share the key ''); at most rate_limit
    -- start in any window of rate_period. NULL: no such limit.
    max_running         integer,
    key_arg             text,
    max_running_per_key integer,
    rate_limit          integer,
    rate_period         interval,
    -- Written by claims, not by hand: the queue's claims within its rate period, oldest first:
    -- when each decided (rate_starts) and how many jobs it started (rate_counts).
    rate_starts         timestamptz[] NOT NULL DEFAULT '{}',
    rate_counts         integer[]     NOT NULL DEFAULT '{}',
    CONSTRAINT queues_pkey PRIMARY KEY (name),
    CONSTRAINT queues_name_format CHECK (length(name) BETWEEN 1 AND 63 AND name !~ '[^a-z0-9_.-]' AND name !~ '^[.-]'),
    CONSTRAINT queues_max_waiting_positive CHECK (max_waiting IS NULL OR max_waiting > 0),
    CONSTRAINT queues_max_running_positive CHECK (max_running IS NULL OR max_running > 0),
    CONSTRAINT queues_per_key_limit CHECK (
        (key_arg IS NULL) = (max_running_per_key IS NULL)
        AND (max_running_per_key IS NULL OR max_running_per_key > 0)
        AND (key_arg IS NULL OR length(key_arg) BETWEEN 1 AND 255)),
    CONSTRAINT queues_rate_limit CHECK (
        (rate_limit IS NULL) = (rate_period IS NULL)
        AND (rate_limit IS NULL OR rate_limit > 0)
        AND (rate_period IS NULL OR (rate_period > interval '0' AND rate_period <= interval '1 day')))
);

CREATE TABLE skiplock.workers (
    id           text        NOT NULL,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    queues       text[],
    concurrency  integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- When the worker last took its liveness lock: a session-level advisory lock on
    -- hashtextextended(id, 0), held by its listener's connection, which the server releases the
    -- moment that session ends. NULL: it holds none we know of (not yet, or it left on purpose),
    -- so only the lease can tell it died. See sql/workers.sql: find_dead_workers.
    lock_taken_at timestamptz,
    CONSTRAINT workers_pkey PRIMARY KEY (id)
);
ALTER TABLE skiplock.workers SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 50);

-- The tasks workers serve, with their defaults and argument schema: each worker records
-- its own when it starts, so submitters that do not import a task's code (SQL, other
-- languages, an API with other task modules) still get the task's defaults.
CREATE TABLE skiplock.tasks (
    name         text             NOT NULL,
    queue        text             NOT NULL,
    priority     smallint         NOT NULL,
    max_attempts integer          NOT NULL,
    timeout      double precision,
    args_schema  jsonb            NOT NULL,
    worker_id    text,
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT tasks_pkey PRIMARY KEY (name),
    CONSTRAINT tasks_name_format CHECK (length(name) BETWEEN 1 AND 128 AND name !~ '[^A-Za-z0-9_.:-]' AND name !~ '^[0-9.:-]'),
    CONSTRAINT tasks_queue_format CHECK (length(queue) BETWEEN 1 AND 63 AND queue !~ '[^a-z0-9_.-]' AND queue !~ '^[.-]'),
    CONSTRAINT tasks_priority_range CHECK (priority BETWEEN 0 AND 2),
    CONSTRAINT tasks_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT tasks_timeout_positive CHECK (timeout IS NULL OR timeout > 0)
);

-- The happy path (insert, claim, successful acknowledgement) runs no trigger function: the
-- row itself records it (created_at, started_at by worker_id at attempt, finished_at), and the
-- WHEN clauses below are evaluated by the executor per row. Any other transition calls
-- jobs_transition_v1 for that row: it refuses a forbidden transition, records in job_history
-- what the row is about to forget (the run that ends, and the transition), and wakes the
-- workers of a job back in its queue.
CREATE FUNCTION skiplock.jobs_transition_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  -- A transition made within a request carries that request's id; any other (a worker's) the
  -- id of the request that submitted the job.
  cid text := coalesce(nullif(current_setting('skiplock.correlation_id', true), ''), NEW.correlation_id);
BEGIN
  IF NOT skiplock.transition_allowed(OLD.state, NEW.state) THEN
    RAISE EXCEPTION 'skiplock: job % cannot go from % to %', NEW.id, OLD.state, NEW.state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  -- The run that ends here: the next claim overwrites started_at, worker_id and attempt. A
  -- worker claimed it, so it carries the job's own correlation id.
  IF OLD.state = 'running' AND (NEW.state <> 'running' OR NEW.attempt <> OLD.attempt) THEN
    INSERT INTO skiplock.job_history (job_id, state, at, attempt, worker_id, correlation_id)
    VALUES (OLD.id, 'running', coalesce(OLD.started_at, clock_timestamp()), OLD.attempt, OLD.worker_id,
            OLD.correlation_id);
  END IF;
  IF NEW.state <> 'running' THEN
    INSERT INTO skiplock.job_history (job_id, state, attempt, worker_id, error, correlation_id)
    VALUES (NEW.id, NEW.state, NEW.attempt,
            CASE WHEN OLD.state = 'running' THEN OLD.worker_id END,
            CASE WHEN OLD.state = 'running' AND NEW.state IN ('queued', 'failed') THEN NEW.last_error END,
            cid);
  END IF;
  -- Back in its queue (retry, rescue, release, operator's retry) and due: wake a sleeping
  -- worker (Postgres folds identical notifications within a transaction).
  IF NEW.state = 'queued' AND OLD.state <> 'queued' AND NEW.run_at <= now() THEN
    PERFORM pg_notify('skiplock_jobs', NEW.queue);
  END IF;
  RETURN NULL;
END
$$;

-- Wakes sleeping workers for a job inserted by plain SQL (psql, skiplock.enqueue). The engine's
-- own insert statements (sql/jobs.sql) send their NOTIFY themselves, once per queue per
-- statement, or leave it to the caller after the commit (skiplock/wakeup.py): they set
-- skiplock.notify = 'deferred' for their transaction, so this function is not called per row.
CREATE FUNCTION skiplock.jobs_wake_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('skiplock_jobs', NEW.queue);
  RETURN NULL;
END
$$;

-- Every UPDATE of a succeeded job is refused (succeeded is final); any change of state or
-- attempt except a claim (queued -> running) and a success (running -> succeeded) goes
-- through jobs_transition_v1.
CREATE TRIGGER jobs_after_update AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state = 'succeeded'
                       OR ((OLD.state <> NEW.state OR OLD.attempt <> NEW.attempt)
                           AND NOT (OLD.state = 'queued' AND NEW.state = 'running')
                           AND NOT (OLD.state = 'running' AND NEW.state = 'succeeded')))
    EXECUTE FUNCTION skiplock.jobs_transition_v1();

CREATE TRIGGER jobs_after_insert AFTER INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.run_at <= now() AND current_setting('skiplock.notify', true) IS DISTINCT FROM 'deferred')
    EXECUTE FUNCTION skiplock.jobs_wake_v1();

-- A job is inserted queued, and a running job is never deleted (cancel it first). The WHEN
-- clause is checked per row by the executor; the function runs only for a row at fault.
CREATE FUNCTION skiplock.refuse_impossible_row_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    RAISE EXCEPTION 'skiplock: a job is inserted queued, not %; submit it with skiplock.enqueue', NEW.state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_insert_queued';
  END IF;
  RAISE EXCEPTION 'skiplock: job % is running; cancel it (skiplock.cancel) before deleting it', OLD.id
    USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_delete_running';
END
$$;

CREATE TRIGGER jobs_insert_queued BEFORE INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.state <> 'queued') EXECUTE FUNCTION skiplock.refuse_impossible_row_v1();

CREATE TRIGGER jobs_delete_running BEFORE DELETE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state = 'running') EXECUTE FUNCTION skiplock.refuse_impossible_row_v1();

-- ---------------------------------------------------------------------------
-- Functions for any language, each inside the caller's transaction.

CREATE FUNCTION skiplock.priority_value(priority text) RETURNS smallint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 WHEN 'low' THEN 2
    ELSE skiplock.raise_invalid('priority', priority, 'must be high, normal or low')::smallint END;
END
$$;

CREATE FUNCTION skiplock.raise_invalid(field text, value text, reason text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'skiplock: invalid %: % (%)', field, coalesce(value, 'null'), reason
    USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- Queue size limits (max_waiting): the one place the rule lives. Every submission path calls
-- it in the transaction that inserts: skiplock.enqueue below, and the Python engine's
-- enqueue/enqueue_many (sql/queues.sql: reserve_queue_room) for queues it knows to be limited.
-- For each of `queues` that has a limit it locks the queue's row until the transaction ends,
-- so submitters to a limited queue count and insert one at a time, and raises queue_full when
-- `wanted` more waiting jobs would exceed the limit. A queue without one costs a primary-key
-- probe and takes no lock. Rows are locked in name order: two submitters naming the same
-- queues cannot deadlock. The count runs after the lock is granted, as a statement of its own,
-- so under READ COMMITTED it sees the jobs the previous holder committed; under REPEATABLE
-- READ or SERIALIZABLE the snapshot is older, so the row is updated instead of only locked,
-- and a concurrent submitter fails with a serialization error (retry it) instead of
-- overshooting.
CREATE FUNCTION skiplock.reserve_room_v1(queues text[], wanted integer[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  candidate text;
  lim integer;
  extra bigint;
  waiting bigint;
BEGIN
  FOR candidate, extra IN
    SELECT q.name, sum(w.n)::bigint
      FROM skiplock.queues q
      JOIN unnest(reserve_room_v1.queues, reserve_room_v1.wanted) AS w(name, n) ON w.name = q.name
     WHERE q.max_waiting IS NOT NULL
     GROUP BY q.name
     ORDER BY q.name
  LOOP
    IF current_setting('transaction_isolation') = 'read committed' THEN
      SELECT q.max_waiting INTO lim FROM skiplock.queues q WHERE q.name = candidate FOR UPDATE;
    ELSE
      UPDATE skiplock.queues q SET max_waiting = q.max_waiting WHERE q.name = candidate
      RETURNING q.max_waiting INTO lim;
    END IF;
    CONTINUE WHEN lim IS NULL;  -- the limit was removed meanwhile
    -- Bounded: at most max_waiting rows are counted.
    SELECT count(*) INTO waiting
      FROM (SELECT 1 FROM skiplock.jobs j WHERE j.queue = candidate AND j.state = 'queued' LIMIT lim) s;
    IF waiting + extra > lim THEN
      RAISE EXCEPTION 'skiplock: queue % holds % waiting jobs; its limit is %', quote_literal(candidate),
            CASE WHEN waiting >= lim THEN format('%s or more', waiting) ELSE waiting::text END, lim
        USING ERRCODE = 'check_violation', CONSTRAINT = 'queues_max_waiting',
              DETAIL = json_build_object('queue', candidate, 'waiting', waiting, 'max_waiting', lim)::text;
    END IF;
  END LOOP;
END
$$;

-- Flow control: the one place its rules live. The claim (sql/jobs.sql: claim_batch) calls it for
-- the queues it takes from that have a max_running, a per-key limit or a rate limit, and takes at
-- most `room` jobs from each (and per key, at most key_rooms[i] of key keys[i], key_max of any
-- other). It locks those queues' rows in name order until the claim commits, so the claims of a
-- limited queue decide one at a time, whatever the number of workers; queues without limits are
-- never locked. The counts run after the lock is granted, each as a statement of its own, so under
-- READ COMMITTED (the workers' claims) they see the jobs the previous claim started. Running jobs
-- are counted from the table (a rescued or finished job frees its slot at that commit); starts
-- from rate_starts, within (at - rate_period, at]. `at` is the clock once every lock is held, so
-- the claims of a queue record their starts in the order they decided: a later claim never
-- records an earlier time than one it waited for.
CREATE FUNCTION skiplock.claim_room_v1(queues text[], now timestamptz)
RETURNS TABLE (queue text, room integer, key_arg text, key_max integer, keys text[], key_rooms integer[],
               at timestamptz, rated boolean)
LANGUAGE plpgsql AS $$
DECLARE
  t timestamptz;
BEGIN
  PERFORM 1 FROM skiplock.queues q WHERE q.name = ANY (claim_room_v1.queues) ORDER BY q.name FOR UPDATE;
  t := coalesce(claim_room_v1.now, clock_timestamp());
  RETURN QUERY
  SELECT q.name,
         greatest(0, least(
           coalesce(q.max_running - (SELECT count(*) FROM skiplock.jobs j
                                      WHERE j.state = 'running' AND j.queue = q.name), 2147483647),
           coalesce(q.rate_limit - (SELECT coalesce(sum(s.n), 0) FROM unnest(q.rate_starts, q.rate_counts) AS s(at, n)
                                     WHERE s.at > t - q.rate_period), 2147483647)))::integer,
         q.key_arg, q.max_running_per_key, k.keys, k.rooms, t, q.rate_limit IS NOT NULL
    FROM skiplock.queues q
    LEFT JOIN LATERAL (
         SELECT array_agg(r.key) AS keys, array_agg(greatest(0, q.max_running_per_key - r.n)::integer) AS rooms
           FROM (SELECT coalesce(j.args ->> q.key_arg, '') AS key, count(*) AS n
                   FROM skiplock.jobs j
                  WHERE j.state = 'running' AND j.queue = q.name
                  GROUP BY 1) r
          WHERE q.key_arg IS NOT NULL) k ON true
   WHERE q.name = ANY (claim_room_v1.queues);
END
$$;

-- Submit a job from SQL. Returns the job id; with an idempotency key already used in
-- the queue, returns the existing job's id and inserts nothing. Options left out come from
-- the task's row in skiplock.tasks (recorded by its workers), then the built-in defaults.
-- A queue's max_waiting holds here too (skiplock.reserve_room_v1), except for a repeat of a
-- stored job, which needs no room.
CREATE FUNCTION skiplock.enqueue(
    task text,
    args jsonb DEFAULT '{}'::jsonb,
    queue text DEFAULT NULL,
    priority text DEFAULT NULL,
    run_at timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout double precision DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    batch_id uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  d skiplock.tasks%ROWTYPE;
  q text;
  new_id uuid;
BEGIN
  IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
    PERFORM skiplock.raise_invalid('args', args::text, 'must be a JSON object');
  END IF;
  SELECT * INTO d FROM skiplock.tasks t WHERE t.name = enqueue.task;
  q := coalesce(enqueue.queue, d.queue, 'default');
  IF enqueue.idempotency_key IS NOT NULL THEN
    SELECT j.id INTO new_id FROM skiplock.jobs j
     WHERE j.queue = q AND j.idempotency_key = enqueue.idempotency_key;
    IF new_id IS NOT NULL THEN
      RETURN new_id;
    END IF;
  END IF;
  PERFORM skiplock.reserve_room_v1(ARRAY[q], ARRAY[1]);
  INSERT INTO skiplock.jobs AS j (task, args, queue, priority, run_at, max_attempts, timeout,
                                  idempotency_key, batch_id)
  VALUES (enqueue.task, enqueue.args, q,
          coalesce(CASE WHEN enqueue.priority IS NOT NULL THEN skiplock.priority_value(enqueue.priority) END,
                   d.priority, 1),
          coalesce(enqueue.run_at, now()), coalesce(enqueue.max_attempts, d.max_attempts, 3),
          coalesce(enqueue.timeout, d.timeout), enqueue.idempotency_key, enqueue.batch_id)
  ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING j.id INTO new_id;
  IF new_id IS NULL THEN
    SELECT j.id INTO new_id FROM skiplock.jobs j
     WHERE j.queue = q AND j.idempotency_key = enqueue.idempotency_key;
  END IF;
  RETURN new_id;
END
$$;

-- Put a failed or cancelled job back in the queue, to run now with a fresh set of attempts.
-- The attempt counter is not reset (it is the fencing token of every claim); the attempts
-- used so far move into attempt_base instead. A round of transitions is bounded by the job's
-- attempts, but retries are not (retry and cancel alternate without any worker), so a retry
-- trims the history to its latest rows: with the submission (on the job row) the timeline
-- holds at most 100 entries after the retry.
CREATE FUNCTION skiplock.retry(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
BEGIN
  SELECT j.state INTO s FROM skiplock.jobs j WHERE j.id = retry.job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', retry.job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('failed', 'cancelled') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only failed or cancelled jobs can be retried', retry.job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  -- Keep the 98 latest rows; the UPDATE below adds the 99th, the submission is the 100th entry.
  DELETE FROM skiplock.job_history h
   WHERE h.job_id = retry.job_id
     AND h.id < (SELECT l.id FROM skiplock.job_history l WHERE l.job_id = retry.job_id
                  ORDER BY l.id DESC OFFSET 97 LIMIT 1);
  UPDATE skiplock.jobs j
     SET state = 'queued', attempt_base = j.attempt, run_at = now(), finished_at = NULL, result = NULL
   WHERE j.id = retry.job_id;
  RETURN 'queued';
END
$$;

-- Cancel a queued or running job. A running job's worker is told at once: the commit delivers
-- a NOTIFY on skiplock_cancel with "job id:attempt" to every worker's listener, and the one
-- running that attempt stops it within a second; its next heartbeat is the fallback (a cancel
-- by a plain UPDATE is seen only there). Whatever it answers afterwards is fenced off.
CREATE FUNCTION skiplock.cancel(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
  a integer;
BEGIN
  SELECT j.state, j.attempt INTO s, a FROM skiplock.jobs j WHERE j.id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('queued', 'running') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only queued or running jobs can be cancelled', job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  UPDATE skiplock.jobs j
     SET state = 'cancelled', lease_expires_at = NULL, finished_at = now()
   WHERE j.id = job_id;
  IF s = 'running' THEN
    BEGIN
      PERFORM pg_notify('skiplock_cancel', job_id::text || ':' || a);
    EXCEPTION WHEN OTHERS THEN
      NULL;  -- a failed NOTIFY never fails the cancel: the heartbeat delivers it
    END;
  END IF;
  RETURN 'cancelled';
END
$$;

-- Cron schedules (skiplock/cron.py). Each row enqueues one job of `task` per tick of `cron` in
-- `timezone`, whichever worker's scheduler reaches the tick first: the job's idempotency key
-- names the tick (schedule:NAME:TICK), and last_tick_at is advanced by a compare-and-set.
-- Rows come from code (@task(schedule=...), skiplock.schedule(): defined_in = 'code', written
-- by each worker as it starts) or are inserted by hand (defined_in = 'sql'). next_run_at is
-- NULL until a scheduler has computed it, and while the schedule is paused; error says why
-- no scheduler can run it (a bad cron expression or time zone written from psql).
CREATE TABLE skiplock.schedules (
    name         text        NOT NULL,
    task         text        NOT NULL,
    cron         text        NOT NULL,
    timezone     text        NOT NULL DEFAULT 'UTC',
    args         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    queue        text,
    priority     text,
    paused       boolean     NOT NULL DEFAULT false,
    defined_in   text        NOT NULL DEFAULT 'sql',
    -- Ticks count from here: the schedule's creation, the last change of its cron or time
    -- zone, its last resume. No catch-up job for a tick before it.
    since        timestamptz NOT NULL DEFAULT now(),
    next_run_at  timestamptz,
    last_tick_at timestamptz,
    last_job_id  uuid,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_pkey PRIMARY KEY (name),
    CONSTRAINT schedules_name_format CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$'),
    CONSTRAINT schedules_task_format CHECK (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$'),
    CONSTRAINT schedules_queue_format CHECK (queue IS NULL OR queue ~ '^[a-z0-9_][a-z0-9_.-]{0,62}$'),
    CONSTRAINT schedules_priority_name CHECK (priority IS NULL OR priority IN ('high', 'normal', 'low')),
    CONSTRAINT schedules_args_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT schedules_defined_in CHECK (defined_in IN ('code', 'sql'))
);

-- Changing when a schedule fires (cron, time zone) or pausing or resuming it, from psql too,
-- starts it afresh: a scheduler computes its next run again from this moment (no catch-up for
-- the ticks before) and a former error is forgotten. An UPDATE that sets `since` keeps it.
CREATE FUNCTION skiplock.schedules_restart_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.next_run_at := NULL;
  NEW.error := NULL;
  IF NEW.since IS NOT DISTINCT FROM OLD.since THEN
    NEW.since := now();
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER schedules_restart BEFORE UPDATE ON skiplock.schedules
    FOR EACH ROW WHEN ((NEW.cron, NEW.timezone, NEW.paused) IS DISTINCT FROM (OLD.cron, OLD.timezone, OLD.paused))
    EXECUTE FUNCTION skiplock.schedules_restart_v1();

-- ---------------------------------------------------------------------------
-- Views for psql.

CREATE VIEW skiplock.queue_stats AS
SELECT q.queue,
       coalesce(p.paused, false) AS paused,
       count(*) FILTER (WHERE j.state = 'queued' AND j.run_at <= now()) AS ready,
       count(*) FILTER (WHERE j.state = 'queued' AND j.run_at > now())  AS scheduled,
       count(*) FILTER (WHERE j.state = 'running')   AS running,
       count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE j.state = 'failed')    AS failed,
       count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
       coalesce(extract(epoch FROM now() - min(j.run_at) FILTER (
           WHERE j.state = 'queued' AND j.run_at <= now())), 0)::double precision AS oldest_ready_seconds
  FROM (SELECT DISTINCT queue FROM skiplock.jobs UNION SELECT name FROM skiplock.queues) q
  LEFT JOIN skiplock.jobs j ON j.queue = q.queue
  LEFT JOIN skiplock.queues p ON p.name = q.queue
 GROUP BY q.queue, p.paused;

-- A job's transitions in order (step 1, 2, ...), as the API, CLI and dashboard show them:
-- the submission and the latest run from the job row, everything else from job_history.
-- While a job is running or succeeded, every history row precedes its latest claim (any
-- other transition out of running writes that run to the history), so the order is
-- submission, history rows, latest claim, success.
CREATE VIEW skiplock.job_timeline AS
SELECT t.job_id, row_number() OVER (PARTITION BY t.job_id ORDER BY t.part, t.seq) AS step,
       t.state, t.at, t.attempt, t.worker_id, t.error, t.correlation_id
  FROM (SELECT j.id AS job_id, 0 AS part, 0::bigint AS seq, 'queued'::skiplock.job_state AS state,
               j.created_at AS at, 0 AS attempt, NULL::text AS worker_id, NULL::text AS error, j.correlation_id
          FROM skiplock.jobs j
        UNION ALL
        SELECT h.job_id, 1, h.id, h.state, h.at, h.attempt, h.worker_id, h.error, h.correlation_id
          FROM skiplock.job_history h
        UNION ALL
        SELECT j.id, 2, 0, 'running', coalesce(j.started_at, j.created_at), j.attempt, j.worker_id, NULL,
               j.correlation_id
          FROM skiplock.jobs j WHERE j.state IN ('running', 'succeeded')
        UNION ALL
        SELECT j.id, 3, 0, 'succeeded', coalesce(j.finished_at, j.started_at, j.created_at), j.attempt,
               j.worker_id, NULL, j.correlation_id
          FROM skiplock.jobs j WHERE j.state = 'succeeded') t;

CREATE VIEW skiplock.dead_letter AS
SELECT id, task, queue, attempt, max_attempts, last_error, args, finished_at, created_at
  FROM skiplock.jobs
 WHERE state = 'failed';

CREATE VIEW skiplock.stuck_jobs AS
SELECT id, task, queue, attempt, worker_id, started_at, lease_expires_at,
       now() - lease_expires_at AS overdue
  FROM skiplock.jobs
 WHERE state = 'running' AND lease_expires_at < now();
