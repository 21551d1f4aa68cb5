"""Tasks known to the database, their defaults in skiplock.enqueue, and rows that cannot be.

- skiplock.tasks: every worker records the tasks it serves (name, queue, priority, max
  attempts, timeout, argument JSON schema) when it starts, so a submitter that does not
  import a task's code (SQL, another language, an API process with other task modules)
  still gets the task's own defaults.
- skiplock.enqueue: options left out (NULL) come from skiplock.tasks, then the built-in
  defaults. Dropped and created again: PostgreSQL cannot change a parameter's default to
  NULL in place.
- A job is inserted `queued` only, and a running job cannot be deleted (cancel it first).
  Row triggers with a WHEN clause: the check runs in the executor for each row, and the
  function is called only for a row that breaks the rule.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
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
"""

DOWNGRADE = r"""
DROP FUNCTION skiplock.enqueue(text, jsonb, text, text, timestamptz, integer, double precision, text, uuid);

CREATE FUNCTION skiplock.enqueue(
    task text,
    args jsonb DEFAULT '{}'::jsonb,
    queue text DEFAULT 'default',
    priority text DEFAULT 'normal',
    run_at timestamptz DEFAULT NULL,
    max_attempts integer DEFAULT 3,
    timeout double precision DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    batch_id uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  new_id uuid;
BEGIN
  IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
    PERFORM skiplock.raise_invalid('args', args::text, 'must be a JSON object');
  END IF;
  INSERT INTO skiplock.jobs AS j (task, args, queue, priority, run_at, max_attempts, timeout,
                                  idempotency_key, batch_id)
  VALUES (enqueue.task, enqueue.args, enqueue.queue, skiplock.priority_value(enqueue.priority),
          coalesce(enqueue.run_at, now()), enqueue.max_attempts, enqueue.timeout,
          enqueue.idempotency_key, enqueue.batch_id)
  ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING j.id INTO new_id;
  IF new_id IS NULL THEN
    SELECT j.id INTO new_id FROM skiplock.jobs j
     WHERE j.queue = enqueue.queue AND j.idempotency_key = enqueue.idempotency_key;
  END IF;
  RETURN new_id;
END
$$;

DROP TRIGGER jobs_delete_running ON skiplock.jobs;
DROP TRIGGER jobs_insert_queued ON skiplock.jobs;
DROP FUNCTION skiplock.refuse_impossible_row_v1();
DROP TABLE skiplock.tasks;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
