"""Events with one shape: a name (`skiplock.job.completed`, ...) and flat fields. Logs are
the first consumer: one line per event, `key=value` pairs after the name, so a busy worker's
log can be grepped and parsed. Failures log at WARNING with the traceback, transitions at DEBUG."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("skiplock")

_LEVELS = {
    "skiplock.job.failed": logging.WARNING,
    "skiplock.job.retrying": logging.WARNING,
    "skiplock.job.rescued": logging.WARNING,
    "skiplock.job.fenced": logging.INFO,
    "skiplock.job.orphaned": logging.WARNING,
    "skiplock.job.abandoned": logging.WARNING,
    "skiplock.job.abandoned_returned": logging.INFO,
    "skiplock.job.lease_blocked": logging.WARNING,
    "skiplock.job.ack_blocked": logging.WARNING,
    "skiplock.worker.loop_blocked": logging.WARNING,
    "skiplock.worker.loop_resumed": logging.INFO,
    "skiplock.worker.wedged": logging.ERROR,
    "skiplock.worker.started": logging.INFO,
    "skiplock.worker.stopping": logging.INFO,
    "skiplock.worker.stopped": logging.INFO,
    "skiplock.worker.summary": logging.INFO,
    "skiplock.worker.db_error": logging.WARNING,
    "skiplock.api.db_error": logging.WARNING,
    "skiplock.schedule.broken": logging.WARNING,
}


def _fmt(value: Any) -> str:
    text = str(value)
    return repr(text) if (" " in text or not text) else text


def emit(event: str, *, traceback: str | None = None, **fields: Any) -> None:
    level = _LEVELS.get(event, logging.DEBUG)
    if not log.isEnabledFor(level):
        return
    line = " ".join([event, *(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)])
    if traceback:
        line = f"{line}\n{traceback.rstrip()}"
    log.log(level, line, extra={"skiplock_event": event, "skiplock_fields": fields})
