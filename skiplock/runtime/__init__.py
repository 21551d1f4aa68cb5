"""The worker and its background pieces: claim loop, executor, completer, heartbeat, watchdog,
listener and maintenance services."""
