"""The one way to reach SQL: the named queries of `sql/*.sql`, loaded once, and a thin
wrapper module per file."""
