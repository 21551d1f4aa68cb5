-- Queries on skiplock.workers.

-- name: register_worker
INSERT INTO skiplock.workers (id, hostname, pid, queues, concurrency)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: touch_worker
-- The heartbeat. A worker whose row is gone (removed by the fast rescue while only its
-- connection was broken, or by the stale-worker sweep while it was stopped) registers again.
INSERT INTO skiplock.workers AS w (id, hostname, pid, queues, concurrency, heartbeat_at)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, coalesce(%(now)s, now()))
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;

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

-- name: take_worker_lock
-- The worker's liveness lock: a session-level advisory lock on hashtextextended(id, 0), taken
-- by its listener's long-lived connection; the server releases it the moment that session
-- ends (the process died, or the connection broke). `taken` false: another session holds the
-- key (a rescuer checking it this instant, or another worker's id hashing to the same key);
-- the listener tries again. When taken, lock_taken_at records it (rescue_jobs_of_dead_workers),
-- on the worker's row registered again if the fast rescue removed it while only this
-- connection was broken.
WITH l AS MATERIALIZED (
    SELECT pg_try_advisory_lock(hashtextextended(%(id)s::text, 0)) AS taken
), noted AS (
    INSERT INTO skiplock.workers AS w (id, hostname, pid, queues, concurrency, lock_taken_at)
    SELECT %(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, now() FROM l WHERE l.taken
    ON CONFLICT (id) DO UPDATE SET lock_taken_at = excluded.lock_taken_at
    RETURNING w.id
)
SELECT taken, EXISTS (SELECT 1 FROM noted) AS noted FROM l;

-- name: forget_worker_lock
-- A worker leaving on purpose (graceful stop): its lock is no longer a sign of life, so its
-- session's end is not taken for its death; what it still holds is covered by its leases.
UPDATE skiplock.workers SET lock_taken_at = NULL WHERE id = %(id)s;

-- name: rescue_jobs_of_dead_workers
-- Fast rescue. A worker whose liveness lock is free although it took it since the server
-- started has lost its session: its process died (or its connection broke, which fencing
-- makes harmless: the live worker's late answers change nothing, and it takes its lock
-- again). Its running jobs go back to queued (failed on their last attempt) as rescue_expired
-- does, without waiting for their lease. A session of a server before its last start is no
-- sign: after a restart every lock is free until its worker reconnects, so those workers are
-- left to their leases. `dead` keeps each key locked by this transaction
-- (pg_try_advisory_xact_lock) until it commits, so the worker cannot take it back halfway and
-- two rescuers never take the same worker; its row is removed, so it is rescued once and no
-- longer listed as live (a worker that only lost its connection registers again as it takes
-- its lock back: touch_worker, take_worker_lock).
-- Workers whose key is held (alive, or colliding with another worker's key) are left to their
-- leases. With no dead worker, the jobs are not read at all (one-time filter).
WITH dead AS MATERIALIZED (
    SELECT w.id FROM skiplock.workers w
     WHERE CASE WHEN w.lock_taken_at > pg_postmaster_start_time()
                THEN pg_try_advisory_xact_lock(hashtextextended(w.id, 0)) ELSE false END
), forgotten AS (
    DELETE FROM skiplock.workers w USING dead WHERE w.id = dead.id
), held AS (
    SELECT j.id FROM skiplock.jobs j
     WHERE EXISTS (SELECT 1 FROM dead)
       AND j.state = 'running' AND j.worker_id = ANY (ARRAY(SELECT id FROM dead))
       FOR UPDATE OF j SKIP LOCKED
)
UPDATE skiplock.jobs j
   SET state = CASE WHEN j.attempt >= j.max_attempts + j.attempt_base THEN 'failed' ELSE 'queued' END::skiplock.job_state,
       last_error = format('lease ended: worker %%s stopped: its database session closed during attempt %%s',
                           j.worker_id, j.attempt),
       lease_expires_at = NULL,
       run_at = coalesce(%(now)s, now()),
       finished_at = CASE WHEN j.attempt >= j.max_attempts + j.attempt_base THEN coalesce(%(now)s, now()) END
  FROM held
 WHERE j.id = held.id
RETURNING j.id, j.state, j.attempt;
