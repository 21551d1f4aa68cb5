"""`make bench`: Skiplock's throughput and latency beside the raw-SQL floor (and, with
`--peers`, beside PgQueuer and Procrastinate), measured on a private PostgreSQL server the
bench starts itself. Not part of the test suite."""
