"""The blocked-loop watchdog: a worker whose event loop stops turning says what blocks it.

One ``time.sleep(5)``, a synchronous HTTP client or a CPU-bound loop in a
handler stops every request of that worker, and neither nginx nor OpenResty
says so. Here a thread watches the loop.

Theory of operation: the loop beats (a ``call_later`` every ``warn / 10``
seconds records ``time.monotonic()``). The watchdog thread looks every
``warn / 4`` seconds; when the last beat is older than ``warn`` (the
``loop_block_warn`` setting), it takes the main thread's current Python stack
(``sys._current_frames``) and logs it at ``[warn]``: the innermost frames name
the handler's file and line. When the loop turns again, the beat measures the
whole stall, counts it and logs its length at ``[info]``.

Rules:
- One ``[warn]`` per stall, however long it lasts.
- ``stalls`` counts stalls of at least ``warn``; ``longest_recent`` is the
  longest of those that ended in the last ``RECENT`` seconds (``/metrics``
  and ``pyresty status``).
- The thread is a daemon and only reads: it never touches the loop or the
  objects of the main thread (a stack is formatted from frames, which is
  what ``faulthandler`` and debuggers do). C code that holds the GIL (one
  huge regex match) keeps the thread from running too: that stall is seen,
  and logged, when it ends.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import deque
from typing import Final

log = logging.getLogger("pyresty.process")

RECENT: Final = 300.0     # s: how long a stall counts as "recent" for status
STACK_FRAMES: Final = 12  # innermost frames logged


class Watchdog:
    """Watches one event loop from a thread of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, warn: float) -> None:
        self.loop = loop
        self.warn = warn
        self.beat = time.monotonic()
        self.stalls = 0
        self._recent: deque[tuple[float, float]] = deque()   # (ended at, seconds)
        self._reported = 0.0            # the beat whose stall was logged
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._watch, name="pyresty-watchdog", daemon=True)

    def start(self) -> None:
        self._timer = self.loop.call_later(self.warn / 10, self._tick)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()

    @property
    def longest_recent(self) -> float:
        """The longest stall that ended in the last ``RECENT`` seconds (0.0: none)."""
        horizon = time.monotonic() - RECENT
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        return max((seconds for _, seconds in self._recent), default=0.0)

    def counters(self) -> dict[str, float]:
        return {"loop_stalls": self.stalls, "loop_stall_longest_recent": self.longest_recent}

    # the loop's side
    def _tick(self) -> None:
        now = time.monotonic()
        stalled = now - self.beat - self.warn / 10
        self.beat = now
        if stalled >= self.warn:
            self.stalls += 1
            self._recent.append((now, stalled))
            log.info("event loop turned again after a %.3f s stall", stalled)
        self._timer = self.loop.call_later(self.warn / 10, self._tick)

    # the thread's side
    def _watch(self) -> None:
        while not self._stop.wait(self.warn / 4):
            beat = self.beat
            blocked = time.monotonic() - beat
            if blocked >= self.warn and beat != self._reported:
                self._reported = beat
                log.warning("event loop blocked for %.3f s (loop_block_warn %gs); "
                            "every request of this process waits; the main thread is at:\n%s",
                            blocked, self.warn, self._main_stack())

    def _main_stack(self) -> str:
        frame = sys._current_frames().get(self._main)   # noqa: SLF001 - what faulthandler reads
        if frame is None:
            return "  (no Python frame)"
        lines = traceback.format_stack(frame)[-STACK_FRAMES:]
        return "".join(lines).rstrip("\n")
