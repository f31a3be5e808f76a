"""Child-process test support: an event loop of each kind per test, a check that
no child was left behind, and the reaping of forked test processes."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import uvloop

from pyresty.runtime import pipe

Runner = Callable[[Callable[[], Awaitable[object]]], object]


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of pid from /proc, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def zombie_children() -> set[int]:
    me = os.getpid()
    return {int(name) for name in os.listdir("/proc")
            if name.isdigit() and proc_state(int(name)) == ("Z", me)}


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition (10 ms steps) until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run an async test body in a fresh event loop of each kind."""
    def runner(body: Callable[[], Awaitable[object]]) -> object:
        if request.param == "uvloop":
            return uvloop.run(body())
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as r:
            return r.run(body())
    return runner


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before = zombie_children()
    yield
    assert pipe.live_count() == 0
    assert zombie_children() - before == set()


def reap(procs: list, timeout: float = 60) -> None:
    """Join forked test processes by a shared deadline; kill and fail on any
    still running, and fail unless every one exited with 0."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(5)
    assert not alive, "a child outlived its deadline"
    assert [p.exitcode for p in procs] == [0] * len(procs)

