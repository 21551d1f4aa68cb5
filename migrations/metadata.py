"""SQLAlchemy description of the skiplock schema, for Alembic only (the engine never imports
SQLAlchemy). The authoritative DDL is sql/schema.sql; the migrations reproduce it exactly."""

from __future__ import annotations

from sqlalchemy import (
                        ARRAY,
                        Boolean,
                        Column,
                        DateTime,
                        Double,
                        Enum,
                        Identity,
                        Integer,
                        MetaData,
                        SmallInteger,
                        Table,
                        Text,
)
from sqlalchemy.dialects.postgresql import INTERVAL, JSONB, UUID

metadata = MetaData(schema="skiplock")

job_state = Enum("queued", "running", "succeeded", "failed", "cancelled", name="job_state", schema="skiplock",
                 create_type=False)

jobs = Table(
    "jobs", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("task", Text, nullable=False),
    Column("args", JSONB, nullable=False),
    Column("queue", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("state", job_state, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("run_at", DateTime(timezone=True), nullable=False),
    Column("timeout", Double),
    Column("idempotency_key", Text),
    Column("batch_id", UUID(as_uuid=True)),
    Column("result", JSONB),
    Column("last_error", Text),
    Column("progress", JSONB),
    Column("checkpoint", JSONB),
    Column("worker_id", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("attempt_base", Integer, nullable=False),
    Column("correlation_id", Text),
)

job_history = Table(
    "job_history", metadata,
    Column("id", Integer, Identity(always=True), primary_key=True),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("state", job_state, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", Text),
    Column("error", Text),
    Column("correlation_id", Text),
)

queues = Table(
    "queues", metadata,
    Column("name", Text, primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("max_waiting", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("max_running", Integer),
    Column("key_arg", Text),
    Column("max_running_per_key", Integer),
    Column("rate_limit", Integer),
    Column("rate_period", INTERVAL),
    Column("rate_starts", ARRAY(DateTime(timezone=True)), nullable=False),
    Column("rate_counts", ARRAY(Integer), nullable=False),
)

workers = Table(
    "workers", metadata,
    Column("id", Text, primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", ARRAY(Text)),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("lock_taken_at", DateTime(timezone=True)),
)

tasks = Table(
    "tasks", metadata,
    Column("name", Text, primary_key=True),
    Column("queue", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout", Double),
    Column("args_schema", JSONB, nullable=False),
    Column("worker_id", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
