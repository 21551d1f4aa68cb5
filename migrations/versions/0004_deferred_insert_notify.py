"""Submitters may wake the workers themselves after their commit (jobs_after_insert_v2).

The insert trigger sent its NOTIFY inside the submitting transaction. PostgreSQL holds a
database-wide lock from a notifying transaction's pre-commit until its commit record is
flushed, so concurrent submitters committed one at a time (32 clients of single-row
INSERTs: ~4x slower with a NOTIFY in each). v2 skips the NOTIFY when the statement set
`skiplock.notify = 'deferred'`; the HTTP API does, and sends one NOTIFY per burst after
the commits (skiplock/wakeup.py). Every other submitter (SQL, psql, the Python API) is
unchanged. Measured with `make bench` (README, Performance).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = """
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

DROP TRIGGER jobs_after_insert ON skiplock.jobs;
CREATE TRIGGER jobs_after_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_insert_v2();
DROP FUNCTION skiplock.jobs_after_insert_v1();
"""

DOWNGRADE = """
CREATE FUNCTION skiplock.jobs_after_insert_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  q text;
BEGIN
  INSERT INTO skiplock.job_history (job_id, state, attempt, correlation_id)
  SELECT n.id, n.state, n.attempt, nullif(current_setting('skiplock.correlation_id', true), '')
    FROM new_jobs n;
  -- Wake sleeping workers: one NOTIFY per queue per statement (Postgres folds identical
  -- notifications within a transaction). A failed NOTIFY must never fail the insert.
  FOR q IN SELECT DISTINCT n.queue FROM new_jobs n WHERE n.state = 'queued' AND n.run_at <= now() LOOP
    BEGIN
      PERFORM pg_notify('skiplock_jobs', q);
    EXCEPTION WHEN OTHERS THEN
      NULL;
    END;
  END LOOP;
  RETURN NULL;
END
$$;

DROP TRIGGER jobs_after_insert ON skiplock.jobs;
CREATE TRIGGER jobs_after_insert AFTER INSERT ON skiplock.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.jobs_after_insert_v1();
DROP FUNCTION skiplock.jobs_after_insert_v2();
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
