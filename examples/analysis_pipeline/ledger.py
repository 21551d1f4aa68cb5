"""The example's own tables, beside Skiplock's: what the handlers write in the transaction that
marks their job succeeded (`ctx.transaction()`), so each row exists exactly once per job."""

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS analysis_pipeline;
-- One row per task that ended well, committed with its job's success (ctx.transaction()):
-- exactly once per job. No unique key on purpose: the example's tests count the rows.
CREATE TABLE IF NOT EXISTS analysis_pipeline.results (
    job_id     uuid        NOT NULL,
    task       text        NOT NULL,
    doc        integer     NOT NULL,
    attempt    integer     NOT NULL,
    score      real        NOT NULL,
    reviewed   boolean     NOT NULL,  -- approved by a person after a park
    review     jsonb,                 -- the data they resumed it with (ctx.review)
    written_at timestamptz NOT NULL DEFAULT now()
);
-- One row per report job that succeeded (the batch's completion job).
CREATE TABLE IF NOT EXISTS analysis_pipeline.reports (
    batch_id   uuid        NOT NULL,
    job_id     uuid        NOT NULL,
    report     jsonb       NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
"""
