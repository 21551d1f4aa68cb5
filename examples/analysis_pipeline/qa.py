"""The pipeline's queues and its simulated quality check: pure functions, no Skiplock, so the
handlers, the runnable and the tests all read the same schedule.

Whether the quality check of (document, kind) passes depends only on a hash of the two and on
the attempt, so a run is reproducible: most pass at once, some on their second or third
attempt, a few never (they are parked for a person), and a few documents cannot be read at
all (they fail without retry)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ANALYSIS_KINDS = (
    "ocr", "language", "layout", "tables", "figures", "entities", "dates", "amounts", "signatures",
    "stamps", "handwriting", "barcodes", "addresses", "names", "classification", "summary", "keywords",
    "sentiment", "pii", "duplicates", "structure",
)
CORRECTION_KINDS = ("spelling", "orientation", "metadata")

ANALYSIS_QUEUES = tuple(f"analysis.{k}" for k in ANALYSIS_KINDS)
CORRECTION_QUEUES = tuple(f"correction.{k}" for k in CORRECTION_KINDS)
PRIORITY_QUEUE = "priority"
URGENT_TASK = "urgent"
REPORT_QUEUE = "reports"
REPORT_TASK = "analysis_report"
WORK_TASKS = {URGENT_TASK: PRIORITY_QUEUE, **{q: q for q in (*ANALYSIS_QUEUES, *CORRECTION_QUEUES)}}
"""The tasks a document's work is split into, with their queues: each analysis and correction
task has its queue's name; `urgent` (a document someone waits for) goes to the priority queue."""
ALL_QUEUES = (PRIORITY_QUEUE, *ANALYSIS_QUEUES, *CORRECTION_QUEUES, REPORT_QUEUE)

QA_ATTEMPTS = 3
"""A task's attempts are its quality-check attempts: after the last one fails, it is parked."""
SEED = "skiplock-analysis-1"
QA_THRESHOLD = 0.8


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the quality check of one (document, task) will say."""

    unreadable: bool
    passes_on: int | None
    """The first attempt whose check passes (1..QA_ATTEMPTS), or None: never (parked for review)."""
    score: float
    """The check's score on a failing attempt (the threshold is 0.8)."""


def verdict(doc: int, task: str) -> Verdict:
    digest = hashlib.sha256(f"{SEED}:{doc}:{task}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    score = round(0.4 + 0.39 * int.from_bytes(digest[8:10], "big") / 2**16, 2)
    if u < 0.02:
        return Verdict(True, None, 0.0)
    if u < 0.72:
        return Verdict(False, 1, score)
    if u < 0.84:
        return Verdict(False, 2, score)
    if u < 0.92:
        return Verdict(False, 3, score)
    return Verdict(False, None, score)


def work_seconds(doc: int, task: str, mean_ms: int) -> float:
    """How long the simulated analysis takes: 0.5x to 1.5x the mean, fixed per (document, task)."""
    digest = hashlib.sha256(f"{SEED}:work:{doc}:{task}".encode()).digest()
    return mean_ms / 1000 * (0.5 + digest[0] / 255)


def plan(n: int) -> list[tuple[str, int]]:
    """The (task, document) pairs of a run of n tasks: one in 20 goes to the priority queue, one
    in 10 to a correction queue, the rest across the 21 analysis queues in turn."""
    out: list[tuple[str, int]] = []
    analysis = corrections = 0
    for i in range(n):
        doc = 1000 + i
        if i % 20 == 7:
            out.append((URGENT_TASK, doc))
        elif i % 10 == 3:
            out.append((CORRECTION_QUEUES[corrections % len(CORRECTION_QUEUES)], doc))
            corrections += 1
        else:
            out.append((ANALYSIS_QUEUES[analysis % len(ANALYSIS_QUEUES)], doc))
            analysis += 1
    return out
