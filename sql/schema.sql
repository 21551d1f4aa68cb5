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

-- Which state may follow which. The only place the rules live; the trigger below
-- asks it for every updated row, whoever runs the UPDATE (worker, API or psql).
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
    CONSTRAINT jobs_pkey PRIMARY KEY (id),
    CONSTRAINT jobs_task_format CHECK (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$'),
    CONSTRAINT jobs_queue_format CHECK (queue ~ '^[a-z0-9_][a-z0-9_.-]{0,62}$'),
    CONSTRAINT jobs_priority_range CHECK (priority BETWEEN 0 AND 2),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT jobs_attempt_nonnegative CHECK (attempt >= 0),
    CONSTRAINT jobs_attempt_base_range CHECK (attempt_base BETWEEN 0 AND attempt),
    CONSTRAINT jobs_timeout_positive CHECK (timeout IS NULL OR timeout > 0),
    CONSTRAINT jobs_idempotency_key_length CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255),
    -- A running job always has a holder and a lease; nothing else has one.
    CONSTRAINT jobs_running_has_lease CHECK (
        (state = 'running') = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL))
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

-- Serves exactly the claim query (sql/jobs.sql: claim_batch): queued rows only, in
-- claim order. Rows leave the index as soon as they are claimed.
CREATE INDEX jobs_claim_idx ON skiplock.jobs (priority, run_at, id) WHERE state = 'queued';
-- The rescuer's scan: running rows whose lease expired.
CREATE INDEX jobs_lease_idx ON skiplock.jobs (lease_expires_at) WHERE state = 'running';
-- Idempotency: one job per (queue, key), whatever races.
CREATE UNIQUE INDEX jobs_idempotency_key_uniq ON skiplock.jobs (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The pruner and the listing endpoints.
CREATE INDEX jobs_finished_at_idx ON skiplock.jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_batch_idx ON skiplock.jobs (batch_id) WHERE batch_id IS NOT NULL;

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
    CONSTRAINT queues_pkey PRIMARY KEY (name),
    CONSTRAINT queues_name_format CHECK (name ~ '^[a-z0-9_][a-z0-9_.-]{0,62}$'),
    CONSTRAINT queues_max_waiting_positive CHECK (max_waiting IS NULL OR max_waiting > 0)
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
    CONSTRAINT tasks_name_format CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$'),
    CONSTRAINT tasks_queue_format CHECK (queue ~ '^[a-z0-9_][a-z0-9_.-]{0,62}$'),
    CONSTRAINT tasks_priority_range CHECK (priority BETWEEN 0 AND 2),
    CONSTRAINT tasks_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT tasks_timeout_positive CHECK (timeout IS NULL OR timeout > 0)
);

-- Refuses any state change the contract does not allow, and writes each transition to
-- the history in the same statement (set-based: one INSERT per UPDATE statement, not per row).
-- The correlation id comes from the transaction-local setting skiplock.correlation_id.
-- v2: one hash join of the transition tables per statement, read three times. v1 joined them
-- three times, once under LIMIT 1, where the planner chose a nested loop that cost a million
-- comparisons for a statement of 1,000 rows (a claim or an acknowledgement batch).
CREATE FUNCTION skiplock.jobs_after_update_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  bad_id uuid;
  bad_old skiplock.job_state;
  bad_new skiplock.job_state;
  wake text[];
  q text;
BEGIN
  WITH t AS MATERIALIZED (
    SELECT n.id, o.state AS old_state, n.state AS new_state, o.attempt AS old_attempt, n.attempt,
           coalesce(n.worker_id, o.worker_id) AS worker_id, n.last_error, n.queue, n.run_at
      FROM old_jobs o JOIN new_jobs n ON n.id = o.id
  ), history AS (
    INSERT INTO skiplock.job_history (job_id, state, attempt, worker_id, error, correlation_id)
    SELECT t.id, t.new_state, t.attempt, t.worker_id,
           CASE WHEN t.old_state = 'running' AND t.new_state IN ('queued', 'failed') THEN t.last_error END,
           nullif(current_setting('skiplock.correlation_id', true), '')
      FROM t
     WHERE t.new_state <> t.old_state OR t.attempt <> t.old_attempt
  )
  -- A job back in queued (retry, rescue, release, operator's retry) that is due now
  -- wakes a sleeping worker, once per queue.
  SELECT b.id, b.old_state, b.new_state, w.queues INTO bad_id, bad_old, bad_new, wake
    FROM (SELECT array_agg(DISTINCT t.queue) AS queues FROM t
           WHERE t.new_state = 'queued' AND t.old_state <> 'queued' AND t.run_at <= now()) w
    LEFT JOIN LATERAL (SELECT t.id, t.old_state, t.new_state FROM t
                        WHERE NOT skiplock.transition_allowed(t.old_state, t.new_state) LIMIT 1) b ON true;
  IF bad_id IS NOT NULL THEN
    RAISE EXCEPTION 'skiplock: job % cannot go from % to %', bad_id, bad_old, bad_new
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  IF wake IS NOT NULL THEN
    FOREACH q IN ARRAY wake LOOP
      BEGIN
        PERFORM pg_notify('skiplock_jobs', q);
      EXCEPTION WHEN OTHERS THEN
        NULL;
      END;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$;

-- v2: a submitter that wakes the workers itself after its commit (the HTTP API, see
-- skiplock/wakeup.py) sets skiplock.notify = 'deferred' for its statement, and the trigger
-- sends nothing. A NOTIFY inside a transaction holds a database-wide lock through that
-- transaction's commit (WAL flush), so concurrent submitters that each notify commit one at
-- a time; deferred, their commits group again and one NOTIFY covers many of them.
CREATE FUNCTION skiplock.jobs_after_insert_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  q text;
BEGIN
  INSERT INTO skiplock.job_history (job_id, state, attempt, correlation_id)
  SELECT n.id, n.state, n.attempt, nullif(current_setting('skiplock.correlation_id', true), '')
    FROM new_jobs n;
  -- Wake sleeping workers: one NOTIFY per queue per statement (Postgres folds identical
  -- notifications within a transaction). A failed NOTIFY must never fail the insert.
  IF current_setting('skiplock.notify', true) IS DISTINCT FROM 'deferred' THEN
    FOR q IN SELECT DISTINCT n.queue FROM new_jobs n WHERE n.state = 'queued' AND n.run_at <= now() LOOP
      BEGIN
        PERFORM pg_notify('skiplock_jobs', q);
      EXCEPTION WHEN OTHERS THEN
        NULL;
      END;
    END LOOP;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_after_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_update_v2();

CREATE TRIGGER jobs_after_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_insert_v2();

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
-- trims the history: it keeps the first row (the submission) and the latest ones, at most
-- 100 rows after the retry.
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
  -- Keep the first row (the submission) and the 98 latest; the UPDATE below adds the 100th.
  DELETE FROM skiplock.job_history h
   WHERE h.job_id = retry.job_id
     AND h.id > (SELECT min(f.id) FROM skiplock.job_history f WHERE f.job_id = retry.job_id)
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
     SET state = 'cancelled', worker_id = NULL, lease_expires_at = NULL, finished_at = now()
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

CREATE VIEW skiplock.dead_letter AS
SELECT id, task, queue, attempt, max_attempts, last_error, args, finished_at, created_at
  FROM skiplock.jobs
 WHERE state = 'failed';

CREATE VIEW skiplock.stuck_jobs AS
SELECT id, task, queue, attempt, worker_id, started_at, lease_expires_at,
       now() - lease_expires_at AS overdue
  FROM skiplock.jobs
 WHERE state = 'running' AND lease_expires_at < now();
