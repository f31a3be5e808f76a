"""A log line that repeats at most once per interval, counting what it left out.

Faults that come in floods (a full disk under every access-log flush, an
``accept`` failing with EMFILE on every loop turn) must be logged, never
silently dropped, but one line per occurrence would flood the error log and
become the next fault. nginx logs every occurrence; pyresty logs the first,
then at most one line per ``interval`` saying how many happened since.

Rules:
- ``report`` counts every occurrence (``total``); it logs when ``interval``
  has passed since the last line it logged, with the number left out since.
- The clock is ``time.monotonic()`` (a test may pass its own ``now``).
"""
from __future__ import annotations

import logging
import time

__all__ = ["LogThrottle"]


class LogThrottle:
    """One logger line at most every ``interval`` seconds."""

    __slots__ = ("log", "level", "interval", "last", "left_out", "total")

    def __init__(self, log: logging.Logger, level: int, interval: float = 1.0) -> None:
        self.log = log
        self.level = level
        self.interval = interval
        self.last = -float("inf")
        self.left_out = 0
        self.total = 0

    def report(self, message: str, *args: object, now: float | None = None) -> bool:
        """Count one occurrence; log ``message % args`` unless one was logged
        less than ``interval`` ago. True when a line was written."""
        self.total += 1
        now = time.monotonic() if now is None else now
        if now - self.last < self.interval:
            self.left_out += 1
            return False
        self.last = now
        if self.left_out:
            message += f" ({self.left_out} more since the last report)"
            self.left_out = 0
        self.log.log(self.level, message, *args)
        return True
