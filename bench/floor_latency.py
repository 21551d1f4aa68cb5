"""The physical floor of pickup latency: one durable commit (an INSERT and its NOTIFY in one
statement), one NOTIFY delivery to a process that LISTENs, and one claim (an UPDATE … FOR
UPDATE SKIP LOCKED … RETURNING, its own durable commit), in plain SQL on a bare table from the
same driver. `python -m bench.floor_latency listen URL FILE` is the listening process: for each
claimed row it writes the seconds from the `t0` the enqueuer stored to the claim's return."""

from __future__ import annotations

import sys
import time

import psycopg

TABLE = """
CREATE TABLE IF NOT EXISTS floor_pickup (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    t0    double precision NOT NULL,
    state text NOT NULL DEFAULT 'queued'
);
CREATE INDEX IF NOT EXISTS floor_pickup_queued ON floor_pickup (id) WHERE state = 'queued';
"""
ENQUEUE = ("WITH i AS (INSERT INTO floor_pickup (t0) VALUES (%s) RETURNING id) "
           "SELECT pg_notify('floor_pickup', '') FROM i")
CLAIM = """
UPDATE floor_pickup f SET state = 'running'
  FROM (SELECT id FROM floor_pickup WHERE state = 'queued' ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED) c
 WHERE f.id = c.id
RETURNING f.t0
"""


def listen(url: str, path: str) -> None:
    with psycopg.connect(url, autocommit=True) as listener, \
            psycopg.connect(url, autocommit=True, prepare_threshold=0) as c, open(path, "a", buffering=1) as out:
        listener.execute("LISTEN floor_pickup")
        c.execute(CLAIM).fetchall()  # warm: plan, connection
        out.write("ready\n")
        for _ in listener.notifies():
            for (t0,) in c.execute(CLAIM).fetchall():
                out.write(f"{time.time() - t0:.6f}\n")


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        listen(sys.argv[2], sys.argv[3])
