-- The example application's own tables, in a schema of its own (Skiplock's are in `skiplock`).
-- Idempotent: the example's setup applies it every time it starts. A real application would
-- create these with its own migrations.
CREATE SCHEMA IF NOT EXISTS uploads_app;

CREATE TABLE IF NOT EXISTS uploads_app.uploads (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL,
    content        bytea       NOT NULL,
    -- received: stored, its job queued; analysed: its result row exists (written in the same
    -- transaction as this state, and as the job's success).
    state          text        NOT NULL DEFAULT 'received' CHECK (state IN ('received', 'analysed')),
    -- The Skiplock job that analyses it. No foreign key: Skiplock prunes finished jobs.
    job_id         uuid,
    -- The X-Request-ID of the request that uploaded it; the job and its every transition carry it too.
    correlation_id text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    analysed_at    timestamptz
);

CREATE TABLE IF NOT EXISTS uploads_app.results (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Deliberately not UNIQUE: one result per upload comes from the handler writing it in the
    -- transaction that acknowledges its job (ctx.transaction()), and the example's test checks
    -- exactly that under SIGKILL. A real application would add UNIQUE (upload_id) as well, as a
    -- second line of defence.
    upload_id  bigint      NOT NULL REFERENCES uploads_app.uploads (id),
    job_id     uuid        NOT NULL,
    attempt    integer     NOT NULL,  -- the job's attempt that wrote it (> 1 after a crash)
    bytes      integer     NOT NULL,
    lines      integer     NOT NULL,
    words      integer     NOT NULL,
    sha256     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS results_upload_id_idx ON uploads_app.results (upload_id);
