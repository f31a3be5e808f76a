"""pyresty.timer: the scheduler's rules (module docstring of pyresty/runtime/timer.py).

Every test runs on a fresh event loop, once on uvloop and once on asyncio's
own loop.  Nothing waits by sleeping: tests wait on events and futures with
``asyncio.wait_for`` deadlines; monotonic time only measures.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

import pytest
import uvloop

from pyresty.errors import TimerError
from pyresty.runtime import identity, timer
from pyresty.runtime.identity import Role
from pyresty.runtime.timer import TimerScheduler

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
DEADLINE = 5.0


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    def runner(main: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(main())
    return runner


@pytest.fixture(autouse=True)
def clean_process() -> Iterator[None]:
    me = identity.current
    saved = (me.role, me.worker_id, me.exiting)
    timer.install(None)
    yield
    timer.install(None)
    me.role, me.worker_id, me.exiting = saved


class Counter:
    """Counts calls, tracks concurrency, and sets an event at a target count."""

    def __init__(self, target: int = 1) -> None:
        self.calls: list[tuple[bool, tuple[Any, ...]]] = []
        self.active = 0
        self.max_active = 0
        self.target = target
        self.reached = asyncio.Event()

    def hit(self, premature: bool, *args: Any) -> None:
        self.calls.append((premature, args))
        if len(self.calls) >= self.target:
            self.reached.set()

    async def __call__(self, premature: bool, *args: Any) -> None:
        self.hit(premature, *args)

    async def wait(self, timeout: float = DEADLINE) -> None:
        await asyncio.wait_for(self.reached.wait(), timeout)


# -- at, cancel, counts ------------------------------------------------------

@pytest.mark.timeout(30)
def test_thousand_timers_at_zero_run_exactly_once(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler(max_pending=2000)
        seen: dict[int, int] = {}
        done = asyncio.Event()

        async def cb(premature: bool, i: int) -> None:
            assert premature is False
            seen[i] = seen.get(i, 0) + 1
            if len(seen) == 1000:
                done.set()

        for i in range(1000):
            s.at(0, cb, i)
        assert s.pending_count() == 1000
        await asyncio.wait_for(done.wait(), DEADLINE)
        assert await s.wait_idle(DEADLINE)
        assert seen == {i: 1 for i in range(1000)}
        assert s.pending_count() == 0 and s.running_count() == 0
    run(main)


@pytest.mark.timeout(30)
def test_cancel_pending_prevents_run(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        counter = Counter()
        sentinel = Counter()
        cancelled = [s.at(0, counter), s.at(0.01, counter), s.every(0.01, counter)]
        s.at(0.05, sentinel)
        assert [t.cancel() for t in cancelled] == [True, True, True]
        assert [t.cancel() for t in cancelled] == [False, False, False]
        assert not any(t.pending for t in cancelled)
        assert s.pending_count() == 1
        await sentinel.wait()           # fires after every cancelled one was due
        assert counter.calls == []
    run(main)


@pytest.mark.timeout(30)
def test_an_earlier_timer_moves_the_wakeup_forward(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        late, soon = Counter(), Counter()
        s.at(3600, late)
        s.at(0.01, soon)
        await soon.wait()
        assert late.calls == [] and s.pending_count() == 1
    run(main)


@pytest.mark.timeout(30)
def test_mass_cancel_compacts_and_the_rest_still_fire_once(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler(max_pending=5000)
        fired: list[int] = []
        done = asyncio.Event()

        def cb(premature: bool, i: int) -> None:
            fired.append(i)
            if len(fired) == 100:
                done.set()

        timers = [s.at(0.02 + i * 1e-5, cb, i) for i in range(3000)]
        for i, t in enumerate(timers):
            if i % 30:
                assert t.cancel()
        assert s.pending_count() == 100
        assert len(s._heap) < 3000                # dead entries were compacted away
        await asyncio.wait_for(done.wait(), DEADLINE)
        assert await s.wait_idle(DEADLINE)
        assert sorted(fired) == list(range(0, 3000, 30)) and s.pending_count() == 0
    run(main)


@pytest.mark.timeout(30)
def test_cancel_running_at_is_false_and_running_every_stops(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        started, gate = asyncio.Event(), asyncio.Event()
        runs = 0

        async def slow(premature: bool) -> None:
            nonlocal runs
            runs += 1
            started.set()
            await gate.wait()

        one = s.at(0, slow)
        await asyncio.wait_for(started.wait(), DEADLINE)
        assert s.running_count() == 1 and one.state == "running"
        assert one.cancel() is False
        gate.set()
        assert await s.wait_idle(DEADLINE)
        assert one.state == "done" and one.runs == 1

        started.clear()
        gate.clear()
        periodic = s.every(0.01, slow)
        await asyncio.wait_for(started.wait(), DEADLINE)
        assert periodic.cancel() is True
        gate.set()
        assert await s.wait_idle(DEADLINE)
        assert periodic.state == "cancelled" and s.pending_count() == 0
        assert runs == 2
    run(main)


@pytest.mark.timeout(30)
def test_arguments_are_validated(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        with pytest.raises(ValueError):
            s.every(0, Counter())
        with pytest.raises(ValueError):
            s.every(-1, Counter())
        with pytest.raises(ValueError):
            s.at(-0.1, Counter())
        with pytest.raises(ValueError):
            s.at(float("nan"), Counter())
        with pytest.raises(ValueError):
            s.at(float("inf"), Counter())
        with pytest.raises(TypeError):
            s.at("1", Counter())  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            s.at(1, "not callable")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            s.every(1, Counter(), once=1)  # type: ignore[arg-type]
        assert s.pending_count() == 0
    run(main)


@pytest.mark.timeout(30)
def test_plain_functions_and_args_are_accepted(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        counter = Counter(target=2)
        s.at(0, counter.hit, "a", 1)
        s.at(0, lambda premature: counter.hit(premature, "b"))
        await counter.wait()
        assert sorted(args for _, args in counter.calls) == [("a", 1), ("b",)]
    run(main)


@pytest.mark.timeout(30)
def test_module_functions_use_the_installed_or_a_lazy_scheduler(run: Any) -> None:
    async def main() -> None:
        assert timer.pending_count() == 0 and timer.running_count() == 0
        counter = Counter()
        t = timer.at(0, counter)                 # lazy scheduler on this loop
        lazy = timer.current()
        assert lazy is not None and (lazy.max_pending, lazy.max_running) == (1024, 256)
        assert timer.pending_count() == 1 and t.pending
        await counter.wait()

        mine = TimerScheduler(max_pending=1)
        timer.install(mine)
        assert timer.current() is mine
        timer.at(10, counter)
        with pytest.raises(TimerError, match="too many pending timers"):
            timer.every(10, counter)
        assert timer.pending_count() == 1
        assert "at" in repr(t) and "runs=1" in repr(t)
    run(main)


# -- every ----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_every_never_overlaps_and_skips_missed_ticks(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        loop = asyncio.get_running_loop()
        active = max_active = 0
        starts: list[float] = []
        three = asyncio.Event()

        async def slow(premature: bool) -> None:
            nonlocal active, max_active
            active += 1
            max_active = max(max_active, active)
            starts.append(loop.time())
            try:
                await asyncio.sleep(0.35)
            finally:
                active -= 1
            if len(starts) >= 3:
                three.set()

        origin = loop.time()
        t = s.every(0.1, slow)
        await asyncio.wait_for(three.wait(), DEADLINE)
        t.cancel()
        assert max_active == 1
        assert all(b - a >= 0.35 for a, b in zip(starts, starts[1:]))
        # Grid ticks at origin + k*0.1: 0.1, then 0.5 (0.2-0.4 missed), then 0.9
        # (a start may be up to one clock tick early and, on a busy machine, late).
        ticks = [int((x - origin + 0.002) // 0.1) for x in starts[:3]]
        assert ticks == [1, 5, 9], [x - origin for x in starts]
    run(main)


@pytest.mark.timeout(30)
def test_exception_is_logged_and_every_carries_on(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        s = TimerScheduler()
        calls = Counter(target=3)

        async def flaky(premature: bool) -> None:
            calls.hit(premature)
            if len(calls.calls) <= 2:
                raise RuntimeError(f"boom {len(calls.calls)}")

        def broken(premature: bool) -> None:
            raise KeyError("sync boom")

        t = s.every(0.01, flaky)
        s.at(0, broken)
        await calls.wait()
        t.cancel()
        assert await s.wait_idle(DEADLINE)

    with caplog.at_level(logging.ERROR, logger="pyresty.timer"):
        run(main)
    failures = [r for r in caplog.records if r.name == "pyresty.timer" and r.levelno == logging.ERROR]
    assert len(failures) == 3
    assert all(r.exc_info is not None for r in failures)
    assert {str(r.exc_info[1]) for r in failures if r.exc_info} == {"boom 1", "boom 2", "'sync boom'"}
    assert any("flaky" in r.getMessage() for r in failures)


# -- limits ------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_max_pending_raises(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler(max_pending=5)
        timers = [s.at(10, Counter()) for _ in range(4)] + [s.every(10, Counter())]
        with pytest.raises(TimerError, match="^too many pending timers$"):
            s.at(0, Counter())
        with pytest.raises(TimerError, match="^too many pending timers$"):
            s.every(1, Counter())
        assert s.pending_count() == 5
        assert timers[0].cancel()
        s.at(10, Counter())
    run(main)


@pytest.mark.timeout(30)
def test_max_running_queues_fifo_and_warns_once(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        s = TimerScheduler(max_running=2)
        gate = asyncio.Event()
        order: list[int] = []
        active = max_active = 0
        started = Counter(target=2)

        async def job(premature: bool, i: int) -> None:
            nonlocal active, max_active
            active += 1
            max_active = max(max_active, active)
            order.append(i)
            started.hit(premature)
            await gate.wait()
            active -= 1

        timers = [s.at(0, job, i) for i in range(10)]
        await started.wait()      # the burst warning was queued before the first run began
        assert s.running_count() == 2
        assert s.pending_count() == 8
        assert timers[5].state == "queued" and timers[5].pending
        assert timers[9].cancel() is True            # a queued timer can be cancelled
        gate.set()
        assert await s.wait_idle(DEADLINE)
        assert order == list(range(9)) and max_active == 2

    with caplog.at_level(logging.WARNING, logger="pyresty.timer"):
        run(main)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["max_running_timers (2) reached, 8 timers waiting"]


# -- exit ----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_begin_exit_fires_every_pending_timer_premature(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        counter = Counter(target=4)
        for delay in (0, 5, 3600):
            s.at(delay, counter, delay)
        s.every(3600, counter, "every")
        t0 = time.monotonic()
        s.begin_exit()
        assert identity.current.exiting is True
        await counter.wait(timeout=1.0)
        assert time.monotonic() - t0 < 0.5
        assert await s.wait_idle(DEADLINE)
        assert sorted(counter.calls, key=repr) == sorted(
            [(True, (0,)), (True, (5,)), (True, (3600,)), (True, ("every",))], key=repr)
        assert s.pending_count() == 0
        for make in (lambda: s.at(0, counter), lambda: s.at(1, counter),
                     lambda: s.every(1, counter), lambda: s.every(1, counter, once=True)):
            with pytest.raises(TimerError, match="^process exiting$"):
                make()
    run(main)


@pytest.mark.timeout(30)
def test_running_every_gets_one_premature_run_after_its_current_run(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        started, gate = asyncio.Event(), asyncio.Event()
        calls: list[bool] = []

        async def job(premature: bool) -> None:
            calls.append(premature)
            started.set()
            if not premature:
                await gate.wait()

        t = s.every(0.01, job)
        await asyncio.wait_for(started.wait(), DEADLINE)
        s.begin_exit()
        assert calls == [False]
        gate.set()
        assert await s.wait_idle(DEADLINE)
        assert calls == [False, True] and t.state == "done" and t.runs == 2
    run(main)


@pytest.mark.timeout(30)
def test_premature_runs_wait_for_slots_but_are_never_dropped(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler(max_running=2)
        active = max_active = 0
        calls: list[bool] = []

        async def job(premature: bool) -> None:
            nonlocal active, max_active
            active += 1
            max_active = max(max_active, active)
            await asyncio.sleep(0)
            calls.append(premature)
            active -= 1

        for _ in range(10):
            s.at(3600, job)
        s.begin_exit()
        assert s.running_count() == 2 and s.pending_count() == 8
        assert await s.wait_idle(DEADLINE)
        assert calls == [True] * 10 and max_active == 2
    run(main)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("nap", [0.02, 60.0])
def test_seed_000_self_rearming_zero_delay_timers_cannot_pin_the_process(
        run: Any, nap: float, caplog: pytest.LogCaptureFixture) -> None:
    """seeds/000: three delay-0 timers that sleep and re-arm kept a worker alive for weeks.

    The handler here is worse than the seed's: it ignores ``premature`` altogether.
    """
    async def main() -> None:
        s = TimerScheduler()
        timer.install(s)
        loop_runs = Counter(target=3 if nap > 1 else 9)   # 9: each has looped

        async def handler(premature: bool) -> None:
            loop_runs.hit(premature)
            await asyncio.sleep(nap)
            timer.at(0, handler)

        for _ in range(3):
            timer.at(0, handler)
        await loop_runs.wait()
        t0 = time.monotonic()
        s.begin_exit()
        if nap < 1:
            assert await s.wait_idle(2.0)       # re-arms refused, premature runs end
        else:
            assert not await s.wait_idle(0.05)  # asleep for a minute: step 4 cannot end them...
            assert await s.cancel_running(grace=1.0)   # ...step 5 does
        assert time.monotonic() - t0 < 1.5
        assert s.running_count() == 0 and s.pending_count() == 0
        with pytest.raises(TimerError, match="process exiting"):
            timer.at(0, handler)

    with caplog.at_level(logging.WARNING, logger="pyresty.timer"):
        run(main)
    if nap < 1:
        refused = [r for r in caplog.records if "process exiting" in r.getMessage()]
        assert len(refused) == 3


@pytest.mark.timeout(30)
def test_cancel_running_ends_stubborn_callbacks_and_drops_the_queue(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler(max_running=1)
        started = asyncio.Event()
        got_cancelled = []

        async def sleeper(premature: bool) -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                got_cancelled.append(premature)
                raise

        s.at(0, sleeper)
        s.at(0, sleeper)                 # queued behind the first
        await asyncio.wait_for(started.wait(), DEADLINE)
        s.begin_exit()
        t0 = time.monotonic()
        assert await s.cancel_running(grace=1.0)
        assert time.monotonic() - t0 < 1.0
        assert got_cancelled == [False]
        assert s.running_count() == 0 and s.pending_count() == 0
        assert await s.wait_idle(0.1)
    run(main)


@pytest.mark.timeout(30)
def test_wait_idle_times_out_while_a_callback_runs(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler()
        gate, started = asyncio.Event(), asyncio.Event()

        async def job(premature: bool) -> None:
            started.set()
            await gate.wait()

        assert await s.wait_idle(0.01)
        s.at(0, job)            # armed is not busy: wait_idle is about running callbacks
        assert await s.wait_idle(0.01)
        await asyncio.wait_for(started.wait(), DEADLINE)
        t0 = time.monotonic()
        assert not await s.wait_idle(0.05)
        assert 0.04 <= time.monotonic() - t0 < 1.0
        gate.set()
        assert await s.wait_idle(DEADLINE)
    run(main)


# -- once=True -------------------------------------------------------------------

ROLES = [
    # role,        worker_id, has_agent, runs here
    (Role.SINGLE, 0, False, True),
    (Role.AGENT, None, True, True),
    (Role.WORKER, 0, False, True),
    (Role.WORKER, 0, True, False),
    (Role.WORKER, 1, False, False),
    (Role.WORKER, 3, True, False),
    (Role.MASTER, None, False, False),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("role", "worker_id", "has_agent", "runs"), ROLES)
def test_once_true_runs_in_exactly_one_process(run: Any, role: Role, worker_id: int | None,
                                              has_agent: bool, runs: bool) -> None:
    identity.current.role = role
    identity.current.worker_id = worker_id

    async def main() -> None:
        s = TimerScheduler(has_agent=has_agent)
        counter = Counter(target=2)
        t = s.every(0.01, counter, once=True)
        if runs:
            await counter.wait()
            assert t.cancel() is True
        else:
            sentinel = Counter(target=3)
            s.every(0.01, sentinel)
            await sentinel.wait()           # several ticks would have passed
            assert counter.calls == []
            assert t.pending is False and t.state == "inert"
            assert t.cancel() is False
            assert s.pending_count() == 1   # only the sentinel
    run(main)


# -- once="dict": leases ---------------------------------------------------------

class FakeDict:
    """The five async shared-dict methods a lease uses, with a clock tests can move."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[Any, float]] = {}
        self.skew = 0.0

    def _now(self) -> float:
        return time.monotonic() + self.skew

    def _live(self, key: str) -> bool:
        item = self.data.get(key)
        if item is not None and item[1] <= self._now():
            del self.data[key]
            return False
        return item is not None

    async def get(self, key: str) -> Any:
        return self.data[key][0] if self._live(key) else None

    async def add(self, key: str, value: Any, ttl: float) -> bool:
        if self._live(key):
            return False
        self.data[key] = (value, self._now() + ttl)
        return True

    async def set(self, key: str, value: Any, ttl: float) -> bool:
        self.data[key] = (value, self._now() + ttl)
        return True

    async def expire(self, key: str, ttl: float) -> bool:
        if not self._live(key):
            return False
        self.data[key] = (self.data[key][0], self._now() + ttl)
        return True

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


class FlakyStore:
    """A view of a FakeDict that can lose its connection (a partitioned server)."""

    def __init__(self, target: FakeDict) -> None:
        self.target = target
        self.down = False
        self.failures = Counter(target=3)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        async def call(*args: Any) -> Any:
            if self.down:
                self.failures.hit(False)
                raise ConnectionError("store unreachable")
            return await method(*args)
        return call


async def lease_job(premature: bool, who: str, log: list[tuple[str, bool]], ticks: Counter) -> None:
    log.append((who, premature))
    ticks.hit(premature)


LEASE_KEY = f"pyresty:once:{lease_job.__module__}:lease_job"


@pytest.mark.timeout(30)
def test_once_lease_runs_one_holder_and_hands_over_on_exit(run: Any) -> None:
    async def main() -> None:
        shared = FakeDict()
        log: list[tuple[str, bool]] = []
        sched = {who: TimerScheduler(lease_store={"locks": shared}.__getitem__) for who in "ab"}
        ticks = {who: Counter(target=5) for who in "ab"}
        timers = {who: sched[who].every(0.01, lease_job, who, log, ticks[who], once="locks")
                  for who in "ab"}
        waits = [asyncio.ensure_future(ticks[who].wait()) for who in "ab"]
        done, others = await asyncio.wait(waits, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        assert done
        for waiter in others:
            waiter.cancel()
        holder = log[0][0]
        other = "b" if holder == "a" else "a"
        assert {who for who, _ in log} == {holder}        # one runner per tick, always the holder
        assert len(log) >= 5
        assert shared.data[LEASE_KEY][0] == timers[holder]._lease.token  # type: ignore[union-attr]

        sched[holder].begin_exit()
        assert await sched[holder].wait_idle(DEADLINE)
        assert log[-1] == (holder, True)                  # the holder heard about its exit
        taken = len(log)
        await ticks[other].wait()                          # ... and the other took over
        assert {who for who, _ in log[taken:]} == {other}
        assert all(not premature for _, premature in log[taken:])

        sched[other].begin_exit()
        assert await sched[other].wait_idle(DEADLINE)
        assert LEASE_KEY not in shared.data                # released on exit
    run(main)


@pytest.mark.timeout(30)
def test_once_lease_is_taken_over_when_the_holder_stops_renewing(
        run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        shared = FakeDict()
        partitioned = FlakyStore(shared)
        log: list[tuple[str, bool]] = []
        ticks_a, ticks_b = Counter(target=3), Counter(target=3)
        a = TimerScheduler(lease_store=lambda name: partitioned)
        ta = a.every(0.01, lease_job, "a", log, ticks_a, once="locks")
        await ticks_a.wait()                      # a holds the lease
        b = TimerScheduler(lease_store=lambda name: shared)
        b.every(0.01, lease_job, "b", log, ticks_b, once="locks")
        partitioned.down = True                   # a can neither renew nor run
        cut = len(log)
        await partitioned.failures.wait()         # a skipped ticks; b could not take the lease
        assert log[cut:] == []
        shared.skew += 1.5                        # the lease's TTL (1 s floor) passes
        await ticks_b.wait()
        assert all(who == "a" for who, _ in log[:cut])
        assert {who for who, _ in log[cut:]} == {"b"}
        ta.cancel()

    with caplog.at_level(logging.WARNING, logger="pyresty.timer"):
        run(main)
    assert any("unavailable" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_once_lease_names_an_unknown_dict_at_creation(run: Any) -> None:
    async def main() -> None:
        s = TimerScheduler(lease_store={"locks": FakeDict()}.__getitem__)
        with pytest.raises(KeyError):
            s.every(1, Counter(), once="lokcs")
        with pytest.raises(ValueError):
            s.every(1, Counter(), once="")
        assert s.pending_count() == 0
    run(main)


# -- the loop's thread only ------------------------------------------------------

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
        timer.install(s)
        try:
            for call in (lambda: timer.at(0, print), lambda: timer.every(1, print)):
                with pytest.raises(RuntimeError, match="event loop's thread"):
                    await asyncio.to_thread(call)
        finally:
            timer.install(None)
        assert s.pending_count() == 0

        # On the loop's own thread nothing changes.
        done = asyncio.Event()
        s.at(0, lambda premature: done.set())
        await asyncio.wait_for(done.wait(), 5)
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(asyncio.wait_for(body(), 20))
    finally:
        loop.close()
