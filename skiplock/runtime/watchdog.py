"""A thread that watches the worker from outside its event loop.

- **Blocked loop.** A coroutine on the loop notes the time every TICK seconds; when the note
  is older than STALL_AFTER, the loop is blocked (a handler called blocking code or computes
  without awaiting). The watchdog asks the main thread which job's code is running (a signal,
  PROBE_SIGNAL, whose handler reads `current_job`) and logs `skiplock.worker.loop_blocked`
  with that job. The heartbeat runs on its own thread, so every lease stays renewed.
- **Its timeout, applied.** Once the blocking job is past its timeout, the same signal raises
  `LoopBlockedTimeout` (a TimeoutError) inside it, so its attempt ends as timed out and the
  loop runs again.
- **Wedged.** If the loop is still blocked a whole lease past that point (the handler swallowed
  the error, or blocks in C code that signals cannot interrupt), the worker is beyond saving:
  in a process of its own it exits (status 70) and its jobs are rescued after their leases;
  embedded in other code it stops renewing its leases instead.
- **Signals and the hard deadline** (process mode, `own_process()`): SIGTERM/SIGINT are seen
  here even while the loop is blocked; the first begins the graceful stop, a second ends the
  process at once, and so does the deadline of `grace + SHUTDOWN_BOUND` seconds after the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..events import emit
from .service import ThreadService
from .threads import JobRef, current_job

TICK = 0.1
STALL_AFTER = 1.0
SHUTDOWN_BOUND = 10.0
"""Seconds after the grace period within which a stopping worker process has exited, whatever
its handlers do."""
PROBE_SIGNAL = signal.SIGUSR2
EXIT_FORCED = 1
EXIT_WEDGED = 70


class LoopBlockedTimeout(TimeoutError):
    """Raised inside a handler that blocked the event loop past its timeout."""


class Watchdog(ThreadService):
    name = "watchdog"

    def __init__(self, worker_id: str, *, lease_seconds: float, grace_seconds: float,
                 request_stop: Callable[[], None], held: Callable[[], list[str]],
                 halt: Callable[[], None]) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.request_stop = request_stop
        self.held = held      # ids of the jobs the worker holds (read from this thread)
        self.halt = halt      # stop renewing leases (wedged, not in a process of our own)
        self.tick = time.monotonic()
        self.own = False
        self._ticker: asyncio.Task[None] | None = None
        self._rfd = self._wfd = -1
        self._main = threading.main_thread().ident
        self._probe_seq = 0
        self._probe_answer: JobRef | None = None
        self._target: JobRef | None = None
        self._target_message = ""
        self._signals = 0
        self._deadline: float | None = None
        self._stall_since: float | None = None  # what run_once() knows of the current stall
        self._culprit: JobRef | None = None
        self._interrupted_at = 0.0
        self._looked = time.monotonic()  # when run_once() last looked

    # -- process mode ----------------------------------------------------------------------
    def own_process(self) -> None:
        """Take SIGTERM, SIGINT and PROBE_SIGNAL (main thread only)."""
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(PROBE_SIGNAL, self._on_probe)
        self.own = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        try:  # only a write: safe wherever the main thread was, even in this handler itself
            os.write(self._wfd, bytes([signum]))
        except OSError:
            pass

    def _on_probe(self, signum: int, frame: FrameType | None) -> None:
        job = current_job.get()
        self._probe_answer = job
        self._probe_seq += 1
        target = self._target
        if (target is not None and job is not None and (job.job_id, job.attempt) == (target.job_id, target.attempt)
                and self.stalled() > STALL_AFTER):
            self._target = None
            raise LoopBlockedTimeout(self._target_message)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._ticker is None:
            self.tick = time.monotonic()
            self._ticker = asyncio.create_task(self._tick(), name="skiplock.watchdog-tick")
        self._looked = time.monotonic()
        super().start()

    async def stop(self) -> None:
        """Stop watching the loop. In process mode the thread stays, for signals and the deadline."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if not self.own:
            await super().stop()

    async def _tick(self) -> None:
        while True:
            self.tick = time.monotonic()
            await asyncio.sleep(TICK)

    def stalled(self) -> float:
        return 0.0 if self._ticker is None else time.monotonic() - self.tick

    def arm_deadline(self) -> None:
        """The worker is stopping (signal, burst end, wedged): in process mode the process is
        gone within grace + SHUTDOWN_BOUND from now, whatever its handlers do."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_seconds + SHUTDOWN_BOUND

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._halted.is_set():
            self._read_signals(TICK)
            self.run_once()

    def run_once(self) -> None:
        """One look: the stop deadline, then whether the loop is blocked, by whom, and for how long."""
        now = time.monotonic()
        if now - self._looked > STALL_AFTER:
            # This thread did not run either: the whole process was paused (SIGSTOP, a
            # suspended VM) or starved of CPU. Not the loop's fault: measure afresh, or a
            # process resumed after a lease would take itself for wedged and exit.
            self.tick = now
            self._stall_since, self._culprit = None, None
        self._looked = now
        if self._deadline is not None and now > self._deadline:
            self.exit(EXIT_FORCED, f"still running {self.grace_seconds + SHUTDOWN_BOUND:g}s after the stop "
                                   "signal (grace period + bound)")
        lag = self.stalled()
        if lag <= STALL_AFTER:
            if self._stall_since is not None:
                emit("skiplock.worker.loop_resumed", worker=self.worker_id,
                     blocked_s=round(now - self._stall_since, 1), **_fields(self._culprit))
            self._stall_since, self._culprit = None, None
            return
        if self._stall_since is None:
            self._stall_since = now - lag
            self._culprit = self.probe()
            emit("skiplock.worker.loop_blocked", worker=self.worker_id, blocked_s=round(lag, 1),
                 **_fields(self._culprit), reason="the event loop is blocked (blocking call or computation in an "
                                                  "async handler); other jobs wait, their leases are kept")
        culprit = self._culprit
        overdue = culprit is not None and culprit.timeout is not None and now > culprit.started + culprit.timeout
        if overdue and culprit is not None and self.own and now - self._interrupted_at > 1.0:
            self._interrupted_at = now
            self.interrupt(culprit, f"task {culprit.task!r} blocked the event loop past its timeout of "
                                    f"{culprit.timeout}s")
        limit = self._stall_since
        if culprit is not None and culprit.timeout is not None:
            limit = max(limit, culprit.started + culprit.timeout)
        if now > limit + self.lease_seconds:
            emit("skiplock.worker.wedged", worker=self.worker_id, blocked_s=round(lag, 1), **_fields(culprit),
                 reason="the event loop stayed blocked a lease past the job's timeout; its jobs are left to "
                        "the rescuer")
            if self.own:
                self.exit(EXIT_WEDGED, "event loop wedged")
            self.halt()
            self._halted.set()

    def _read_signals(self, timeout: float) -> None:
        if self._rfd < 0:
            self._halted.wait(timeout)
            return
        ready, _, _ = select.select([self._rfd], [], [], timeout)
        if not ready:
            return
        for signum in os.read(self._rfd, 64):
            self._signals += 1
            if self._signals == 1:
                self.arm_deadline()
                loop = self._loop
                if loop is not None:
                    try:
                        loop.call_soon_threadsafe(self.request_stop)
                    except RuntimeError:  # the loop is gone: nothing left to stop gracefully
                        self.exit(EXIT_FORCED, "stop signal after the worker's loop ended")
            else:
                self.exit(EXIT_FORCED, f"second stop signal ({signal.Signals(signum).name})")

    def probe(self) -> JobRef | None:
        """Which job's code the main thread runs now (None if unknown or no job's)."""
        if not self.own:
            return None
        seq = self._probe_seq
        signal.pthread_kill(self._main, PROBE_SIGNAL)  # type: ignore[arg-type]
        for _ in range(20):
            if self._probe_seq != seq:
                return self._probe_answer
            time.sleep(0.01)
        return None

    def interrupt(self, job: JobRef, message: str) -> None:
        self._target_message = message
        self._target = job
        signal.pthread_kill(self._main, PROBE_SIGNAL)  # type: ignore[arg-type]

    def exit(self, code: int, reason: str) -> None:
        """End the process now (process mode): what still runs is abandoned to the rescuer."""
        if not self.own:
            return
        emit("skiplock.worker.stopped", worker=self.worker_id, forced=True, reason=reason,
             abandoned=",".join(self.held()) or None)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - exiting regardless
                pass
        os._exit(code)


def _fields(job: JobRef | None) -> dict[str, Any]:
    if job is None:
        return {"job_id": "unknown"}
    return {"job_id": job.job_id, "task": job.task, "attempt": job.attempt}
