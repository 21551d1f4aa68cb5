"""Job dependencies: a job may name the jobs it waits for (depends_on) and stays `waiting`, not
claimable, until the last of them succeeds; it is cancelled, with its own dependents, when one
of them fails for good or is cancelled.

A new state `waiting` (first in the enum), two columns on jobs (depends_on, has_dependents), the
table job_dependencies, three trigger functions that run only for jobs that have dependencies
or dependents, and the functions and views that know the new state (transition_allowed,
enqueue(depends_on =>), retry, cancel, queue_stats.waiting, job_timeline).

The enum value is added in a transaction of its own: PostgreSQL refuses to use a new enum value
in the transaction that added it. PostgreSQL cannot drop an enum value, so the downgrade deletes
its pg_enum row once nothing uses it, which needs a superuser; waiting jobs are cancelled then.

Revision ID: 0096
Revises: 0095
Create Date: 2026-12-01
"""

from alembic import op

revision = "0096"
down_revision = "0095"
branch_labels = None
depends_on = None

ADD_STATE = "ALTER TYPE skiplock.job_state ADD VALUE IF NOT EXISTS 'waiting' BEFORE 'queued'"

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
CREATE OR REPLACE FUNCTION skiplock.transition_allowed(old_state skiplock.job_state, new_state skiplock.job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_state
    WHEN 'waiting'   THEN new_state IN ('waiting', 'queued', 'cancelled')
    WHEN 'queued'    THEN new_state IN ('queued', 'running', 'cancelled')
    WHEN 'running'   THEN new_state IN ('running', 'queued', 'succeeded', 'failed', 'cancelled')
    WHEN 'failed'    THEN new_state IN ('failed', 'queued', 'waiting')
    WHEN 'cancelled' THEN new_state IN ('cancelled', 'queued', 'waiting')
    ELSE false  -- succeeded is final
  END
$$;

ALTER TABLE skiplock.jobs
    ADD COLUMN depends_on uuid[],
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT jobs_waiting_has_dependencies CHECK (state <> 'waiting' OR depends_on IS NOT NULL),
    ADD CONSTRAINT jobs_depends_on_size CHECK (cardinality(depends_on) BETWEEN 1 AND 1000);

DROP TRIGGER jobs_insert_queued ON skiplock.jobs;
CREATE TRIGGER jobs_insert_queued BEFORE INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.state <> 'queued' AND NOT (NEW.state = 'waiting' AND NEW.depends_on IS NOT NULL))
    EXECUTE FUNCTION skiplock.refuse_impossible_row_v1();

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
    FOR EACH ROW WHEN (OLD.state <> 'waiting' AND NEW.state = 'waiting')
    EXECUTE FUNCTION skiplock.jobs_link_dependencies_v1();

CREATE TRIGGER jobs_release_dependents AFTER UPDATE ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.has_dependents AND OLD.state <> NEW.state
                       AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION skiplock.jobs_release_dependents_v1();

DROP FUNCTION skiplock.enqueue(text, jsonb, text, text, timestamptz, integer, double precision, text, uuid);
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

CREATE OR REPLACE FUNCTION skiplock.retry(job_id uuid) RETURNS skiplock.job_state
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

CREATE OR REPLACE FUNCTION skiplock.cancel(job_id uuid) RETURNS skiplock.job_state
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

DROP VIEW skiplock.queue_stats;
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

CREATE OR REPLACE VIEW skiplock.job_timeline AS
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
"""

DOWNGRADE = r"""
-- PostgreSQL cannot drop a value of an enum: every use of 'waiting' goes first, then its
-- row in pg_enum (this needs a superuser). A waiting job is cancelled (its dependencies are
-- forgotten: retry it to run it); a history row of a retry that made a job wait says queued.
DROP TRIGGER jobs_insert_waiting ON skiplock.jobs;
DROP TRIGGER jobs_link_dependencies ON skiplock.jobs;
DROP TRIGGER jobs_relink_dependencies ON skiplock.jobs;
DROP TRIGGER jobs_release_dependents ON skiplock.jobs;
UPDATE skiplock.jobs
   SET state = 'cancelled', finished_at = now(),
       last_error = 'skiplock: cancelled by a schema downgrade that removed dependencies; retry it to run it'
 WHERE state = 'waiting';
UPDATE skiplock.job_history SET state = 'queued' WHERE state = 'waiting';
DROP FUNCTION skiplock.jobs_submit_waiting_v1();
DROP FUNCTION skiplock.jobs_link_dependencies_v1();
DROP FUNCTION skiplock.jobs_release_dependents_v1();
DROP TABLE skiplock.job_dependencies;

DROP TRIGGER jobs_insert_queued ON skiplock.jobs;
CREATE TRIGGER jobs_insert_queued BEFORE INSERT ON skiplock.jobs
    FOR EACH ROW WHEN (NEW.state <> 'queued') EXECUTE FUNCTION skiplock.refuse_impossible_row_v1();

DROP FUNCTION skiplock.enqueue(text, jsonb, text, text, timestamptz, integer, double precision, text, uuid, uuid[]);
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

CREATE OR REPLACE FUNCTION skiplock.retry(job_id uuid) RETURNS skiplock.job_state
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

CREATE OR REPLACE FUNCTION skiplock.cancel(job_id uuid) RETURNS skiplock.job_state
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

DROP VIEW skiplock.queue_stats;
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

CREATE OR REPLACE VIEW skiplock.job_timeline AS
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

CREATE OR REPLACE FUNCTION skiplock.transition_allowed(old_state skiplock.job_state, new_state skiplock.job_state)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE old_state
    WHEN 'queued'    THEN new_state IN ('queued', 'running', 'cancelled')
    WHEN 'running'   THEN new_state IN ('running', 'queued', 'succeeded', 'failed', 'cancelled')
    WHEN 'failed'    THEN new_state IN ('failed', 'queued')
    WHEN 'cancelled' THEN new_state IN ('cancelled', 'queued')
    ELSE false  -- succeeded is final
  END
$$;

ALTER TABLE skiplock.jobs
    DROP CONSTRAINT jobs_waiting_has_dependencies,
    DROP CONSTRAINT jobs_depends_on_size,
    DROP COLUMN depends_on,
    DROP COLUMN has_dependents;
DELETE FROM pg_catalog.pg_enum WHERE enumtypid = 'skiplock.job_state'::regtype AND enumlabel = 'waiting';
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.get_bind().exec_driver_sql(ADD_STATE)
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
