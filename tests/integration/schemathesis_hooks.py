"""Schemathesis hooks for test_http_schemathesis.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import re
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
    return case
