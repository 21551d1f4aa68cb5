"""Queues do not slow each other: a claim index per queue.

jobs_queue_claim_idx orders the waiting jobs of each queue (queue, priority, run_at, id), so a
worker of some queues, or of every queue while some queue is paused, reads only the queues it
takes from (sql/jobs.sql: claim_batch), whatever waits in the others. jobs_claim_idx, every
queue's rows in claim order, is kept for a worker of every queue while none is paused; its
predicate now also says `id IS NOT NULL` (always true), so that only that claim, which says
so, can use it: a claim from one queue can no longer pick it and filter the others out.

Revision ID: 0093
Revises: 0092
Create Date: 2026-12-03
"""

from alembic import op

revision = "0093"
down_revision = "0092"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = """
CREATE INDEX jobs_queue_claim_idx ON skiplock.jobs (queue, priority, run_at, id) WHERE state = 'queued';
DROP INDEX skiplock.jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON skiplock.jobs (priority, run_at, id) WHERE state = 'queued' AND id IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX skiplock.jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON skiplock.jobs (priority, run_at, id) WHERE state = 'queued';
DROP INDEX skiplock.jobs_queue_claim_idx;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
