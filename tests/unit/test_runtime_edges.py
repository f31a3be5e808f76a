"""Edge cases of the runtime that the per-module tests miss: timers created
from another thread, TTLs too long for the stores, and spawn errors that
blame the wrong thing.

Real objects throughout: a real scheduler on a real loop (uvloop and asyncio),
real LMDB and a real redis-server (the session ``redis_url`` fixture), real
child processes. Waits are bounded; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import math
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from pyresty.errors import PipeError
from pyresty.runtime import pipe
from pyresty.runtime import timer as timers
from pyresty.runtime.shared import EmbeddedDict, RedisDict, SharedDict
from pyresty.runtime.timer import TimerScheduler

pytestmark = pytest.mark.timeout(30)

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run_on(loop_name: str, body: Callable[[], Awaitable[None]]) -> None:
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(asyncio.wait_for(body(), 20))
    finally:
        loop.close()


# -- timers -----------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_timer_created_from_another_thread_raises_instead_of_never_firing(loop_name: str) -> None:
    """The scheduler's heap and ``loop.call_at`` are loop-thread only. Called
    from a thread, ``at()`` used to succeed; when the loop was asleep in
    epoll at that moment the timer did not fire (nothing woke the loop for
    the new deadline; measured: not within 2 s on uvloop and asyncio), so a
    callback scheduled from an executor job could silently vanish."""
    async def body() -> None:
        s = TimerScheduler()
        fired = asyncio.Event()
        outcome: list[BaseException | None] = []
        armed = threading.Event()

        def from_thread() -> None:
            try:
                s.at(0.01, lambda premature: fired.set())
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assert
                outcome.append(exc)
            armed.set()

        # Started from the loop, which then goes back to sleep in wait_for.
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, threading.Thread(target=from_thread, daemon=True).start)
        try:
            await asyncio.wait_for(fired.wait(), 1.0)
        except TimeoutError:
            pass
        assert armed.wait(5)
        assert outcome and isinstance(outcome[0], RuntimeError), (
            f"at() from a thread returned {outcome!r}; fired={fired.is_set()}")
        assert "event loop's thread" in str(outcome[0])
        assert s.pending_count() == 0

        # The module-level API with an installed scheduler (a worker's case).
        timers.install(s)
        try:
            for call in (lambda: timers.at(0, print), lambda: timers.every(1, print)):
                with pytest.raises(RuntimeError, match="event loop's thread"):
                    await asyncio.to_thread(call)
        finally:
            timers.install(None)
        assert s.pending_count() == 0

        # On the loop's own thread nothing changes.
        done = asyncio.Event()
        s.at(0, lambda premature: done.set())
        await asyncio.wait_for(done.wait(), 5)
    run_on(loop_name, body)


# -- shared dicts: TTLs the stores cannot hold --------------------------------------

def _open(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> SharedDict:
    if backend == "embedded":
        return EmbeddedDict("edges", os.path.join(str(tmp_path), "store"), 1 << 20)
    url = request.getfixturevalue("redis_url")
    return RedisDict("edges" + uuid.uuid4().hex[:8], url)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ttl", [math.inf, 1e11, 10**30])
@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_a_ttl_too_long_for_the_store_is_a_value_error(
        backend: str, ttl: float, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    """The contract: a bad TTL is a ValueError. ``ttl=math.inf`` (a natural
    way to say "forever") and TTLs past ~584 years used to leak
    ``OverflowError`` / ``struct.error`` from the embedded store's u64
    nanosecond header, and Redis reported an int64 overflow "of incr" for a
    plain ``set``. The entry must be left as it was."""
    async def body() -> None:
        d = _open(backend, tmp_path, request)
        try:
            await d.set("k", "before")
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: d.set("k", "after", ttl),
                lambda: d.safe_set("k", "after", ttl),
                lambda: d.add("new", "after", ttl),
                lambda: d.safe_add("new", "after", ttl),
                lambda: d.replace("k", "after", ttl),
                lambda: d.expire("k", ttl),
                lambda: d.incr("n", 1, init=0, init_ttl=ttl),
            ]
            for call in calls:
                with pytest.raises(ValueError, match="ttl"):
                    await call()
            assert await d.get("k") == "before"
            assert await d.ttl("k") == 0.0
            assert await d.get("new") is None and await d.get("n") is None
            # The longest allowed TTL still works on both stores.
            await d.set("k", "long", ttl=100 * 365 * 86400)
            left = await d.ttl("k")
            assert left is not None and left > 99 * 365 * 86400
        finally:
            if backend == "redis":
                await d.flush_all()
            await d.aclose()
    asyncio.run(body())


# -- pipes ----------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_spawn_with_a_bad_cwd_names_the_cwd_not_the_program(tmp_path: Any) -> None:
    """A missing (or non-directory) cwd fails with ENOENT/ENOTDIR, the same
    errors as a missing program, and the message used to name only the
    program: "cannot spawn 'true': No such file or directory" sends the
    operator looking for /usr/bin/true."""
    missing = os.path.join(str(tmp_path), "no-such-dir")
    a_file = os.path.join(str(tmp_path), "file")
    open(a_file, "w").close()

    async def body() -> None:
        for cwd in (missing, a_file):
            with pytest.raises(PipeError, match="cannot spawn") as caught:
                await pipe.spawn(["true"], cwd=cwd)
            assert repr(cwd) in str(caught.value), str(caught.value)
        # A missing program with a good cwd still names the program only.
        with pytest.raises(PipeError) as caught:
            await pipe.spawn(["/nonexistent/program"], cwd=str(tmp_path))
        assert "/nonexistent/program" in str(caught.value)
        assert "cwd" not in str(caught.value)
        assert pipe.live_count() == 0
    asyncio.run(body())
