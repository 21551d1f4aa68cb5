-- Queries behind the HTTP API that the engine itself does not need.

-- name: set_max_waiting
INSERT INTO skiplock.queues (name, max_waiting) VALUES (%(name)s, %(max_waiting)s)
ON CONFLICT (name) DO UPDATE SET max_waiting = excluded.max_waiting, updated_at = now()
RETURNING name, paused, max_waiting;

-- name: schema_revision
SELECT version_num FROM public.alembic_version;
