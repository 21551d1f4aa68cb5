-- Settings of the current session or transaction, and the liveness probe.

-- name: set_correlation_id
-- Tags the history rows the current transaction writes (the history trigger reads it);
-- transaction-local, so a pooled connection carries nothing over to its next user.
SELECT set_config('skiplock.correlation_id', %(correlation_id)s, true);

-- name: set_timeouts
-- Session-wide bounds for a connection of its own (the heartbeat's): a statement, or a wait
-- for a lock, longer than this fails instead of holding the caller up. '0ms': no bound.
SELECT set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('lock_timeout', %(lock_timeout)s, false);

-- name: ping
-- A round trip that proves an idle connection (the listener's) is still alive.
SELECT 1;
