"""A batch's jobs in review: skiplock.batch_progress splits `pending` four ways. Besides queued
and running it shows `waiting` (jobs waiting on dependencies) and `parked` (jobs parked for a
person), so a batch whose jobs await review no longer shows them as queued.

The running and waiting jobs of a batch are counted where they are: jobs_batch_running_idx
becomes jobs_batch_pending_idx on (batch_id, state) for running and waiting rows (a claim
writes the same one entry as before).

Revision ID: 0099
Revises: 0098
Create Date: 2026-12-01
"""

from alembic import op

revision = "0099"
down_revision = "0098"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
CREATE INDEX jobs_batch_pending_idx ON skiplock.jobs (batch_id, state)
 WHERE state IN ('running', 'waiting') AND batch_id IS NOT NULL;
DROP INDEX skiplock.jobs_batch_running_idx;

DROP VIEW skiplock.batch_progress;
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
"""

DOWNGRADE = r"""
DROP VIEW skiplock.batch_progress;
CREATE VIEW skiplock.batch_progress AS
SELECT b.id, b.state, b.total, b.pending - r.running AS queued, r.running, b.succeeded, b.failed, b.cancelled,
       CASE WHEN b.total = 0 THEN CASE WHEN b.finished_at IS NOT NULL THEN 100 ELSE 0 END
            ELSE floor(1000.0 * (b.succeeded + b.failed + b.cancelled) / b.total) / 10
       END::double precision AS percent,
       b.on_complete->>'task' AS on_complete_task, b.completion_job_id, c.state AS completion_job_state,
       b.created_at, b.sealed_at, b.started_at, b.finished_at
  FROM skiplock.batches b
 CROSS JOIN LATERAL (SELECT count(*)::integer AS running FROM skiplock.jobs j
                      WHERE j.batch_id = b.id AND j.state = 'running' AND b.pending > 0) r
  LEFT JOIN skiplock.jobs c ON c.id = b.completion_job_id;

CREATE INDEX jobs_batch_running_idx ON skiplock.jobs (batch_id) WHERE state = 'running' AND batch_id IS NOT NULL;
DROP INDEX skiplock.jobs_batch_pending_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
