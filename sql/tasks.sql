-- Queries on skiplock.tasks: the tasks workers serve, with their defaults.

-- name: record_tasks
-- Each worker records its tasks when it starts; the latest start wins, so a deploy that
-- changes a task's defaults updates them.
INSERT INTO skiplock.tasks AS t (name, queue, priority, max_attempts, timeout, args_schema, worker_id, updated_at)
SELECT r.name, r.queue, r.priority, r.max_attempts, r.timeout, r.args_schema, %(worker_id)s, now()
  FROM unnest(%(names)s::text[], %(queues)s::text[], %(priorities)s::smallint[], %(max_attempts)s::integer[],
              %(timeouts)s::double precision[], %(schemas)s::jsonb[])
       AS r(name, queue, priority, max_attempts, timeout, args_schema)
ON CONFLICT (name) DO UPDATE
   SET queue = EXCLUDED.queue, priority = EXCLUDED.priority, max_attempts = EXCLUDED.max_attempts,
       timeout = EXCLUDED.timeout, args_schema = EXCLUDED.args_schema, worker_id = EXCLUDED.worker_id,
       updated_at = EXCLUDED.updated_at;

-- name: recorded_task
-- One task as its workers recorded it, for a submitter that does not import its code.
SELECT name, queue, priority, max_attempts, timeout, args_schema FROM skiplock.tasks WHERE name = %(name)s;
