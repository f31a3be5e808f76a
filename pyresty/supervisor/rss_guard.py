"""The memory guard: a worker above ``worker_max_rss`` is replaced, gracefully.

A handler that leaks (a cache without a bound, a list that only grows) makes
its worker grow until the kernel's OOM killer takes it, and every request in
flight with it. With ``worker_max_rss`` set, the master replaces such a worker
the way a reload replaces a generation, for one worker only.

Rules:
- The master looks at the RSS of every serving worker of the current
  generation at most once per ``CHECK_EVERY`` seconds (``/proc/<pid>/statm``,
  the figure ``pyresty status`` shows); not while a reload is starting or the
  server stops.
- A worker above the limit is logged at ``[warn]`` with its RSS, and a new
  worker with the same id is spawned first; only when the new one reported
  ready is the old one asked to stop gracefully (SIGQUIT: its in-flight
  requests finish, its idle keepalive connections close after a linger), so
  nothing is lost. The old one is never replaced twice.
- If the new worker fails to start, the old one keeps serving and the guard
  tries again after ``RETRY_AFTER``; if the old one dies while its
  replacement starts, the replacement takes its place (no extra respawn).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Final

from pyresty.runtime.identity import Role
from pyresty.supervisor.table import Child, State, rss_of

log = logging.getLogger("pyresty.master")

CHECK_EVERY: Final = 1.0      # s between looks at the workers' RSS
RETRY_AFTER: Final = 5.0      # s before a worker whose replacement failed is tried again


class RssGuard:
    """Which workers to replace, and which replacement stands for which worker."""

    def __init__(self) -> None:
        self.next_check = 0.0
        self.replacing: dict[int, Child] = {}     # new worker's pid -> the worker it replaces
        self.retry_at: dict[int, float] = {}      # old worker's pid -> not before

    def over_limit(self, children: Iterable[Child], generation: int, limit: int,
                   now: float | None = None) -> list[tuple[Child, int]]:
        """Serving workers of ``generation`` above ``limit`` bytes, with their RSS."""
        now = time.monotonic() if now is None else now
        if now < self.next_check:
            return []
        self.next_check = now + CHECK_EVERY
        being_replaced = {old.pid for old in self.replacing.values()}
        found = []
        for child in children:
            if (child.role is not Role.WORKER or child.generation != generation
                    or child.state is not State.SERVING or child.pid in being_replaced
                    or child.pid in self.replacing or self.retry_at.get(child.pid, 0.0) > now):
                continue
            rss = rss_of(child.pid)
            if rss > limit:
                found.append((child, rss))
        return found

    def replace(self, new: Child, old: Child) -> None:
        self.replacing[new.pid] = old

    def ready(self, new: Child) -> Child | None:
        """``new`` is ready: the worker it replaces (to stop now), if any."""
        old = self.replacing.pop(new.pid, None)
        if old is not None:
            self.retry_at.pop(old.pid, None)
        return old

    def exited(self, child: Child) -> bool:
        """A worker exited unexpectedly; True when the guard accounts for it (no respawn)."""
        old = self.replacing.pop(child.pid, None)
        if old is not None:   # a replacement that failed: the old worker serves on
            log.error("the replacement of %s failed; it keeps serving, next try in %.0f s",
                      old.label, RETRY_AFTER)
            self.retry_at[old.pid] = time.monotonic() + RETRY_AFTER
            return True
        for new_pid, old in list(self.replacing.items()):
            if old.pid == child.pid:  # its replacement is on its way: it takes the place
                del self.replacing[new_pid]
                return True
        return False
