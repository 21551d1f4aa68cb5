"""The audit at the end of every scenario: compare what was accepted with what the queue
finished and with what the handlers recorded in `chaos.ledger`.

- lost: an accepted job that is missing, not terminal, or succeeded without ever running;
- executed: handler starts recorded; reruns: jobs started more than once;
- duplicated: jobs whose handler ran to the end more than once (the side effect twice);
- unexplained: an execution that was repeated although its worker was neither killed,
  frozen nor stopped, and the attempt did not fail (at-least-once allows repeats only there);
- stale: a succeeded job whose stored result came from an older attempt than the last one
  that claimed it, i.e. a late acknowledgement overwrote a newer attempt (fencing failed);
- lost_claims: executions of a claim the database no longer has (more handler starts for a
  (job, attempt, worker) than `running` rows in the history). Claims commit durably, so
  this should stay 0; it is counted to prove it (a forgotten claim would reuse its fence).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.acceptance.chaos.dbq import rows


@dataclass
class Audit:
    submitted: int
    executed: int
    completed: int
    reruns: int
    duplicated: int
    lost: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    stray: int = 0  # jobs in the table we did not see accepted that are not terminal
    lost_claims: int = 0

    def assert_clean(self) -> None:
        assert self.lost == [], f"{len(self.lost)} accepted jobs lost: {self.lost[:5]}"
        assert self.stray == 0, f"{self.stray} jobs left non-terminal"
        shown = self.unexplained[:5] + self.unexplained[-3:]
        assert self.unexplained == [], "unexplained repeats:\n" + "\n".join(shown)
        assert self.stale == [], f"late acknowledgements overwrote newer attempts: {self.stale[:5]}"


def audit(url: str, accepted: Iterable[uuid.UUID], disrupted: Collection[str], *,
          terminal: Collection[str] = ("succeeded",), allow_failed_attempts: bool = False,
          allow_lost_claims: bool = False) -> Audit:
    """Check every accepted job against the queue and the ledger (see the module docstring).
    `disrupted`: ids of workers that were killed, frozen or stopped in the scenario.
    `allow_failed_attempts`: a repeat after the handler itself failed (e.g. its ledger write hit
    a database outage) is a retry, not a duplicate. `allow_lost_claims`: after a server crash,
    a repeat of an execution whose claim the crash forgot is expected (see lost_claims)."""
    ids = list(dict.fromkeys(accepted))
    jobs = {r[0]: r for r in rows(url, "SELECT id, state::text, attempt, result FROM skiplock.jobs"
                                       " WHERE id = ANY(%s)", (ids,))}
    starts: dict[uuid.UUID, list[tuple[int, str]]] = defaultdict(list)
    ends: dict[uuid.UUID, list[tuple[int, str]]] = defaultdict(list)
    for job_id, attempt, worker, phase in rows(url, "SELECT job_id, attempt, worker_id, phase FROM chaos.ledger"
                                                    " ORDER BY id"):
        (starts if phase == "start" else ends)[job_id].append((attempt, worker))
    last_claim = {r[0]: (r[1], r[2]) for r in rows(
        url, "SELECT DISTINCT ON (job_id) job_id, attempt, worker_id FROM skiplock.job_timeline"
             " WHERE state = 'running' ORDER BY job_id, step DESC")}
    failed_attempts = {(r[0], r[1], r[2]) for r in rows(
        url, "SELECT job_id, attempt, worker_id FROM skiplock.job_timeline WHERE state IN ('queued', 'failed')"
             " AND error IS NOT NULL AND error NOT LIKE 'lease %%'")}
    claims: Counter[tuple[uuid.UUID, int, str]] = Counter({(r[0], r[1], r[2]): r[3] for r in rows(
        url, "SELECT job_id, attempt, worker_id, count(*) FROM skiplock.job_timeline WHERE state = 'running'"
             " GROUP BY 1, 2, 3")})
    stray = rows(url, "SELECT count(*) FROM skiplock.jobs WHERE state IN ('queued', 'running')")[0][0]

    result = Audit(submitted=len(ids), executed=sum(map(len, starts.values())),
                   completed=sum(map(len, ends.values())),
                   reruns=sum(1 for i in ids if len(starts.get(i, ())) > 1),
                   duplicated=sum(1 for i in ids if len(ends.get(i, ())) > 1), stray=stray)
    unclaimed: set[tuple[uuid.UUID, int, str]] = set()
    for i in ids:
        ran = Counter((i, attempt, worker) for attempt, worker in starts.get(i, []))
        for triple, n in ran.items():
            if n > claims.get(triple, 0):
                result.lost_claims += n - claims.get(triple, 0)
                unclaimed.add(triple)
                if not allow_lost_claims:
                    result.unexplained.append(f"{i}: attempt {triple[1]} ran {n} times on {triple[2]} but was "
                                              f"claimed {claims.get(triple, 0)} times")
    for i in ids:
        job = jobs.get(i)
        state = job[1] if job else "missing"
        result.states[state] += 1
        if state not in terminal or (state == "succeeded" and not starts.get(i)):
            result.lost.append(f"{i} ({state}, {len(starts.get(i, ()))} starts)")
            continue
        for kind, seen in (("start", starts.get(i, [])), ("end", ends.get(i, []))):
            # every execution but the last attempt's was repeated; by attempt, not ledger order: a
            # frozen worker's start of attempt 1 may be written after the rescuing worker's attempt 2
            for attempt, worker in sorted(seen, key=lambda s: s[0])[:-1]:
                if worker in disrupted or (allow_failed_attempts and (i, attempt, worker) in failed_attempts) \
                        or (i, attempt, worker) in unclaimed:
                    continue
                result.unexplained.append(f"{i}: {kind} of attempt {attempt} by {worker} repeated")
        assert job is not None
        res: dict[str, Any] | None = job[3]
        if state == "succeeded" and isinstance(res, dict) and "attempt" in res:
            claim = last_claim.get(i)
            if claim is None or (res["attempt"], res["worker"]) != claim or res["attempt"] != job[2]:
                result.stale.append(f"{i}: result from attempt {res['attempt']} by {res['worker']}, "
                                    f"last claim {claim}, attempt column {job[2]}")
    for entry in result.unexplained[:3]:  # what a person would look at next
        job_id = uuid.UUID(entry.split(":")[0])
        history = rows(url, "SELECT state::text, attempt, worker_id, left(error, 60) FROM skiplock.job_timeline"
                            " WHERE job_id = %s ORDER BY step", (job_id,))
        ledger = rows(url, "SELECT phase, attempt, worker_id, at FROM chaos.ledger WHERE job_id = %s ORDER BY id",
                      (job_id,))
        result.unexplained.append(f"  {job_id} history {history} ledger {ledger}")
    return result


def not_done(url: str, ids: list[uuid.UUID], terminal: Collection[str] = ("succeeded",)) -> list[tuple[Any, ...]]:
    """The accepted jobs that are not (yet) terminal, with what a person would look at first."""
    return rows(url, """
        SELECT j.id, j.state::text, j.attempt, j.worker_id,
               round(extract(epoch FROM j.lease_expires_at - now())::numeric, 1) AS lease_left,
               round(extract(epoch FROM j.run_at - now())::numeric, 1) AS due_in,
               (SELECT array_agg(h.state::text || '/' || h.attempt || '/' || coalesce(h.worker_id, '-') ORDER BY h.step)
                  FROM skiplock.job_timeline h WHERE h.job_id = j.id) AS history
          FROM unnest(%s::uuid[]) AS a(id) LEFT JOIN skiplock.jobs j ON j.id = a.id
         WHERE j.id IS NULL OR NOT (j.state::text = ANY(%s))""", (ids, list(terminal)))


def wait_terminal(url: str, ids: list[uuid.UUID], timeout: float, terminal: Collection[str] = ("succeeded",)) -> None:
    """Wait until every job in `ids` is terminal; on timeout, fail naming the ones that are not."""
    deadline = time.monotonic() + timeout
    while True:
        left = not_done(url, ids, terminal)
        if not left:
            return
        if time.monotonic() > deadline:
            workers = rows(url, "SELECT id, pid, round(extract(epoch FROM now() - heartbeat_at)::numeric, 1)"
                                " FROM skiplock.workers")
            raise AssertionError(f"after {timeout}s, {len(left)} of {len(ids)} jobs are not {'/'.join(terminal)}:\n"
                                 + "\n".join(map(str, left[:10])) + f"\nworkers (id, pid, heartbeat age): {workers}")
        time.sleep(0.05)
