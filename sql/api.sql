-- Queries behind the HTTP API that the engine itself does not need.

-- name: set_queue_limits
-- Set the limits named in %(fields)s (the others keep their value; a new queue gets NULL for
-- them: no limit). rate_period comes in seconds and goes out in seconds.
INSERT INTO skiplock.queues AS q (name, max_waiting, max_running, key_arg, max_running_per_key, rate_limit,
                                  rate_period)
VALUES (%(name)s, %(max_waiting)s, %(max_running)s, %(key_arg)s, %(max_running_per_key)s, %(rate_limit)s,
        make_interval(secs => %(rate_period)s))
ON CONFLICT (name) DO UPDATE SET
    max_waiting = CASE WHEN 'max_waiting' = ANY (%(fields)s::text[]) THEN excluded.max_waiting ELSE q.max_waiting END,
    max_running = CASE WHEN 'max_running' = ANY (%(fields)s::text[]) THEN excluded.max_running ELSE q.max_running END,
    key_arg = CASE WHEN 'per_key' = ANY (%(fields)s::text[]) THEN excluded.key_arg ELSE q.key_arg END,
    max_running_per_key = CASE WHEN 'per_key' = ANY (%(fields)s::text[])
                               THEN excluded.max_running_per_key ELSE q.max_running_per_key END,
    rate_limit = CASE WHEN 'rate' = ANY (%(fields)s::text[]) THEN excluded.rate_limit ELSE q.rate_limit END,
    rate_period = CASE WHEN 'rate' = ANY (%(fields)s::text[]) THEN excluded.rate_period ELSE q.rate_period END,
    updated_at = now()
RETURNING q.name, q.paused, q.max_waiting, q.max_running, q.key_arg, q.max_running_per_key, q.rate_limit,
          extract(epoch FROM q.rate_period)::float8 AS rate_period;

-- name: schema_revision
SELECT version_num FROM public.alembic_version;
