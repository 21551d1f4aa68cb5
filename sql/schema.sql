-- Skiplock schema: the one a person reads.
-- Migrations (migrations/versions/*) must reproduce exactly this; a test diffs
-- `pg_dump --schema-only` of a migrated database against a database built from this file.

CREATE SCHEMA skiplock;

-- waiting: the job names jobs it waits for (depends_on) and one of them has not succeeded yet;
-- it is not claimable until the last one succeeds (see "Dependencies" below).
CREATE TYPE skiplock.job_state AS ENUM ('waiting', 'queued', 'running', 'succeeded', 'failed', 'cancelled');

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
    WHEN 'waiting'   THEN new_state IN ('waiting', 'queued', 'cancelled', 'failed')
    WHEN 'queued'    THEN new_state IN ('queued', 'running', 'cancelled')
    WHEN 'running'   THEN new_state IN ('running', 'queued', 'succeeded', 'failed', 'cancelled', 'waiting')
    WHEN 'failed'    THEN new_state IN ('failed', 'queued', 'waiting')
    WHEN 'cancelled' THEN new_state IN ('cancelled', 'queued', 'waiting')
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
    -- The jobs this one waits for, as submitted (sorted, without repeats); NULL for a job that
    -- waits for none. See "Dependencies" below.
    depends_on       uuid[],
    -- Some job waits (or waited) for this one: only such a job's end runs
    -- jobs_release_dependents_v1 (the trigger's WHEN clause reads this flag).
    has_dependents   boolean             NOT NULL DEFAULT false,
    -- While the job is parked for a person (state waiting): {"reason", "data" (the handler's),
    -- "at", "attempt", "worker_id"}. Cleared when it leaves waiting (jobs_unpark). See
    -- "Parked jobs" below.
    parked           jsonb,
    -- What the operator who resumed it gave its next attempt (ctx.review).
    review           jsonb,
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
        (state = 'running') = (lease_expires_at IS NOT NULL) AND (state <> 'running' OR worker_id IS NOT NULL)),
    -- A waiting job waits for its dependencies or for a person (parked).
    CONSTRAINT jobs_waiting_has_a_reason CHECK (state <> 'waiting' OR depends_on IS NOT NULL OR parked IS NOT NULL),
    CONSTRAINT jobs_parked_waiting CHECK (parked IS NULL OR state = 'waiting'),
    CONSTRAINT jobs_depends_on_size CHECK (cardinality(depends_on) BETWEEN 1 AND 1000)
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
            CASE WHEN (OLD.state = 'running' AND NEW.state IN ('queued', 'failed', 'waiting'))
                   OR (OLD.state = 'waiting' AND NEW.state = 'failed') THEN NEW.last_error END,
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
    FOR EACH ROW WHEN (NEW.state <> 'queued' AND NOT (NEW.state = 'waiting' AND NEW.depends_on IS NOT NULL))
    EXECUTE FUNCTION skiplock.refuse_impossible_row_v1();

CREATE TRIGGER jobs_delete_running BEFORE DELETE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state = 'running') EXECUTE FUNCTION skiplock.refuse_impossible_row_v1();

-- ---------------------------------------------------------------------------
-- Dependencies. A job submitted with depends_on (ids of jobs it waits for) is inserted
-- `waiting` and is not claimable (the claim reads queued rows only). It becomes `queued` in
-- the transaction in which the last of them succeeds, and that transaction's commit wakes the
-- workers of its queue (jobs_transition_v1 sends the NOTIFY of a job back in its queue). When
-- one of them fails for good or is cancelled, the waiting job is cancelled with a reason
-- naming it, and so are the jobs waiting for it in turn. Only jobs that have dependencies or
-- dependents run any of this: the happy path of every other job runs no trigger function.

-- One row per unfinished dependency of a waiting job; the rows of a dependency go when it ends.
CREATE TABLE skiplock.job_dependencies (
    depends_on uuid NOT NULL,
    job_id     uuid NOT NULL,
    CONSTRAINT job_dependencies_pkey PRIMARY KEY (depends_on, job_id)
);

-- A job inserted with dependencies is inserted waiting (its own statement may also insert the
-- jobs it waits for, which a BEFORE trigger may not see yet: jobs_link_dependencies_v1 checks
-- them after the statement). An empty list is no dependency.
CREATE FUNCTION skiplock.jobs_submit_waiting_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF cardinality(NEW.depends_on) = 0 THEN
    NEW.depends_on := NULL;
    RETURN NEW;
  END IF;
  IF array_position(NEW.depends_on, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'skiplock: depends_on holds a NULL; name job ids'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_known';
  END IF;
  NEW.depends_on := ARRAY(SELECT DISTINCT d FROM unnest(NEW.depends_on) AS d ORDER BY d);
  IF NEW.state = 'queued' THEN
    NEW.state := 'waiting';
  END IF;
  RETURN NEW;
END
$$;

-- A job entering `waiting` (inserted, or put back by an operator's retry): its dependencies
-- must be jobs, not failed or cancelled, and must not wait for it (a cycle); each unfinished
-- one is told it has a dependent (has_dependents, a row in job_dependencies). It is locked
-- first, in id order, so that it cannot end before this transaction does and two submitters
-- naming the same jobs cannot deadlock. When every dependency has already succeeded the job
-- is queued at once.
CREATE FUNCTION skiplock.jobs_link_dependencies_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  missing uuid;
  ended record;
  loop_via uuid;
BEGIN
  IF NEW.id = ANY (NEW.depends_on) THEN
    RAISE EXCEPTION 'skiplock: job % depends on itself', NEW.id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_cycle',
            DETAIL = json_build_object('job_id', NEW.id, 'dependent_id', NEW.id)::text;
  END IF;
  PERFORM 1 FROM skiplock.jobs x WHERE x.id = ANY (NEW.depends_on) ORDER BY x.id FOR NO KEY UPDATE;
  SELECT d INTO missing FROM unnest(NEW.depends_on) AS d
   WHERE NOT EXISTS (SELECT 1 FROM skiplock.jobs x WHERE x.id = d) ORDER BY d LIMIT 1;
  IF FOUND AND TG_OP = 'INSERT' THEN
    RAISE EXCEPTION 'skiplock: job % depends on %, which is not a job', NEW.id, missing
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_known',
            DETAIL = json_build_object('job_id', missing, 'dependent_id', NEW.id)::text;
  ELSIF FOUND THEN  -- pruned or deleted since: whether it succeeded is not known any more
    RAISE EXCEPTION 'skiplock: job % depends on %, which no longer exists; submit it again', NEW.id, missing
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition',
            DETAIL = json_build_object('job_id', missing, 'dependent_id', NEW.id)::text;
  END IF;
  SELECT x.id, x.state INTO ended FROM skiplock.jobs x
   WHERE x.id = ANY (NEW.depends_on) AND x.state IN ('failed', 'cancelled') ORDER BY x.id LIMIT 1;
  IF FOUND THEN
    IF TG_OP = 'INSERT' THEN
      RAISE EXCEPTION 'skiplock: job % depends on job %, which is %', NEW.id, ended.id, ended.state
        USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_ended',
              DETAIL = json_build_object('job_id', ended.id, 'state', ended.state, 'dependent_id', NEW.id)::text;
    END IF;
    RAISE EXCEPTION 'skiplock: job % depends on job %, which is %; retry that one first', NEW.id, ended.id, ended.state
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition',
            DETAIL = json_build_object('job_id', ended.id, 'state', ended.state)::text;
  END IF;
  -- A cycle needs jobs that name each other, so all of them are inserted by one statement
  -- (an id must exist to be named): walk up the waiting jobs this one waits for.
  WITH RECURSIVE up(id, deps) AS (
      SELECT x.id, x.depends_on FROM skiplock.jobs x WHERE x.id = ANY (NEW.depends_on) AND x.state = 'waiting'
      UNION
      SELECT x.id, x.depends_on FROM up JOIN skiplock.jobs x ON x.id = ANY (up.deps) AND x.state = 'waiting'
  )
  SELECT up.id INTO loop_via FROM up WHERE NEW.id = ANY (up.deps) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'skiplock: job % and job % wait for each other (a dependency cycle)', NEW.id, loop_via
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_cycle',
            DETAIL = json_build_object('job_id', loop_via, 'dependent_id', NEW.id)::text;
  END IF;
  UPDATE skiplock.jobs x SET has_dependents = true
   WHERE x.id = ANY (NEW.depends_on) AND x.state <> 'succeeded' AND NOT x.has_dependents;
  INSERT INTO skiplock.job_dependencies (depends_on, job_id)
  SELECT x.id, NEW.id FROM skiplock.jobs x WHERE x.id = ANY (NEW.depends_on) AND x.state <> 'succeeded'
  ON CONFLICT DO NOTHING;
  IF NOT EXISTS (SELECT 1 FROM skiplock.jobs x WHERE x.id = ANY (NEW.depends_on) AND x.state <> 'succeeded') THEN
    UPDATE skiplock.jobs j SET state = 'queued' WHERE j.id = NEW.id AND j.state = 'waiting';
  END IF;
  RETURN NULL;
END
$$;

-- A job with dependents ended: release the ones whose last dependency this was, or cancel
-- them (and their own dependents) when it failed or was cancelled.
CREATE FUNCTION skiplock.jobs_release_dependents_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  dependents uuid[];
BEGIN
  WITH ended AS (
      DELETE FROM skiplock.job_dependencies e WHERE e.depends_on = NEW.id RETURNING e.job_id
  )
  SELECT array_agg(ended.job_id ORDER BY ended.job_id) INTO dependents FROM ended;
  IF dependents IS NULL THEN
    RETURN NULL;
  END IF;
  IF NEW.state = 'succeeded' THEN
    -- Lock first, check in the next statement: two transactions that finish a job's last two
    -- dependencies at once queue up on its row lock here, and the later one, whose next
    -- statement takes a new snapshot (READ COMMITTED), sees the other's success and releases
    -- it. One statement would judge by a snapshot taken before the wait.
    PERFORM 1 FROM skiplock.jobs d WHERE d.id = ANY (dependents) AND d.state = 'waiting' ORDER BY d.id
        FOR NO KEY UPDATE;
    UPDATE skiplock.jobs d SET state = 'queued'
     WHERE d.id = ANY (dependents) AND d.state = 'waiting'
       AND NOT EXISTS (SELECT 1 FROM skiplock.jobs x WHERE x.id = ANY (d.depends_on) AND x.state <> 'succeeded');
    RETURN NULL;
  END IF;
  -- All the waiting jobs downstream at once (one statement, however long the chain), each with
  -- the dependency it was waiting for that ended.
  WITH RECURSIVE doomed(id, cause) AS (
      SELECT d.id, NEW.id FROM skiplock.jobs d WHERE d.id = ANY (dependents) AND d.state = 'waiting'
      UNION
      SELECT e.job_id, doomed.id FROM doomed
        JOIN skiplock.job_dependencies e ON e.depends_on = doomed.id
        JOIN skiplock.jobs d ON d.id = e.job_id AND d.state = 'waiting'
  )
  UPDATE skiplock.jobs d
     SET state = 'cancelled', finished_at = now(),
         last_error = CASE WHEN c.cause = NEW.id
                           THEN format('skiplock: dependency %s (%s) %s', NEW.id, NEW.task, NEW.state)
                           ELSE format('skiplock: dependency %s was cancelled: its dependency %s (%s) %s',
                                       c.cause, NEW.id, NEW.task, NEW.state) END
    FROM (SELECT DISTINCT ON (doomed.id) doomed.id, doomed.cause FROM doomed
           ORDER BY doomed.id, doomed.cause = NEW.id DESC, doomed.cause) c
   WHERE d.id = c.id AND d.state = 'waiting';
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_insert_waiting BEFORE INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.depends_on IS NOT NULL) EXECUTE FUNCTION skiplock.jobs_submit_waiting_v1();

CREATE TRIGGER jobs_link_dependencies AFTER INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.state = 'waiting') EXECUTE FUNCTION skiplock.jobs_link_dependencies_v1();

CREATE TRIGGER jobs_relink_dependencies AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.state <> 'waiting' AND NEW.state = 'waiting' AND NEW.parked IS NULL)
    EXECUTE FUNCTION skiplock.jobs_link_dependencies_v1();

CREATE TRIGGER jobs_release_dependents AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.has_dependents AND OLD.state <> NEW.state
                       AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION skiplock.jobs_release_dependents_v1();

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
-- stored job, which needs no room. depends_on: ids of jobs it waits for (see "Dependencies").
CREATE FUNCTION skiplock.enqueue(
    task text,
    args jsonb DEFAULT '{}'::jsonb,
    queue text DEFAULT NULL,
    priority text DEFAULT NULL,
    run_at timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT NULL,
    timeout double precision DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    batch_id uuid DEFAULT NULL,
    depends_on uuid[] DEFAULT NULL
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
                                  idempotency_key, batch_id, depends_on)
  VALUES (enqueue.task, enqueue.args, q,
          coalesce(CASE WHEN enqueue.priority IS NOT NULL THEN skiplock.priority_value(enqueue.priority) END,
                   d.priority, 1),
          coalesce(enqueue.run_at, now()), coalesce(enqueue.max_attempts, d.max_attempts, 3),
          coalesce(enqueue.timeout, d.timeout), enqueue.idempotency_key, enqueue.batch_id, enqueue.depends_on)
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
-- holds at most 100 entries after the retry. A job with dependencies waits again for those
-- that have not succeeded (refused while one of them is failed or cancelled: retry it first).
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
     SET state = CASE WHEN j.depends_on IS NULL THEN 'queued' ELSE 'waiting' END::skiplock.job_state,
         attempt_base = j.attempt, run_at = now(), finished_at = NULL, result = NULL
   WHERE j.id = retry.job_id;
  SELECT j.state INTO s FROM skiplock.jobs j WHERE j.id = retry.job_id;
  RETURN s;
END
$$;

-- Cancel a waiting, queued or running job. A running job's worker is told at once: the commit delivers
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
  IF s NOT IN ('waiting', 'queued', 'running') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only waiting, queued or running jobs can be cancelled', job_id, s
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
-- Batches: a group of jobs with exact live counts and one completion job. A batch is created
-- `open`, filled (jobs inserted with its id as batch_id, in one transaction or several) and
-- sealed: `active` while any of its jobs is queued or running, then final in the transaction
-- that ends its last job: `cancelled` if any of its jobs was cancelled, else `failed` if any
-- failed, else `succeeded`. An open batch never completes. A job whose batch_id names no batch
-- is only labelled with it (as before batches existed); a sealed batch takes no new jobs.
-- The counts change in the statement that changes the jobs (skiplock.batches_count_v1), once
-- per batch per statement, so they always equal a count of the batch's jobs by state; pruning
-- its finished jobs leaves them as they were. `pending` counts its queued and running jobs
-- together: a claim (queued -> running) and a job put back (rescue, release, retry after
-- backoff) leave the row alone, so a worker's claims never wait on its acknowledgements for
-- this row. How many of them run or wait is counted where they are (jobs_batch_pending_idx):
-- skiplock.batch_progress shows waiting, queued, running and parked, exact in one snapshot. on_complete is the completion job (task, args, queue, priority, max_attempts,
-- timeout; what is left out comes from skiplock.tasks).
CREATE TABLE skiplock.batches (
    id                uuid        NOT NULL DEFAULT skiplock.uuid_v7(),
    state             text        NOT NULL DEFAULT 'open',
    total             integer     NOT NULL DEFAULT 0,
    pending           integer     NOT NULL DEFAULT 0,
    succeeded         integer     NOT NULL DEFAULT 0,
    failed            integer     NOT NULL DEFAULT 0,
    cancelled         integer     NOT NULL DEFAULT 0,
    on_complete       jsonb,
    completion_job_id uuid,
    correlation_id    text        DEFAULT nullif(current_setting('skiplock.correlation_id', true), ''),
    created_at        timestamptz NOT NULL DEFAULT now(),
    sealed_at         timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    CONSTRAINT batches_pkey PRIMARY KEY (id),
    CONSTRAINT batches_state_name CHECK (state IN ('open', 'active', 'succeeded', 'failed', 'cancelled')),
    -- The counts can never drift apart unnoticed: a statement that would break this fails.
    CONSTRAINT batches_counts CHECK (pending >= 0 AND succeeded >= 0 AND failed >= 0 AND cancelled >= 0
                                     AND total = pending + succeeded + failed + cancelled),
    -- The completion job is inserted by the statement that ends the last job: it must not fail.
    CONSTRAINT batches_on_complete_valid CHECK (on_complete IS NULL OR (
        jsonb_typeof(on_complete) = 'object'
        AND length(on_complete->>'task') BETWEEN 1 AND 128 AND on_complete->>'task' !~ '[^A-Za-z0-9_.:-]'
        AND on_complete->>'task' !~ '^[0-9.:-]'
        AND jsonb_typeof(coalesce(on_complete->'args', '{}')) = 'object'
        AND (on_complete->>'queue' IS NULL OR (length(on_complete->>'queue') BETWEEN 1 AND 63
             AND on_complete->>'queue' !~ '[^a-z0-9_.-]' AND on_complete->>'queue' !~ '^[.-]'))
        AND coalesce(on_complete->>'priority', '1') IN ('0', '1', '2')
        AND coalesce(on_complete->>'max_attempts', '1') ~ '^[1-9][0-9]{0,3}$'
        AND (jsonb_typeof(on_complete->'timeout') IS NULL OR jsonb_typeof(on_complete->'timeout') = 'null'
             OR (jsonb_typeof(on_complete->'timeout') = 'number' AND (on_complete->>'timeout')::float8 > 0))))
);
ALTER TABLE skiplock.batches SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0,
                                  autovacuum_vacuum_threshold = 200);
-- The running and waiting jobs of each batch (skiplock.batch_progress); jobs of no batch are not in it.
CREATE INDEX jobs_batch_pending_idx ON skiplock.jobs (batch_id, state)
 WHERE state IN ('running', 'waiting') AND batch_id IS NOT NULL;

-- Inserts the completion job of a batch that just reached its final state, in the same
-- transaction: its arguments are on_complete's with "batch" set to the batch's id, state and
-- counts. Called once per completion, by skiplock.batches_count_v1 or skiplock.seal_batch
-- while they hold the batch's row lock.
CREATE FUNCTION skiplock.batch_complete_v1(batch_id uuid) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
  b skiplock.batches%ROWTYPE;
  d skiplock.tasks%ROWTYPE;
  new_id uuid;
BEGIN
  SELECT * INTO b FROM skiplock.batches x WHERE x.id = batch_complete_v1.batch_id;
  IF b.on_complete IS NULL THEN
    RETURN NULL;
  END IF;
  SELECT * INTO d FROM skiplock.tasks t WHERE t.name = b.on_complete->>'task';
  INSERT INTO skiplock.jobs AS j (task, args, queue, priority, max_attempts, timeout, correlation_id)
  VALUES (b.on_complete->>'task',
          coalesce(b.on_complete->'args', '{}') || jsonb_build_object('batch', jsonb_build_object(
              'id', b.id, 'state', b.state, 'total', b.total, 'succeeded', b.succeeded, 'failed', b.failed,
              'cancelled', b.cancelled)),
          coalesce(b.on_complete->>'queue', d.queue, 'default'),
          coalesce((b.on_complete->>'priority')::smallint, d.priority, 1),
          coalesce((b.on_complete->>'max_attempts')::integer, d.max_attempts, 3),
          CASE WHEN jsonb_typeof(b.on_complete->'timeout') = 'number' THEN (b.on_complete->>'timeout')::float8
               ELSE d.timeout END,
          b.correlation_id)
  RETURNING j.id INTO new_id;
  UPDATE skiplock.batches x SET completion_job_id = new_id WHERE x.id = b.id;
  RETURN new_id;
END
$$;

-- Keeps every batch's counts equal to its jobs' states, in the statement that changes them:
-- each job a statement inserts, changes or deletes counts -1 in its old (batch, state) and +1
-- in its new one, summed per batch, so the batch's row is updated once per statement (not per
-- job) and only when a count changes: not for a claim, a job put back in its queue or a lease
-- renewal (queued and running are both `pending`). Deleting a finished job (pruning) keeps
-- the counts; deleting an unfinished one takes it out of its batch.
-- Under READ COMMITTED, an UPDATE that waited for another transaction's lock on the batch row
-- recomputes from the version that transaction committed, so exactly one transaction sees the
-- last pending job end: that one sets the final state and inserts the completion job. Rows of
-- several batches are locked in id order first, so two statements cannot deadlock on them.
-- A statement that touches no batch job returns after one pass over its transition tables.
CREATE FUNCTION skiplock.batches_count_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  ids uuid[];
  dp integer[];
  ds integer[];
  df integer[];
  dc integer[];
  started uuid[];
  r record;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT array_agg(c.batch_id ORDER BY c.batch_id), array_agg(c.n ORDER BY c.batch_id)
      INTO ids, dp
      FROM (SELECT n.batch_id, count(*)::integer AS n FROM new_jobs n WHERE n.batch_id IS NOT NULL
             GROUP BY n.batch_id) c;
  ELSIF TG_OP = 'UPDATE' THEN
    SELECT array_agg(c.batch_id ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.p ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.s ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.f ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.c ORDER BY c.batch_id) FILTER (WHERE (c.p, c.s, c.f, c.c) <> (0, 0, 0, 0)),
           array_agg(c.batch_id) FILTER (WHERE c.runs)
      INTO ids, dp, ds, df, dc, started
      FROM (SELECT m.batch_id,
                   coalesce(sum(m.n) FILTER (WHERE m.state NOT IN ('succeeded', 'failed', 'cancelled')),
                            0)::integer AS p,
                   coalesce(sum(m.n) FILTER (WHERE m.state = 'succeeded'), 0)::integer AS s,
                   coalesce(sum(m.n) FILTER (WHERE m.state = 'failed'), 0)::integer AS f,
                   coalesce(sum(m.n) FILTER (WHERE m.state = 'cancelled'), 0)::integer AS c,
                   bool_or(m.n = 1 AND m.state = 'running') AS runs
              FROM (SELECT o.batch_id, o.state, -1 AS n FROM old_jobs o WHERE o.batch_id IS NOT NULL
                    UNION ALL
                    SELECT n.batch_id, n.state, 1 FROM new_jobs n WHERE n.batch_id IS NOT NULL) m
             GROUP BY m.batch_id) c;
    -- A batch's first claim sets started_at; later ones find it set and write nothing.
    IF started IS NOT NULL THEN
      UPDATE skiplock.batches b SET started_at = now() WHERE b.id = ANY (started) AND b.started_at IS NULL;
    END IF;
  ELSE  -- DELETE
    SELECT array_agg(c.batch_id ORDER BY c.batch_id), array_agg(c.p ORDER BY c.batch_id)
      INTO ids, dp
      FROM (SELECT o.batch_id, -count(*)::integer AS p FROM old_jobs o
             WHERE o.batch_id IS NOT NULL AND o.state NOT IN ('succeeded', 'failed', 'cancelled')
             GROUP BY o.batch_id) c;
  END IF;
  IF ids IS NULL THEN
    RETURN NULL;
  END IF;
  IF TG_OP <> 'UPDATE' THEN
    ds := array_fill(0, ARRAY[cardinality(ids)]);
    df := ds;
    dc := ds;
  END IF;
  IF cardinality(ids) > 1 THEN
    PERFORM 1 FROM skiplock.batches b WHERE b.id = ANY (ids) ORDER BY b.id FOR NO KEY UPDATE;
  END IF;
  FOR r IN
    UPDATE skiplock.batches b
       SET total = b.total + d.p + d.s + d.f + d.c,
           pending = b.pending + d.p, succeeded = b.succeeded + d.s, failed = b.failed + d.f,
           cancelled = b.cancelled + d.c,
           state = CASE WHEN b.state = 'open' THEN 'open'
                        WHEN b.pending + d.p > 0 THEN 'active'  -- (re)opened by a retry
                        WHEN b.state <> 'active' THEN b.state   -- final already
                        WHEN b.cancelled + d.c > 0 THEN 'cancelled'
                        WHEN b.failed + d.f > 0 THEN 'failed'
                        ELSE 'succeeded' END,
           finished_at = CASE WHEN b.state = 'open' OR b.pending + d.p > 0 THEN NULL
                              ELSE coalesce(b.finished_at, now()) END
      FROM unnest(ids, dp, ds, df, dc) AS d(id, p, s, f, c)
     WHERE b.id = d.id
    RETURNING b.id, b.state, d.p + d.s + d.f + d.c > 0 AS entered,
              -- final now, and this statement ended its last pending jobs
              b.state IN ('succeeded', 'failed', 'cancelled') AND d.p < 0 AS completed
  LOOP
    IF r.entered AND r.state <> 'open' THEN
      RAISE EXCEPTION 'skiplock: batch % is sealed (%); it takes no new jobs', r.id, r.state
        USING ERRCODE = 'check_violation', CONSTRAINT = 'batches_sealed';
    END IF;
    IF r.completed THEN
      PERFORM skiplock.batch_complete_v1(r.id);
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_batch_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.batches_count_v1();
CREATE TRIGGER jobs_batch_update AFTER UPDATE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.batches_count_v1();
CREATE TRIGGER jobs_batch_delete AFTER DELETE ON skiplock.jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.batches_count_v1();

-- Open a batch; returns its id. Fill it with jobs naming it as batch_id (skiplock.enqueue(...,
-- batch_id => id), in this transaction or later ones), then seal it (skiplock.seal_batch).
-- The completion job's options left out come from the task's row in skiplock.tasks.
CREATE FUNCTION skiplock.open_batch(
    on_complete_task text DEFAULT NULL,
    on_complete_args jsonb DEFAULT '{}'::jsonb,
    on_complete_queue text DEFAULT NULL,
    on_complete_priority text DEFAULT NULL,
    on_complete_max_attempts integer DEFAULT NULL,
    on_complete_timeout double precision DEFAULT NULL
) RETURNS uuid
LANGUAGE sql AS $$
  INSERT INTO skiplock.batches (on_complete)
  SELECT CASE WHEN on_complete_task IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
           'task', on_complete_task, 'args', coalesce(on_complete_args, '{}'::jsonb), 'queue', on_complete_queue,
           'priority', CASE WHEN on_complete_priority IS NOT NULL
                            THEN skiplock.priority_value(on_complete_priority) END,
           'max_attempts', on_complete_max_attempts, 'timeout', on_complete_timeout)) END
  RETURNING id
$$;

-- No more jobs join the batch: it becomes active, or final at once (with its completion job)
-- when none of its jobs is left to run. Sealing a sealed batch changes nothing. Returns the
-- batch's state.
CREATE FUNCTION skiplock.seal_batch(batch_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  s text;
BEGIN
  UPDATE skiplock.batches b
     SET state = CASE WHEN b.pending > 0 THEN 'active' WHEN b.cancelled > 0 THEN 'cancelled'
                      WHEN b.failed > 0 THEN 'failed' ELSE 'succeeded' END,
         sealed_at = now(),
         finished_at = CASE WHEN b.pending > 0 THEN NULL ELSE now() END
   WHERE b.id = seal_batch.batch_id AND b.state = 'open'
  RETURNING b.state INTO s;
  IF FOUND THEN
    IF s <> 'active' THEN
      PERFORM skiplock.batch_complete_v1(seal_batch.batch_id);
    END IF;
    RETURN s;
  END IF;
  SELECT b.state INTO s FROM skiplock.batches b WHERE b.id = seal_batch.batch_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no batch %', seal_batch.batch_id USING ERRCODE = 'no_data_found';
  END IF;
  RETURN s;
END
$$;

-- Cancel every queued and running job of a batch, as skiplock.cancel does one job (the
-- workers running them are told at once), and seal it if it was open: it ends `cancelled`
-- in this transaction unless other jobs still join or run. Returns how many were cancelled.
CREATE FUNCTION skiplock.cancel_batch(batch_id uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  held text[];
BEGIN
  PERFORM 1 FROM skiplock.batches b WHERE b.id = cancel_batch.batch_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no batch %', cancel_batch.batch_id USING ERRCODE = 'no_data_found';
  END IF;
  WITH doomed AS (
      SELECT j.id, j.state, j.attempt FROM skiplock.jobs j
       WHERE j.batch_id = cancel_batch.batch_id AND j.state NOT IN ('succeeded', 'failed', 'cancelled')
       ORDER BY j.id
         FOR UPDATE OF j
  ), done AS (
      UPDATE skiplock.jobs j
         SET state = 'cancelled', lease_expires_at = NULL, finished_at = now()
        FROM doomed d
       WHERE j.id = d.id
      RETURNING j.id, d.state AS was, d.attempt
  )
  SELECT count(*), array_agg(done.id::text || ':' || done.attempt) FILTER (WHERE done.was = 'running')
    INTO n, held FROM done;
  IF held IS NOT NULL THEN
    BEGIN
      PERFORM pg_notify('skiplock_cancel', h) FROM unnest(held) AS h;
    EXCEPTION WHEN OTHERS THEN
      NULL;  -- a failed NOTIFY never fails the cancel: the heartbeat delivers it
    END;
  END IF;
  PERFORM skiplock.seal_batch(cancel_batch.batch_id);
  RETURN n;
END
$$;

-- Put every failed job of a batch back in its queue (skiplock.retry, one job at a time); a
-- finished batch becomes active again and completes again, with a new completion job, when
-- they end. Returns how many were retried.
CREATE FUNCTION skiplock.retry_batch(batch_id uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
BEGIN
  PERFORM 1 FROM skiplock.batches b WHERE b.id = retry_batch.batch_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no batch %', retry_batch.batch_id USING ERRCODE = 'no_data_found';
  END IF;
  SELECT count(skiplock.retry(f.id)) INTO n
    FROM (SELECT j.id FROM skiplock.jobs j
           WHERE j.batch_id = retry_batch.batch_id AND j.state = 'failed'
           ORDER BY j.id
             FOR UPDATE OF j) f;
  RETURN n;
END
$$;

-- ---------------------------------------------------------------------------
-- Views for psql.

CREATE VIEW skiplock.queue_stats AS
SELECT q.queue,
       coalesce(p.paused, false) AS paused,
       count(*) FILTER (WHERE j.state = 'queued' AND j.run_at <= now()) AS ready,
       count(*) FILTER (WHERE j.state = 'queued' AND j.run_at > now())  AS scheduled,
       count(*) FILTER (WHERE j.state = 'waiting')   AS waiting,
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
-- the submission (waiting when it named dependencies) and the latest run from the job row,
-- everything else from job_history.
-- While a job is running or succeeded, every history row precedes its latest claim (any
-- other transition out of running writes that run to the history), so the order is
-- submission, history rows, latest claim, success.
CREATE VIEW skiplock.job_timeline AS
SELECT t.job_id, row_number() OVER (PARTITION BY t.job_id ORDER BY t.part, t.seq) AS step,
       t.state, t.at, t.attempt, t.worker_id, t.error, t.correlation_id
  FROM (SELECT j.id AS job_id, 0 AS part, 0::bigint AS seq,
               CASE WHEN j.depends_on IS NULL THEN 'queued' ELSE 'waiting' END::skiplock.job_state AS state,
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

-- Batches with their progress: `pending` split into waiting (on dependencies), queued, running
-- and parked (for review) by counting its running and waiting jobs (jobs_batch_pending_idx),
-- percent is the share of jobs finished (succeeded, failed or cancelled), and the completion
-- job's state once it exists.
CREATE VIEW skiplock.batch_progress AS
SELECT b.id, b.state, b.total, r.waiting, b.pending - r.running - r.waiting - r.parked AS queued, r.running,
       r.parked, b.succeeded, b.failed, b.cancelled,
       CASE WHEN b.total = 0 THEN CASE WHEN b.finished_at IS NOT NULL THEN 100 ELSE 0 END
            ELSE floor(1000.0 * (b.succeeded + b.failed + b.cancelled) / b.total) / 10
       END::double precision AS percent,
       b.on_complete->>'task' AS on_complete_task, b.completion_job_id, c.state AS completion_job_state,
       b.created_at, b.sealed_at, b.started_at, b.finished_at
  FROM skiplock.batches b
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.state = 'running')::integer AS running,
               count(*) FILTER (WHERE j.state = 'waiting' AND j.parked IS NULL)::integer AS waiting,
               count(*) FILTER (WHERE j.state = 'waiting' AND j.parked IS NOT NULL)::integer AS parked
          FROM skiplock.jobs j
         WHERE j.batch_id = b.id AND j.state IN ('running', 'waiting') AND b.pending > 0) r
  LEFT JOIN skiplock.jobs c ON c.id = b.completion_job_id;

-- ---------------------------------------------------------------------------
-- Parked jobs. A handler parks its job for a person (ctx.park(reason, data), or raise Park):
-- the worker's park_many_if_held sets it `waiting` with `parked` filled in and its attempt
-- given back, so it leaves the claim path without failing or using up attempts. An operator
-- resumes it (skiplock.resume, optionally with data for the next attempt), fails it
-- (skiplock.fail) or cancels it (skiplock.cancel). Only parked rows run jobs_unpark_v1.
CREATE INDEX jobs_parked_idx ON skiplock.jobs (id) WHERE parked IS NOT NULL;

-- A parked job that leaves `waiting` (resumed, failed, cancelled, by any path) is parked no more.
CREATE FUNCTION skiplock.jobs_unpark_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.parked := NULL;
  RETURN NEW;
END
$$;

CREATE TRIGGER jobs_unpark BEFORE UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (OLD.parked IS NOT NULL AND NEW.state <> 'waiting')
    EXECUTE FUNCTION skiplock.jobs_unpark_v1();

-- An operator resumes a parked job: back in its queue, due now; `data` (any JSON, or NULL) is
-- what its next attempt receives as ctx.review.
CREATE FUNCTION skiplock.resume(job_id uuid, data jsonb DEFAULT NULL) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE skiplock.jobs j SET state = 'queued', review = data, run_at = now()
   WHERE j.id = job_id AND j.state = 'waiting' AND j.parked IS NOT NULL;
  IF NOT FOUND THEN
    PERFORM 1 FROM skiplock.jobs j WHERE j.id = job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    RAISE EXCEPTION 'skiplock: job % is not parked; only a parked job can be resumed', job_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  RETURN 'queued';
END
$$;

-- An operator fails a parked job for good (it joins the dead-letter set; retry revives it).
CREATE FUNCTION skiplock.fail(job_id uuid, reason text DEFAULT NULL) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE skiplock.jobs j
     SET state = 'failed', finished_at = now(),
         last_error = coalesce(reason, 'failed by an operator after review: ' || (j.parked->>'reason'))
   WHERE j.id = job_id AND j.state = 'waiting' AND j.parked IS NOT NULL;
  IF NOT FOUND THEN
    PERFORM 1 FROM skiplock.jobs j WHERE j.id = job_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    RAISE EXCEPTION 'skiplock: job % is not parked; only a parked job can be failed by hand', job_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  RETURN 'failed';
END
$$;

-- The jobs waiting for a person, oldest first.
CREATE VIEW skiplock.parked_jobs AS
SELECT j.id, j.task, j.queue, j.batch_id, j.parked->>'reason' AS reason, j.parked->'data' AS data,
       (j.parked->>'at')::timestamptz AS parked_at, (j.parked->>'attempt')::integer AS parked_attempt,
       j.parked->>'worker_id' AS worker_id, j.args, j.correlation_id
  FROM skiplock.jobs j
 WHERE j.parked IS NOT NULL;
