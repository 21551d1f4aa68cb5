"""Flow control: global concurrency (max_running, optionally per key of the arguments) and rate
limits per queue, enforced by the claim.

skiplock.queues gains the settings and the rate window (the start times of the queue's claims
within its rate period); skiplock.claim_room_v1 locks the limited queues a claim takes from and
says how many more jobs each may start (sql/jobs.sql: claim_batch calls it).

Revision ID: 0097
Revises: 0096
Create Date: 2026-12-01
"""

from alembic import op

revision = "0097"
down_revision = "0096"
branch_labels = None
depends_on = None

# Frozen SQL: never read sql/ from a migration.
UPGRADE = r"""
ALTER TABLE skiplock.queues
    ADD COLUMN max_running integer,
    ADD COLUMN key_arg text,
    ADD COLUMN max_running_per_key integer,
    ADD COLUMN rate_limit integer,
    ADD COLUMN rate_period interval,
    ADD COLUMN rate_starts timestamptz[] NOT NULL DEFAULT '{}',
    ADD COLUMN rate_counts integer[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT queues_max_running_positive CHECK (max_running IS NULL OR max_running > 0),
    ADD CONSTRAINT queues_per_key_limit CHECK (
        (key_arg IS NULL) = (max_running_per_key IS NULL)
        AND (max_running_per_key IS NULL OR max_running_per_key > 0)
        AND (key_arg IS NULL OR length(key_arg) BETWEEN 1 AND 255)),
    ADD CONSTRAINT queues_rate_limit CHECK (
        (rate_limit IS NULL) = (rate_period IS NULL)
        AND (rate_limit IS NULL OR rate_limit > 0)
        AND (rate_period IS NULL OR (rate_period > interval '0' AND rate_period <= interval '1 day')));

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
"""

DOWNGRADE = r"""
DROP FUNCTION skiplock.claim_room_v1(text[], timestamptz);
ALTER TABLE skiplock.queues
    DROP CONSTRAINT queues_rate_limit,
    DROP CONSTRAINT queues_per_key_limit,
    DROP CONSTRAINT queues_max_running_positive,
    DROP COLUMN rate_counts,
    DROP COLUMN rate_starts,
    DROP COLUMN rate_period,
    DROP COLUMN rate_limit,
    DROP COLUMN max_running_per_key,
    DROP COLUMN key_arg,
    DROP COLUMN max_running;
"""


def upgrade() -> None:
    op.get_bind().connection.driver_connection.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)
