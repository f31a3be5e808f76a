"""``pyresty.timer``: one-shot and periodic background jobs that can never pin a process.

Rules
-----
1. A timer is *pending* from creation until its callback starts (armed and
   waiting for its deadline, or due and waiting for a running slot), *running* while its
   callback's task lives, then done.  An ``every`` timer goes back to pending
   after each run.
2. ``every`` never overlaps itself: the next run is armed only after the
   current callback has ended.  Ticks sit on the fixed grid
   ``created + k * interval``; a tick that passed while the callback was still
   running (or waiting for a slot) is skipped, never run late in a burst.
3. Creating a timer when ``max_pending`` timers are pending raises
   ``TimerError("too many pending timers")``.  An ``every`` timer re-arming
   itself is not a creation and is never refused (it already held its slot).
4. At most ``max_running`` callbacks run at once.  A timer that falls due
   beyond that waits in a FIFO queue (OpenResty drops it instead) and one
   warning is logged per burst.
5. An exception in a callback is logged with its traceback; ``every`` carries on.
6. ``begin_exit()`` (graceful shutdown step 3, SPEC §4): every pending timer,
   *whatever its delay, 0 included*, fires once promptly with
   ``premature=True``; an ``every`` timer gets exactly one premature run (after
   its current run if it is running) and stops; from then on ``at``/``every``
   raise ``TimerError("process exiting")``.  Premature runs respect the running
   limit but are never dropped.
7. ``cancel_running(grace)`` (step 5) drops what is still queued, cancels
   every callback task (``CancelledError`` at its await point) and waits at
   most ``grace`` for them.
   A scheduler registers these steps with the process's lifecycle registry
   when it is created: ``begin_exit`` (rule 6), ``wait_idle`` (step 4) and
   the cancel (rule 7, at the deadline).
8. ``every(..., once=True)`` runs only in the privileged agent, else worker 0,
   else a single process; elsewhere it returns an inert timer (never pending,
   never fires).  ``every(..., once="<dict>")`` runs a tick only while this
   process holds the lease ``pyresty:once:<module:qualname>`` in that shared
   dict (TTL ``max(3 * interval, 1 s)``, renewed each tick and during long
   runs); the holder gets the premature run at exit and then releases it.
9. ``at``/``every`` must be called on the event loop's thread; from any other
   thread (an executor job, a plain ``threading.Thread``) they raise
   ``RuntimeError``: the scheduler is not thread-safe, and a deadline set
   behind the loop's back does not wake it, so the timer would silently not fire.

Theory of operation
-------------------
Armed timers sit in one binary heap of ``(when, seq, timer)`` entries; a
single event-loop handle (``call_at``, or ``call_soon`` when something is due
now) wakes the scheduler at the earliest deadline, and it pops everything due.
No polling thread.  One loop handle per timer was the first design and is
simpler, but measured (``bench/timers.py``, uvloop, 100k ``at(1)``) it cost
6-11 µs per timer to schedule (a libuv timer and two more GC-tracked objects
each) against ~2 µs with the heap, and 100k pending timers are a real load.  Cancel is O(1): the entry
stays in the heap, dead, and is skipped when popped; the heap is compacted
when dead entries outnumber live ones.  Due-but-waiting timers wait in a deque,
running ones are kept as ``{task: timer}`` (a strong reference, so a task is
never garbage-collected mid-run).  All bookkeeping after a run happens in the
task's done-callback, which runs even for a task cancelled before it ever
started (its ``finally`` would not).

Why (``seeds/``)
----------------
* seed 000: three delay-0 timers that slept 60 s and re-armed themselves
  kept 212 old OpenResty workers "is shutting down" for five weeks, because
  ngx_lua refuses new timers in an exiting worker only when ``delay > 0``, so
  each delay-0 re-arm succeeded and never saw ``premature``.  Here a delay-0
  timer is pending like any other: it fires premature, and every re-arm raises.  Running callbacks get the rest of the shutdown timeout and are
  then cancelled, so nothing outlives ``worker_shutdown_timeout``.
* seed 001: premature timers that keep doing I/O delay exit; the cancel step
  bounds them.  The privileged agent's timers go premature like everyone else's.
* seed 002 asks how to run a job once rather than in every worker:
  ``every(..., once=True)`` (one process of this server) and
  ``every(..., once="<shared dict>")`` (a renewable lease, one process across
  every server sharing that dict).
"""
from __future__ import annotations

import asyncio
import collections
import enum
import fcntl
import hashlib
import heapq
import itertools
import logging
import math
import os
import secrets
import socket
import tempfile
from typing import Any, Awaitable, Callable

from pyresty.errors import TimerError
from pyresty.runtime import context, identity, lifecycle
from pyresty.runtime.identity import Role
from pyresty.runtime.throttle import LogThrottle

__all__ = ["Timer", "TimerError", "at", "every", "pending_count", "running_count"]

log = logging.getLogger("pyresty.timer")

# OpenResty's lua_max_pending_timers / lua_max_running_timers defaults.
DEFAULT_MAX_PENDING = 1024
DEFAULT_MAX_RUNNING = 256

# A lease outlives a few missed renewals so one slow tick does not hand the
# job to another process; 1 s floor so sub-second jobs do not hammer the store.
LEASE_INTERVALS = 3
LEASE_MIN_TTL = 1.0

# uvloop's clock and timers work in whole milliseconds (libuv), so a wake-up
# can come a fraction of a tick before the deadline it was set for: treat what
# is due within one tick as due now rather than re-arming for a sub-tick rest
# (asyncio's own loop does the same with its clock resolution).
CLOCK_SLACK = 0.001
# Compact the heap once this many dead (cancelled) entries outnumber live ones.
COMPACT_MIN_DEAD = 256
_INF = math.inf

Callback = Callable[..., Any]
LeaseStore = Callable[[str], Any]


class State(enum.Enum):
    ARMED = "armed"          # in the heap, waiting for its deadline
    QUEUED = "queued"        # due, waiting for a running slot
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    INERT = "inert"          # once=True in a process that must not run it


def _name_of(callback: Callback) -> str:
    module = getattr(callback, "__module__", None)
    qualname = getattr(callback, "__qualname__", None)
    if qualname is None:
        return repr(callback)
    return f"{module}:{qualname}" if module else qualname


class Timer:
    """A scheduled callback; returned by ``at`` and ``every``."""

    __slots__ = ("callback", "args", "interval", "runs", "_state", "_origin", "_tick",
                 "_premature", "_lease", "_scheduler")

    def __init__(self, scheduler: TimerScheduler | None, callback: Callback, args: tuple[Any, ...],
                 interval: float | None) -> None:
        self.callback = callback
        self.args = args
        self.interval = interval
        self.runs = 0
        self._state = State.INERT
        self._origin = 0.0
        self._tick = 0
        self._premature = False
        self._lease: Lease | None = None
        self._scheduler = scheduler

    @property
    def name(self) -> str:
        """``module:qualname`` of the callback (in logs and the lease key)."""
        return _name_of(self.callback)

    @property
    def pending(self) -> bool:
        """True while the timer waits to run (armed, or due and queued)."""
        return self._state is State.ARMED or self._state is State.QUEUED

    @property
    def state(self) -> str:
        """``armed | queued | running | done | cancelled | inert``."""
        return self._state.value

    def cancel(self) -> bool:
        """Stop the timer. Never raises.

        Returns True if a run that was still to come will now not happen: a
        pending timer, or an ``every`` timer (running or not) whose future runs
        are now off.  False for a timer already done, cancelled, inert, or a
        one-shot timer whose callback is already running.
        """
        if self._scheduler is None:
            return False
        return self._scheduler._cancel(self)

    def __repr__(self) -> str:
        kind = f"every {self.interval:g}s" if self.interval is not None else "at"
        lease = f" once={self._lease.key!r}" if self._lease is not None else ""
        return f"<Timer {kind} {self.name} {self._state.value} runs={self.runs}{lease}>"


class Lease:
    """A renewable lease in a shared dict: one holder runs an ``every(once=...)`` job.

    The key holds the holder's token with a TTL.  The holder renews it each
    tick (and while a long run lasts); anyone else may only ``add`` it, which
    fails while it exists.  A holder that dies stops renewing, so another
    process takes over within one TTL.  Release (get, then delete) is not
    atomic: the shared-dict API has no compare-and-delete, and the window is
    one round trip on a lease that was ours an instant before.
    """

    __slots__ = ("store", "key", "ttl", "token")

    def __init__(self, store: Any, key: str, ttl: float) -> None:
        self.store = store
        self.key = key
        self.ttl = ttl
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"

    async def held(self) -> bool:
        return bool(await self.store.get(self.key) == self.token)

    async def acquire(self) -> bool:
        """Renew the lease if it is ours, else try to take it. True if we hold it."""
        if await self.held():
            # expire() of a key that vanished since get() reports False: take it anew.
            if await self.store.expire(self.key, self.ttl) is not False:
                return True
        return bool(await self.store.add(self.key, self.token, self.ttl))

    async def release(self) -> None:
        if await self.held():
            await self.store.delete(self.key)


class LockLease:
    """The lease of a ``once=True`` job: an flock on a file of this server.

    Only the designated process (agent, else worker 0) ever asks for it, but
    during a reload two of them exist (the old generation's, finishing, and
    the new one's): the lock keeps the job from running in both at once. The
    kernel drops the lock when its holder exits, however it exits.
    """

    __slots__ = ("key", "ttl", "path", "fd")

    def __init__(self, key: str, ttl: float) -> None:
        self.key = key
        self.ttl = ttl
        folder = os.path.join(tempfile.gettempdir(), "pyresty-" + hashlib.sha1(
            identity.current.prefix.encode()).hexdigest()[:12])
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.path = os.path.join(folder, hashlib.sha1(key.encode()).hexdigest()[:16] + ".lock")
        self.fd: int | None = None

    async def held(self) -> bool:
        return self.fd is not None

    async def acquire(self) -> bool:
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    async def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing drops the flock
            self.fd = None


def _default_lease_store(name: str) -> Any:
    """``pyresty.shared[name]``, imported on first use (the dicts open after fork)."""
    from pyresty.runtime.shared import shared

    return shared[name]


def _check_delay(value: float, what: str, positive: bool) -> float:
    kind = value.__class__
    if (kind is float or kind is int) and (0 < value < _INF or (value == 0 and not positive)):
        return value                                   # the common case, cheaply
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{what} must be a finite number of seconds {bound}, got {value!r}")
    return value


class TimerScheduler:
    """The timers of one process, on one event loop (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *,
                 max_pending: int = DEFAULT_MAX_PENDING, max_running: int = DEFAULT_MAX_RUNNING,
                 has_agent: bool = False, lease_store: LeaseStore = _default_lease_store) -> None:
        if max_pending < 1 or max_running < 1:
            raise ValueError("max_pending and max_running must be >= 1")
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.max_pending = max_pending
        self.max_running = max_running
        self.has_agent = has_agent
        self.lease_store = lease_store
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._armed = 0                  # live entries in the heap
        self._dead = 0                   # cancelled entries still in the heap
        self._wakeup: asyncio.Handle | None = None
        self._wakeup_at = _INF
        self._queue: collections.deque[Timer] = collections.deque()
        self._tasks: dict[asyncio.Task[Any], Timer] = {}
        self._chores: set[asyncio.Task[Any]] = set()   # lease releases
        self._idle = asyncio.Event()
        self._idle.set()
        self._exiting = False
        self._closed = False
        self._burst_peak = 0
        self._burst_warned = False
        self.refused = 0                 # creations refused by max_pending (rule 3)
        self.waited = 0                  # due timers that waited for a running slot (rule 4)
        self._refusals = LogThrottle(log, logging.WARNING)
        lifecycle.register("timers", lifecycle.Layer.BACKGROUND, begin_exit=self.begin_exit,
                           wait=self.wait_idle, deadline=self._at_deadline)

    # -- counts -----------------------------------------------------------
    def pending_count(self) -> int:
        return self._armed + len(self._queue)

    def running_count(self) -> int:
        return len(self._tasks)

    def counters(self) -> dict[str, int]:
        """What the limits did (for ``/metrics``): refused creations, waits for a slot."""
        return {"timers_refused": self.refused, "timers_waited": self.waited}

    @property
    def exiting(self) -> bool:
        return self._exiting

    # -- creation ---------------------------------------------------------
    def at(self, delay: float, callback: Callback, *args: Any) -> Timer:
        """Run ``callback(premature, *args)`` once, ``delay`` seconds from now.

        Raises TypeError/ValueError for a bad delay or callback, and
        TimerError("process exiting") or TimerError("too many pending timers").
        """
        delay = _check_delay(delay, "delay", positive=False)
        self._check_create(callback)
        timer = Timer(self, callback, args, None)
        timer._origin = now = self.loop.time()
        self._arm(timer, now + delay)
        return timer

    def every(self, interval: float, callback: Callback, *args: Any,
              once: bool | str = False) -> Timer:
        """Run ``callback(premature, *args)`` every ``interval`` seconds, never overlapping.

        ``once=True`` runs it in one process of the server only; ``once="name"``
        holds a lease in shared dict ``name`` (KeyError if there is none).
        Raises like ``at``; ValueError when interval is not > 0.
        """
        interval = _check_delay(interval, "interval", positive=True)
        self._check_once(once)
        self._check_create(callback)
        if once is True and not self._runs_once_jobs():
            return Timer(None, callback, args, interval)      # never fires, never pending
        timer = Timer(self, callback, args, interval)
        if once is True:
            timer._lease = LockLease(f"pyresty:once:{timer.name}", interval)  # type: ignore[assignment]
        elif isinstance(once, str):
            key = f"pyresty:once:{timer.name}"
            timer._lease = Lease(self.lease_store(once), key, max(LEASE_INTERVALS * interval, LEASE_MIN_TTL))
        timer._origin = self.loop.time()
        timer._tick = 1
        self._arm(timer, timer._origin + interval)
        return timer

    def _check_create(self, callback: Callback) -> None:
        if not callable(callback):
            raise TypeError(f"timer callback must be callable, not {type(callback).__name__}")
        if asyncio._get_running_loop() is not self.loop:
            # The heap and loop.call_at are not thread-safe: from another thread
            # the push races the loop, and the loop, asleep in select/epoll, never
            # learns of the new deadline, so the timer silently does not fire.
            raise RuntimeError("pyresty.timer.at/every must be called from the event loop's "
                               "thread (from another thread, use loop.call_soon_threadsafe)")
        if self._exiting:
            raise TimerError("process exiting")
        if self._armed + len(self._queue) >= self.max_pending:
            # the caller gets the error, and may swallow it: the log and the count stay
            self.refused += 1
            self._refusals.report("max_pending_timers (%d) reached: a timer of %s refused",
                                  self.max_pending, _name_of(callback))
            raise TimerError("too many pending timers")

    @staticmethod
    def _check_once(once: bool | str) -> None:
        if not isinstance(once, (bool, str)):
            raise TypeError(f"once must be a bool or a shared dict name, not {type(once).__name__}")
        if once == "":
            raise ValueError("once must name a shared dict")

    def _runs_once_jobs(self) -> bool:
        """Whether ``once=True`` jobs run here: the agent, else worker 0, or a single process."""
        me = identity.current
        if me.role is Role.AGENT or me.role is Role.SINGLE:
            return True
        return me.role is Role.WORKER and not self.has_agent and me.worker_id == 0

    # -- the loop side ----------------------------------------------------
    def _arm(self, timer: Timer, when: float) -> None:
        timer._state = State.ARMED
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        self._armed += 1
        if when < self._wakeup_at:
            self._set_wakeup(when)

    def _set_wakeup(self, when: float) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup_at = when
        if when <= self.loop.time():
            self._wakeup = self.loop.call_soon(self._run_due)
        else:
            self._wakeup = self.loop.call_at(when, self._run_due)

    def _run_due(self) -> None:
        """The wake-up: dispatch every armed timer that is due, then sleep till the next."""
        self._wakeup = None
        self._wakeup_at = _INF
        heap = self._heap
        horizon = self.loop.time() + CLOCK_SLACK
        while heap and heap[0][0] <= horizon:
            timer = heapq.heappop(heap)[2]
            if timer._state is not State.ARMED:
                self._dead -= 1
                continue
            self._armed -= 1
            self._dispatch(timer, False)
        self._skip_dead_top()
        if heap:
            self._set_wakeup(heap[0][0])

    def _skip_dead_top(self) -> None:
        heap = self._heap
        while heap and heap[0][2]._state is not State.ARMED:
            heapq.heappop(heap)
            self._dead -= 1

    def _bury(self) -> None:
        """A cancelled entry stays in the heap; compact when the dead outnumber the living."""
        self._armed -= 1
        self._dead += 1
        if self._dead > COMPACT_MIN_DEAD and self._dead > self._armed:
            self._heap = [entry for entry in self._heap if entry[2]._state is State.ARMED]
            heapq.heapify(self._heap)
            self._dead = 0

    def _dispatch(self, timer: Timer, premature: bool) -> None:
        """Start the timer's callback, or queue it behind the others (FIFO)."""
        timer._premature = premature
        if self._queue or len(self._tasks) >= self.max_running:
            self._enqueue(timer)
        else:
            self._start(timer)

    def _enqueue(self, timer: Timer) -> None:
        timer._state = State.QUEUED
        self._queue.append(timer)
        self.waited += 1
        self._idle.clear()
        self._burst_peak = max(self._burst_peak, len(self._queue))
        if not self._burst_warned:
            self._burst_warned = True
            # Timers due together fire in one loop iteration: count them all first.
            self.loop.call_soon(self._warn_burst)

    def _warn_burst(self) -> None:
        log.warning("max_running_timers (%d) reached, %d timers waiting",
                    self.max_running, max(self._burst_peak, len(self._queue)))

    def _start(self, timer: Timer) -> None:
        timer._state = State.RUNNING
        if timer._lease is not None:
            coro = self._run_leased(timer, timer._premature)
        else:
            coro = _invoke(timer, timer._premature)
        # each run in a Task and a fresh copy of the base Context (runtime/context.py)
        task = context.spawn(self.loop, coro)
        self._tasks[task] = timer
        task.add_done_callback(self._on_done)
        self._idle.clear()

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        timer = self._tasks.pop(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                _log_failure(timer, exc)
        self._after_run(timer)
        self._drain_queue()
        self._check_idle()

    def _after_run(self, timer: Timer) -> None:
        if timer._state is State.CANCELLED:
            self._release_lease(timer)
            return
        if timer.interval is None or timer._premature or self._closed:
            timer._state = State.DONE
        elif self._exiting:
            self._dispatch(timer, True)       # its one premature run
        else:
            self._rearm(timer)

    def _rearm(self, timer: Timer) -> None:
        """Arm the next grid tick after now; missed ticks are skipped (rule 2)."""
        interval = timer.interval
        assert interval is not None
        passed = int((self.loop.time() - timer._origin) // interval)
        timer._tick = max(timer._tick + 1, passed + 1)
        self._arm(timer, timer._origin + timer._tick * interval)

    def _drain_queue(self) -> None:
        queue = self._queue
        while queue and len(self._tasks) < self.max_running and not self._closed:
            self._start(queue.popleft())
        if not queue:
            self._burst_peak = 0
            self._burst_warned = False

    def _check_idle(self) -> None:
        if not self._tasks and not self._queue and not self._chores:
            self._idle.set()

    # -- leases -----------------------------------------------------------
    async def _run_leased(self, timer: Timer, premature: bool) -> None:
        lease = timer._lease
        assert lease is not None
        if premature:
            # Only the holder hears about the exit, then hands the job over at once.
            if await _lease_op(timer, lease.held()):
                try:
                    await _invoke(timer, True)
                finally:
                    await _lease_op(timer, lease.release())
            return
        if not await _lease_op(timer, lease.acquire()):
            return
        keeper = self.loop.create_task(_keep_lease(timer, lease))
        try:
            await _invoke(timer, False)
        finally:
            keeper.cancel()

    def _release_lease(self, timer: Timer) -> None:
        if timer._lease is None:
            return
        chore = self.loop.create_task(_lease_op(timer, timer._lease.release()))
        self._chores.add(chore)
        self._idle.clear()
        chore.add_done_callback(self._on_chore_done)

    def _on_chore_done(self, chore: asyncio.Task[Any]) -> None:
        self._chores.discard(chore)
        self._check_idle()

    # -- cancel and exit ----------------------------------------------------
    def _cancel(self, timer: Timer) -> bool:
        state = timer._state
        if state is State.ARMED:
            timer._state = State.CANCELLED
            self._bury()
        elif state is State.QUEUED:
            self._queue.remove(timer)
            self._drain_queue()
            self._check_idle()
        elif state is State.RUNNING and timer.interval is not None:
            timer._state = State.CANCELLED    # _after_run releases the lease
            return True
        else:
            return False
        timer._state = State.CANCELLED
        self._release_lease(timer)
        return True

    def begin_exit(self) -> None:
        """Graceful shutdown step 3: fire every pending timer now, premature; refuse new ones.

        Idempotent.  Also sets ``identity.current.exiting``.
        """
        identity.current.exiting = True
        if self._exiting:
            return
        self._exiting = True
        for timer in self._queue:
            timer._premature = True
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup, self._wakeup_at = None, _INF
        armed = [entry[2] for entry in sorted(self._heap) if entry[2]._state is State.ARMED]
        self._heap, self._armed, self._dead = [], 0, 0
        for timer in armed:
            self._dispatch(timer, True)
        if armed:
            log.info("process exiting: %d pending timers fired premature", len(armed))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no callback runs or waits for a slot: True, or False after ``timeout``.

        Armed timers do not count (after ``begin_exit`` there are none).
        """
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def cancel_running(self, grace: float = 1.0) -> bool:
        """Graceful shutdown step 5: drop queued runs, cancel running callbacks.

        Begins the exit first if ``begin_exit`` was not called.  Waits at most
        ``grace`` seconds; True if every callback task has ended.  A lease held
        by a dropped or cancelled run is not released here: it lapses within
        its TTL.
        """
        return await self._at_deadline(grace)

    def _at_deadline(self, grace: float) -> Awaitable[bool]:
        """The lifecycle deadline step: cancel now, return the bounded wait for the end."""
        self.begin_exit()
        self._closed = True
        if self._queue:
            log.warning("%d timers still waiting for a running slot dropped at shutdown timeout",
                        len(self._queue))
            for timer in self._queue:
                timer._state = State.DONE
            self._queue.clear()
        me = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not me]
        for task in tasks:
            task.cancel()
        return self._cancelled_end(tasks, grace)

    async def _cancelled_end(self, tasks: list[asyncio.Task[Any]], grace: float) -> bool:
        if tasks:
            _, alive = await asyncio.wait(tasks, timeout=grace)
            if alive:
                log.warning("%d timer callbacks still running %.3gs after cancel", len(alive), grace)
                return False
        self._check_idle()
        return True


async def _invoke(timer: Timer, premature: bool) -> None:
    timer.runs += 1
    await context.invoke(timer.callback, premature, *timer.args)   # no SystemExit escapes


async def _lease_op(timer: Timer, op: Awaitable[Any]) -> bool:
    """Run a lease operation; a store failure is logged and means "not held"."""
    try:
        return bool(await op)
    except Exception as exc:  # noqa: BLE001 - any store error skips this tick
        log.warning("timer %s: lease %r unavailable: %r", timer.name,
                    timer._lease.key if timer._lease else None, exc)
        return False


async def _keep_lease(timer: Timer, lease: Lease) -> None:
    """Renew the lease while a run lasts longer than a third of its TTL."""
    while True:
        await asyncio.sleep(lease.ttl / LEASE_INTERVALS)
        if not await _lease_op(timer, lease.acquire()):
            log.warning("timer %s lost lease %r while running", timer.name, lease.key)
            return


def _log_failure(timer: Timer, exc: BaseException) -> None:
    if isinstance(exc, TimerError) and str(exc) == "process exiting":
        # The seed-000 pattern (a callback re-arming itself) meeting the exit: expected.
        log.warning("timer %s could not create a timer: process exiting", timer.name)
        return
    log.error("timer %s failed", timer.name, exc_info=(type(exc), exc, exc.__traceback__))


# -- the process's scheduler --------------------------------------------------
_installed: TimerScheduler | None = None
_lazy: TimerScheduler | None = None


def install(scheduler: TimerScheduler | None) -> None:
    """Make ``scheduler`` this process's (the process model calls it after fork); None removes it."""
    global _installed, _lazy
    _installed = scheduler
    _lazy = None


def current() -> TimerScheduler | None:
    """The installed scheduler, else the one made lazily on the running loop, else None."""
    if _installed is not None:
        return _installed
    if _lazy is not None and not _lazy.loop.is_closed():
        return _lazy
    return None


def _scheduler() -> TimerScheduler:
    global _lazy
    if _installed is not None:
        return _installed
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("pyresty.timer needs a running event loop") from None
    if _lazy is None or _lazy.loop is not loop:
        _lazy = TimerScheduler(loop)
    return _lazy


def at(delay: float, callback: Callback, *args: Any) -> Timer:
    """Run ``callback(premature, *args)`` once after ``delay`` seconds (>= 0).

    Raises ValueError/TypeError on bad arguments; TimerError("process exiting")
    once the process exits; TimerError("too many pending timers") past
    ``max_pending_timers``.
    """
    return _scheduler().at(delay, callback, *args)


def every(interval: float, callback: Callback, *args: Any, once: bool | str = False) -> Timer:
    """Run ``callback(premature, *args)`` every ``interval`` seconds (> 0), never overlapping.

    ``once=True``: only in one process of the server (the privileged agent if
    there is one, else worker 0).  ``once="name"``: only where the lease in
    shared dict ``name`` is held.  Raises like ``at``.
    """
    return _scheduler().every(interval, callback, *args, once=once)


def pending_count() -> int:
    """Timers waiting to run in this process."""
    scheduler = current()
    return scheduler.pending_count() if scheduler is not None else 0


def running_count() -> int:
    """Timer callbacks running in this process."""
    scheduler = current()
    return scheduler.running_count() if scheduler is not None else 0
