-- Queries on skiplock.schedules: the scheduler's round (skiplock/runtime/scheduler.py) and the
-- operations (list, pause, resume).

-- name: upsert_code_schedules
-- The schedules defined in a worker's code, one array per column. A row changes only where
-- the code says something else; a new cron or time zone restarts the schedule from `now`
-- (no catch-up for ticks before the change). Paused stays as operators left it.
INSERT INTO skiplock.schedules AS s (name, task, cron, timezone, args, queue, priority, defined_in, since, created_at)
SELECT d.name, d.task, d.cron, d.timezone, d.args, d.queue, d.priority, 'code',
       coalesce(%(now)s, now()), coalesce(%(now)s, now())
  FROM unnest(%(names)s::text[], %(tasks)s::text[], %(crons)s::text[], %(timezones)s::text[],
              %(args)s::jsonb[], %(queues)s::text[], %(priorities)s::text[])
       AS d(name, task, cron, timezone, args, queue, priority)
ON CONFLICT (name) DO UPDATE
   SET task = excluded.task, cron = excluded.cron, timezone = excluded.timezone, args = excluded.args,
       queue = excluded.queue, priority = excluded.priority, defined_in = 'code',
       since = CASE WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
                    THEN excluded.since ELSE s.since END
 WHERE (s.task, s.cron, s.timezone, s.args, s.queue, s.priority, s.defined_in)
       IS DISTINCT FROM (excluded.task, excluded.cron, excluded.timezone, excluded.args, excluded.queue,
                         excluded.priority, 'code');

-- name: lock_due_schedules
-- The schedules a scheduler should look at now: active, and due or never computed. Locked
-- for the round's transaction; a schedule another scheduler holds is skipped (that one is
-- enqueueing its tick). `now` is the database's clock unless a test steps its own.
SELECT s.name, s.cron, s.timezone, s.since, s.next_run_at, s.last_tick_at,
       coalesce(%(now)s, now()) AS now
  FROM skiplock.schedules s
 WHERE NOT s.paused AND s.error IS NULL
   AND (s.next_run_at IS NULL OR s.next_run_at <= coalesce(%(now)s, now()))
 ORDER BY s.next_run_at NULLS FIRST, s.name
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: enqueue_tick
-- Enqueue the job of one tick and move the schedule past it, in one statement. The guard on
-- last_tick_at is a compare-and-set (the tick is enqueued only from the state it was computed
-- from); the idempotency key, unique per queue, lets one job exist per tick whatever happens.
-- skiplock.enqueue() takes the task's defaults (skiplock.tasks) for a NULL queue or priority,
-- and returns the existing job's id when the key is already used.
UPDATE skiplock.schedules s
   SET last_tick_at = %(tick)s, next_run_at = %(next_run_at)s,
       last_job_id = skiplock.enqueue(s.task, s.args, queue => s.queue, priority => s.priority,
                                      run_at => %(tick)s, idempotency_key => %(idempotency_key)s)
 WHERE s.name = %(name)s AND NOT s.paused AND s.last_tick_at IS NOT DISTINCT FROM %(last_tick_at)s
RETURNING s.name, s.last_job_id;

-- name: set_next_run_at
UPDATE skiplock.schedules SET next_run_at = %(next_run_at)s
 WHERE name = %(name)s AND NOT paused AND last_tick_at IS NOT DISTINCT FROM %(last_tick_at)s;

-- name: mark_schedule_broken
-- No scheduler can run it (bad cron or time zone, or its job was refused): it stays out of
-- the rounds until its definition is edited (the restart trigger clears the error).
UPDATE skiplock.schedules SET error = %(error)s, next_run_at = NULL WHERE name = %(name)s;

-- name: next_schedule_due
-- When the scheduler should look again: the earliest next run of an active schedule.
SELECT coalesce(%(now)s, now()) AS now, min(next_run_at) AS next_run_at,
       bool_or(next_run_at IS NULL) AS uncomputed
  FROM skiplock.schedules
 WHERE NOT paused AND error IS NULL;

-- name: list_schedules
SELECT * FROM skiplock.schedules ORDER BY name;

-- name: get_schedule
SELECT * FROM skiplock.schedules WHERE name = %(name)s;

-- name: pause_schedule
-- The restart trigger clears next_run_at: a paused schedule has no next run.
UPDATE skiplock.schedules SET paused = true WHERE name = %(name)s RETURNING *;

-- name: resume_schedule
-- Ticks count again from `now`: the ticks missed while paused get no catch-up job.
UPDATE skiplock.schedules
   SET paused = false, since = CASE WHEN paused THEN coalesce(%(now)s, now()) ELSE since END
 WHERE name = %(name)s
RETURNING *;
