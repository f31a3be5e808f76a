"""What a pyresty timer costs: scheduling, firing, cancelling, and one ``every`` tick.

    .venv/bin/python bench/timers.py [--n 100000] [--loop uvloop|asyncio|both]

Figures are microseconds per timer (wall clock, one process, one loop), next
to the bare event-loop cost of the same work (``call_soon`` + ``create_task``
per timer) so the scheduler's own overhead is visible.  ``every`` ticks are
measured as CPU time per tick, since a tick mostly waits.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Callable

import uvloop

from pyresty.runtime.timer import TimerScheduler

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


async def noop(premature: bool) -> None:
    pass


def per(seconds: float, count: int) -> float:
    return seconds / count * 1e6


async def bench_at_zero(n: int) -> dict[str, float]:
    s = TimerScheduler(max_pending=n, max_running=n)
    fired = 0
    done = asyncio.Event()

    async def count(premature: bool) -> None:
        nonlocal fired
        fired += 1
        if fired == n:
            done.set()

    t0 = time.perf_counter()
    for _ in range(n):
        s.at(0, count)
    t1 = time.perf_counter()
    await asyncio.wait_for(done.wait(), 120)
    assert await s.wait_idle(60)
    t2 = time.perf_counter()
    return {"schedule": per(t1 - t0, n), "fire": per(t2 - t1, n), "total": per(t2 - t0, n)}


async def bench_loop_baseline(n: int) -> dict[str, float]:
    """The same work with no scheduler: a loop callback that starts a task."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    done = asyncio.Event()

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not tasks:
            done.set()

    def start() -> None:
        task = loop.create_task(noop(False))
        tasks.add(task)
        task.add_done_callback(finished)

    t0 = time.perf_counter()
    for _ in range(n):
        loop.call_soon(start)
    t1 = time.perf_counter()
    await done.wait()
    t2 = time.perf_counter()
    return {"schedule": per(t1 - t0, n), "fire": per(t2 - t1, n), "total": per(t2 - t0, n)}


async def bench_at_one_cancel(n: int) -> dict[str, float]:
    s = TimerScheduler(max_pending=n)
    t0 = time.perf_counter()
    timers = [s.at(1, noop) for _ in range(n)]
    t1 = time.perf_counter()
    for timer in timers:
        timer.cancel()
    t2 = time.perf_counter()
    assert s.pending_count() == 0
    return {"schedule": per(t1 - t0, n), "cancel": per(t2 - t1, n)}


async def bench_every(count: int, interval: float, ticks: int) -> dict[str, float]:
    """CPU µs per tick with ``count`` every-timers sharing the loop."""
    s = TimerScheduler(max_pending=count, max_running=count)
    seen = 0
    done = asyncio.Event()
    target = count * ticks

    async def tick(premature: bool) -> None:
        nonlocal seen
        seen += 1
        if seen >= target:
            done.set()

    timers = [s.every(interval, tick) for _ in range(count)]
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.wait_for(done.wait(), 120)
    c1, w1 = time.process_time(), time.perf_counter()
    for timer in timers:
        timer.cancel()
    return {"cpu/tick": per(c1 - c0, seen), "wall": w1 - w0, "ticks": float(seen)}


def run(loop_name: str, main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(main())


def show(label: str, figures: dict[str, float]) -> None:
    parts = ", ".join(f"{key} {value:.2f} µs" for key, value in figures.items())
    print(f"  {label:<34} {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--loop", choices=[*LOOPS, "both"], default="both")
    args = parser.parse_args()
    n = args.n
    for loop_name in LOOPS if args.loop == "both" else [args.loop]:
        print(f"{loop_name}:")
        show(f"{n} x at(0), run", run(loop_name, lambda: bench_at_zero(n)))
        show(f"{n} x bare call_soon+create_task", run(loop_name, lambda: bench_loop_baseline(n)))
        show(f"{n} x at(1), then cancel", run(loop_name, lambda: bench_at_one_cancel(n)))
        one = run(loop_name, lambda: bench_every(1, 0.001, 500))
        print(f"  {'1 x every(0.001), 500 ticks':<34} cpu/tick {one['cpu/tick']:.2f} µs "
              f"(wall {one['wall']:.2f} s)")
        many = run(loop_name, lambda: bench_every(10_000, 0.05, 5))
        print(f"  {'10000 x every(0.05), 5 ticks':<34} cpu/tick {many['cpu/tick']:.2f} µs "
              f"(wall {many['wall']:.2f} s)")


if __name__ == "__main__":
    main()
