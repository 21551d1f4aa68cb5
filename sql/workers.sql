-- Queries on skiplock.workers.

-- name: register_worker
INSERT INTO skiplock.workers (id, hostname, pid, queues, concurrency)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: touch_worker
UPDATE skiplock.workers SET heartbeat_at = coalesce(%(now)s, now()) WHERE id = %(id)s;

-- name: unregister_worker
DELETE FROM skiplock.workers WHERE id = %(id)s;

-- name: delete_stale_workers
-- Workers that stopped heartbeating long ago (killed); their jobs are the rescuer's.
DELETE FROM skiplock.workers
 WHERE heartbeat_at < coalesce(%(now)s, now()) - make_interval(secs => %(older_than_seconds)s);

-- name: list_workers
-- Live workers, newest first, with the seconds since their last heartbeat.
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at,
       extract(epoch FROM coalesce(%(now)s, now()) - heartbeat_at)::double precision AS heartbeat_age_seconds
  FROM skiplock.workers
 WHERE %(hostname)s::text IS NULL OR hostname = %(hostname)s
 ORDER BY started_at DESC;
