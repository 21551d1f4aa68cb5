"""Flow control on every path: queue size limits in the database, prompt cancellation, and a
liveness lock per worker for fast rescue.

- skiplock.reserve_room_v1(queues, wanted): the one implementation of max_waiting. It locks
  the row of each limited queue named (in name order), counts its waiting jobs after the lock
  is granted, and raises queue_full (constraint queues_max_waiting, the numbers as JSON in
  DETAIL). A queue without a limit costs a primary-key probe and no lock.
- skiplock.enqueue calls it (a repeat of a stored idempotency key returns that job first: it
  needs no room); the Python engine calls it before inserting into a limited queue.
- skiplock.cancel sends NOTIFY skiplock_cancel 'id:attempt' for a running job, so its worker
  stops the handler at once instead of at its next heartbeat.
- skiplock.workers.lock_taken_at: when the worker last took its session-level advisory lock
  (the rescuer treats a free lock as the worker's death).

Revision ID: 0091
Revises: 0090
Create Date: 2026-12-03
"""

from alembic import op

revision = "0091"
down_revision = "0090"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
ALTER TABLE skiplock.workers ADD COLUMN lock_taken_at timestamptz;

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

CREATE OR REPLACE FUNCTION skiplock.enqueue(
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
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION skiplock.cancel(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
BEGIN
  SELECT j.state INTO s FROM skiplock.jobs j WHERE j.id = job_id FOR UPDATE;
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
  RETURN 'cancelled';
END
$$;

CREATE OR REPLACE FUNCTION skiplock.enqueue(
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

DROP FUNCTION skiplock.reserve_room_v1(text[], integer[]);

ALTER TABLE skiplock.workers DROP COLUMN lock_taken_at;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
