"""Cron schedules: the skiplock.schedules table (one row per schedule, with its next run) and
the trigger that restarts a schedule whose cron or time zone changes or that is paused or
resumed.

Revision ID: 0090
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0090"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = """
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
"""

DOWNGRADE = """
DROP TABLE skiplock.schedules;
DROP FUNCTION skiplock.schedules_restart_v1();
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
