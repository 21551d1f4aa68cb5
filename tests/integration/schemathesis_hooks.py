"""Schemathesis hooks for test_http_schemathesis.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

VALID_HEADER = re.compile(r"^[!-~]([ -~]{0,253}[!-~])?$")


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """The one rule the description states only in words: the Idempotency-Key header and the
    body's idempotency_key, when both are given, must be equal (422 otherwise). JSON Schema
    cannot relate a header to a body field, so when both are generated the header goes: the
    case stays what it was (valid or not) for every rule the schema does express."""
    headers = case.headers or {}
    body = case.body if isinstance(case.body, dict) else {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and VALID_HEADER.match(key) and body.get("idempotency_key") is not None:
        del headers["Idempotency-Key"]
    _no_dependencies(body)
    for job in body.get("jobs") or []:
        if isinstance(job, dict):
            _no_dependencies(job)
    return case


def _no_dependencies(job: dict[str, Any]) -> None:
    """The other rule stated in words: depends_on names stored jobs (or other jobs of the same
    request, in no cycle), which no schema can know; a generated list of ids becomes empty (no
    dependency), the field still sent. A list the schema refuses stays as it is."""
    deps = job.get("depends_on")
    if isinstance(deps, list) and len(deps) <= 1000 and all(_schema_valid_dependency(d) for d in deps):
        job["depends_on"] = []


def _schema_valid_dependency(d: Any) -> bool:
    if isinstance(d, str):
        try:
            uuid.UUID(d)
        except ValueError:
            return False
        return True
    return isinstance(d, int | float) and not isinstance(d, bool) and d == int(d) and 0 <= d <= 100_000
