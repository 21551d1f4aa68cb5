"""A retry trims the job's history, so operator actions cannot grow it without bound.

Every round of a job's transitions starts with its submission or an operator's retry, and a
round is bounded by the job's attempts. Retries are not: retry and cancel, one after the
other, add two history rows per pair with no worker involved. skiplock.retry() now keeps the
job's first history row (its submission, with the submitting request's correlation id) and
its 98 latest rows before adding its own, so after a retry a job holds at most 100 rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = """
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
"""

DOWNGRADE = """
CREATE OR REPLACE FUNCTION skiplock.retry(job_id uuid) RETURNS skiplock.job_state
LANGUAGE plpgsql AS $$
DECLARE
  s skiplock.job_state;
BEGIN
  SELECT j.state INTO s FROM skiplock.jobs j WHERE j.id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'skiplock: no job %', job_id USING ERRCODE = 'no_data_found';
  END IF;
  IF s NOT IN ('failed', 'cancelled') THEN
    RAISE EXCEPTION 'skiplock: job % is %; only failed or cancelled jobs can be retried', job_id, s
      USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_state_transition';
  END IF;
  UPDATE skiplock.jobs j
     SET state = 'queued', attempt_base = j.attempt, run_at = now(), finished_at = NULL, result = NULL
   WHERE j.id = job_id;
  RETURN 'queued';
END
$$;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
