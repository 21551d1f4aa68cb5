"""Retries no longer reset the attempt counter: it is the fencing token of every claim.

With `attempt = 0` on retry, a job retried while an old execution of it was still running
(cancelled, then retried before the worker noticed) could be claimed again under the same
(attempt, worker), and the old execution's answer would have been taken for the new one.
Now attempt only grows; the attempts used before a retry move into attempt_base and the job
fails once attempt - attempt_base reaches max_attempts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = """
ALTER TABLE skiplock.jobs ADD COLUMN attempt_base integer NOT NULL DEFAULT 0;
ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_attempt_base_range CHECK (attempt_base BETWEEN 0 AND attempt);

-- Put a failed or cancelled job back in the queue, to run now with a fresh set of attempts.
-- The attempt counter is not reset (it is the fencing token of every claim); the attempts
-- used so far move into attempt_base instead.
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

DOWNGRADE = """
-- Put a failed or cancelled job back in the queue, to run now with a fresh set of attempts.
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
     SET state = 'queued', attempt = 0, run_at = now(), finished_at = NULL, result = NULL
   WHERE j.id = job_id;
  RETURN 'queued';
END
$$;


ALTER TABLE skiplock.jobs DROP CONSTRAINT jobs_attempt_base_range;
ALTER TABLE skiplock.jobs DROP COLUMN attempt_base;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
