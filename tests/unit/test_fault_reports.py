"""Pure parts of issue 17's fault handling: the once-a-second log line and the
memory guard's bookkeeping (which worker replaces which)."""
from __future__ import annotations

import logging
import os
import socket

import pytest

from pyresty.runtime.identity import Role
from pyresty.runtime.throttle import LogThrottle
from pyresty.supervisor.rss_guard import RETRY_AFTER, RssGuard
from pyresty.supervisor.table import Child, State

pytestmark = pytest.mark.timeout(30)


def test_a_throttled_line_repeats_once_per_interval_and_counts_the_rest(caplog) -> None:
    throttle = LogThrottle(logging.getLogger("test.throttle"), logging.ERROR, interval=1.0)
    with caplog.at_level(logging.ERROR, "test.throttle"):
        written = [throttle.report("disk full on %s", "x", now=t)
                   for t in (10.0, 10.1, 10.5, 10.99, 11.0, 11.2, 13.0)]
    assert written == [True, False, False, False, True, False, True]
    assert throttle.total == 7
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["disk full on x", "disk full on x (3 more since the last report)",
                        "disk full on x (1 more since the last report)"]


@pytest.fixture
def channel():
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def child(channel, pid: int, generation: int = 1, state: State = State.SERVING,
          role: Role = Role.WORKER) -> Child:
    return Child(pid, role, 0, generation, channel, 0.0, 10.0, state=state)


def test_only_serving_workers_of_the_generation_above_the_limit_are_replaced(channel) -> None:
    me = os.getpid()              # a live process: its RSS is real
    guard = RssGuard()
    candidates = [child(channel, me), child(channel, me, generation=0),
                  child(channel, me, state=State.STARTING),
                  child(channel, me, role=Role.AGENT)]
    found = guard.over_limit(candidates, 1, limit=1, now=100.0)
    assert [c for c, _ in found] == [candidates[0]] and found[0][1] > 1
    assert guard.over_limit(candidates, 1, limit=1, now=100.5) == []     # once a second
    assert guard.over_limit(candidates, 1, limit=1 << 50, now=102.0) == []


def test_a_replacement_stops_its_worker_when_ready_and_never_twice(channel) -> None:
    guard = RssGuard()
    old, new = child(channel, os.getpid()), child(channel, 999_999_999, state=State.STARTING)
    guard.replace(new, old)
    assert guard.over_limit([old, new], 1, limit=1, now=10.0) == []      # already being replaced
    assert guard.ready(new) is old
    assert guard.ready(new) is None


def test_a_failed_replacement_leaves_the_old_worker_serving_and_retries_later(channel) -> None:
    guard = RssGuard()
    old, new = child(channel, os.getpid()), child(channel, 999_999_999, state=State.STARTING)
    guard.replace(new, old)
    assert guard.exited(new) is True                 # no respawn for the failed replacement
    assert guard.over_limit([old], 1, limit=1, now=0.0) == []            # not before RETRY_AFTER
    assert RETRY_AFTER > 0


def test_a_worker_that_dies_while_replaced_is_not_respawned(channel) -> None:
    guard = RssGuard()
    old, new = child(channel, os.getpid()), child(channel, 999_999_999, state=State.STARTING)
    guard.replace(new, old)
    assert guard.exited(old) is True                 # the replacement takes its place
    assert guard.ready(new) is None                  # nothing left to stop
    assert guard.exited(child(channel, 12345)) is False
