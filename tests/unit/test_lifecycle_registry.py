"""The lifecycle registry (pyresty/runtime/lifecycle.py): order, isolation, bounds.

Every walk runs on a real event loop, once on uvloop and once on asyncio's own.
Nothing waits by sleeping: steps that must be cut wait on futures nobody sets,
and monotonic time only measures how long the registry let them run.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from pyresty.runtime import lifecycle, timer
from pyresty.runtime.lifecycle import SHUTDOWN, Deadlines, Layer, Registry, Stage
from pyresty.runtime.timer import TimerScheduler

pytestmark = pytest.mark.timeout(10)

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
# small bounds, so that a cut step costs the suite little
FAST = Deadlines(cancel_grace=0.15, worker_slack=0.5, reap_children=0.05, kill_margin=0.6,
                 gone_by=1.0)
SLACK = 0.15     # how late a bound may be honoured on a loaded 2-core machine


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    def runner(main: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(main())
    return runner


@pytest.fixture(autouse=True)
def no_registry() -> Iterator[None]:
    lifecycle.install(None)
    timer.install(None)
    yield
    lifecycle.install(None)
    timer.install(None)


class Trace:
    """Records which step of which subsystem ran, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(self, name: str, stage: str) -> Callable[..., None]:
        def record(*args: float) -> None:
            self.calls.append(f"{name}.{stage}")
        return record

    def steps(self, name: str) -> dict[str, Any]:
        async def wait(timeout: float) -> None:
            self.calls.append(f"{name}.wait")
        return {"begin_exit": self.step(name, "begin_exit"), "wait": wait,
                "deadline": self.step(name, "deadline"), "close": self.step(name, "close")}


def never() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


# -- order ------------------------------------------------------------------------

def test_stages_follow_spec_order_and_layers_then_registration(run: Any) -> None:
    trace = Trace()
    registry = Registry(FAST)
    # registered in boot order (stores first, the server last), walked outermost first
    registry.register("shared dicts", Layer.STORES, **trace.steps("shared dicts"))
    registry.register("timers", Layer.BACKGROUND, **trace.steps("timers"))
    registry.register("http server", Layer.SERVER, **trace.steps("http server"))
    registry.register("pipes", Layer.CHILDREN, **trace.steps("pipes"))
    registry.register("websockets", Layer.UPGRADED, **trace.steps("websockets"))
    registry.register("access logs", Layer.STORES, **trace.steps("access logs"))
    order = ["websockets", "http server", "timers", "pipes", "shared dicts", "access logs"]
    assert registry.names() == order

    async def main() -> None:
        await registry.shutdown(1.0)
        registry.close()
    run(main)
    assert trace.calls == [f"{name}.{stage}" for stage in ("begin_exit", "wait", "deadline", "close")
                           for name in order]


def test_registering_a_name_again_replaces_its_steps_and_keeps_its_place(run: Any) -> None:
    trace = Trace()
    registry = Registry(FAST)
    registry.register("pipes", Layer.CHILDREN, close=trace.step("pipes", "first"))
    registry.register("stores", Layer.CHILDREN, close=trace.step("stores", "close"))
    registry.register("pipes", Layer.CHILDREN, close=trace.step("pipes", "second"))
    assert registry.names() == ["pipes", "stores"]
    registry.close()
    registry.close()                      # each stage runs once
    assert trace.calls == ["pipes.second", "stores.close"]
    assert registry.unregister("stores") and not registry.unregister("stores")


def test_a_fast_shutdown_skips_the_wait(run: Any) -> None:
    trace = Trace()
    registry = Registry(FAST)
    registry.register("timers", Layer.BACKGROUND, **trace.steps("timers"))
    run(lambda: registry.shutdown(None))
    assert trace.calls == ["timers.begin_exit", "timers.deadline"]
    assert not registry.ran(Stage.WAIT) and registry.ran(Stage.DEADLINE)


def test_a_subsystem_registered_after_begin_exit_gets_it_at_once(run: Any) -> None:
    trace = Trace()
    registry = Registry(FAST)
    registry.begin_exit()
    registry.register("pool", Layer.UPSTREAM, **trace.steps("pool"))
    assert trace.calls == ["pool.begin_exit"]
    registry.register("pool", Layer.UPSTREAM, **trace.steps("pool"))   # not twice
    assert trace.calls == ["pool.begin_exit"]


# -- errors -----------------------------------------------------------------------

def test_a_step_that_raises_is_logged_and_the_walk_goes_on(
        run: Any, caplog: pytest.LogCaptureFixture) -> None:
    trace = Trace()
    registry = Registry(FAST)

    def boom(*args: float) -> None:
        raise RuntimeError("broken step")

    async def broken_wait(timeout: float) -> None:
        raise RuntimeError("broken wait")

    async def broken_cancel() -> None:
        raise RuntimeError("broken deadline")

    registry.register("broken", Layer.SERVER, begin_exit=boom, wait=broken_wait,
                      deadline=lambda grace: broken_cancel(), close=boom)
    registry.register("sync deadline", Layer.UPSTREAM, deadline=boom)
    registry.register("timers", Layer.BACKGROUND, **trace.steps("timers"))

    async def main() -> None:
        await registry.shutdown(1.0)
        registry.close()
    with caplog.at_level(logging.ERROR, logger="pyresty.process"):
        run(main)
    assert trace.calls == ["timers.begin_exit", "timers.wait", "timers.deadline", "timers.close"]
    failures = [(r.getMessage(), str(r.exc_info[1])) for r in caplog.records if r.exc_info]
    assert failures == [("broken: the begin exit step failed", "broken step"),
                        ("broken: the wait step failed", "broken wait"),
                        ("broken: the deadline step failed", "broken deadline"),
                        ("sync deadline: the deadline step failed", "broken step"),
                        ("broken: the close step failed", "broken step")]


def test_a_begin_exit_step_that_would_wait_is_refused(
        run: Any, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(FAST)

    async def waits() -> None:
        raise AssertionError("never runs")

    registry.register("wrong", Layer.SERVER, begin_exit=waits)
    with caplog.at_level(logging.ERROR, logger="pyresty.process"):
        registry.begin_exit()
    assert "wrong: the begin exit step returned an awaitable" in caplog.text


# -- bounds -----------------------------------------------------------------------

def test_waits_run_together_and_end_at_the_deadline(run: Any) -> None:
    registry = Registry(FAST)
    given: list[float] = []
    ended = []

    async def stuck(timeout: float) -> None:
        given.append(timeout)
        try:
            await never()
        finally:
            ended.append("stuck")

    async def quick(timeout: float) -> None:
        given.append(timeout)
        ended.append("quick")

    registry.register("stuck", Layer.SERVER, wait=stuck)
    registry.register("quick", Layer.BACKGROUND, wait=quick)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert not await registry.wait(start + 0.3)
        elapsed = loop.time() - start
        await asyncio.sleep(0)            # the cancelled wait ends at its next turn
        return elapsed
    elapsed = run(main)
    assert 0.29 <= elapsed < 0.3 + SLACK
    assert len(given) == 2 and all(0.25 < t <= 0.3 + 1e-6 for t in given)
    assert sorted(ended) == ["quick", "stuck"]


def test_deadline_steps_share_cancel_grace_and_their_sync_part_always_runs(
        run: Any, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(FAST)
    calls: list[tuple[str, float]] = []

    def cancel_and_wait_forever(grace: float) -> Awaitable[None]:
        calls.append(("stubborn", grace))        # the cancel: synchronous, done at once
        return never()

    def kill(grace: float) -> None:
        calls.append(("pipes", grace))

    registry.register("stubborn", Layer.BACKGROUND, deadline=cancel_and_wait_forever)
    registry.register("pipes", Layer.CHILDREN, deadline=kill)

    async def main() -> float:
        start = time.monotonic()
        await registry.deadline()
        return time.monotonic() - start
    with caplog.at_level(logging.WARNING, logger="pyresty.process"):
        elapsed = run(main)
    assert FAST.cancel_grace - 0.01 <= elapsed < FAST.cancel_grace + SLACK
    assert [name for name, _ in calls] == ["stubborn", "pipes"]
    assert calls[0][1] == pytest.approx(FAST.cancel_grace, abs=0.01)
    assert calls[1][1] < 0.01                     # nothing left, and still called
    assert "stubborn: the deadline step ran past 0.15 s; abandoned" in caplog.text


def test_the_whole_shutdown_is_bounded_by_timeout_plus_cancel_grace(run: Any) -> None:
    registry = Registry(FAST)

    async def wait_forever(timeout: float) -> None:
        await never()

    registry.register("server", Layer.SERVER, wait=wait_forever,
                      deadline=lambda grace: never())

    async def main() -> float:
        start = time.monotonic()
        await registry.shutdown(0.2)
        return time.monotonic() - start
    elapsed = run(main)
    assert 0.2 + FAST.cancel_grace - 0.02 <= elapsed < 0.2 + FAST.cancel_grace + SLACK


def test_timers_register_themselves_and_go_premature_then_cancelled(run: Any) -> None:
    async def main() -> None:
        registry = Registry(FAST)
        lifecycle.install(registry)
        scheduler = TimerScheduler(asyncio.get_running_loop())
        assert registry.names() == ["timers"]
        seen: list[bool] = []
        started = asyncio.Event()

        async def stubborn(premature: bool) -> None:
            seen.append(premature)
            if premature:
                started.set()
                await never()

        scheduler.at(3600, stubborn)
        start = time.monotonic()
        registry.begin_exit()
        await asyncio.wait_for(started.wait(), 5)
        assert seen == [True] and scheduler.running_count() == 1
        await registry.wait(asyncio.get_running_loop().time() + 0.1)
        await registry.deadline()
        assert scheduler.running_count() == 0
        assert time.monotonic() - start < 0.1 + FAST.cancel_grace + SLACK
    run(main)


# -- the table and the process's registry ------------------------------------------

def test_the_deadline_table_keeps_its_chain() -> None:
    assert SHUTDOWN.cancel_grace < SHUTDOWN.worker_slack
    assert SHUTDOWN.worker_slack + SHUTDOWN.reap_children < SHUTDOWN.kill_margin < SHUTDOWN.gone_by
    with pytest.raises(ValueError, match="kill_margin"):
        Deadlines(kill_margin=1.5)
    with pytest.raises(ValueError, match="cancel_grace < worker_slack"):
        Deadlines(cancel_grace=0.9)
    with pytest.raises(ValueError, match="fast_kill_after"):
        Deadlines(fast_kill_after=1.0)


def test_register_does_nothing_without_a_registry_and_a_fork_starts_with_none() -> None:
    assert lifecycle.register("x", Layer.SERVER) is None
    registry = Registry()
    lifecycle.install(registry)
    assert lifecycle.register("x", Layer.SERVER) is not None
    assert lifecycle.current() is registry and registry.names() == ["x"]
    pid = os.fork()
    if pid == 0:
        os._exit(0 if lifecycle.current() is None else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert lifecycle.current() is registry
