"""The lifecycle registry: what each subsystem of a process does when it shuts down.

Rules
-----
1. A subsystem that holds per-process resources (listeners and connections,
   timers, child processes, stores, log files; next, cosocket pools,
   WebSockets and health checkers) registers its shutdown steps when it is
   created or first used, with ``register(name, layer, ...)``. Shutdown walks
   the registry; it never looks modules up to find out what exists.
2. A walk runs the stages of SPEC §4 in this order, each at most once:

   ``begin_exit()``  steps 1-3: stop accepting, stop keepalive, close idle
                     pooled sockets, fire pending timers premature, refuse new ones;
   ``wait(t)``       step 4: what may still finish gets the rest of
                     ``worker_shutdown_timeout`` (``t`` is what is left);
   ``deadline(g)``   step 5: close frames, cancel, kill children, abort
                     connections (``g`` is what is left of ``cancel_grace``);
   (the worker runs the ``exit_worker`` hook here: step 6)
   ``close()``       release what is left (files, stores, reaping) before exit.

   A fast shutdown (TERM/INT) is the same walk without the wait.
3. Order. Every stage visits the subsystems in one order: by ``Layer``
   (outermost first: what clients reach first, stores last), then by
   registration order within a layer. Registering a name again replaces its
   steps and keeps its place, so "register at first use" may run on every use.
4. ``begin_exit`` and ``close`` steps are synchronous and must not wait.
   ``wait`` steps are coroutines; they run together, and the stage ends at the
   deadline whatever they do (the ones still running are cancelled).
   ``deadline`` steps run one after the other; the synchronous part of each
   (the cancel, the kill, the abort) always runs, what it returns to await
   gets at most what is left of ``cancel_grace``, counted from the stage's start.
5. A step that raises, or whose awaitable outlives its bound, is logged with
   the subsystem's name; the walk goes on with the next one.
6. A subsystem that registers after ``begin_exit`` ran (a pool first used by a
   premature timer) gets its ``begin_exit`` step at once. One registered after
   the deadline stage only gets ``close``.
7. One registry per process: the worker (or single process) creates it and
   ``install``s it before anything registers; a forked child starts with none.
   With none installed (a library used outside a pyresty process, a unit test)
   ``register`` does nothing and returns None.

Every bound comes from one table, ``SHUTDOWN`` (``Deadlines``): the master's
SIGKILL margin, the worker's own end, the cancel grace, the exit hook limits,
the idle linger. The worker and the master spell no shutdown duration of their own.

Registering (the HTTP server, in its constructor; a cosocket pool will do the
same at its first use, a WebSocket at its upgrade)::

    from pyresty.runtime import lifecycle

    lifecycle.register(
        "upstream pools", lifecycle.Layer.UPSTREAM,
        begin_exit=pools.close_idle,           # SPEC §4 step 2: idle sockets go at once
        deadline=lambda grace: pools.abort_all(),
        close=pools.close)

    lifecycle.register(
        "websockets", lifecycle.Layer.UPGRADED,
        wait=sockets.wait_closed,              # (timeout) -> awaitable
        deadline=sockets.send_going_away)      # (grace) -> awaitable: close frame 1001

Theory of operation
-------------------
The registry is a dict of ``Subsystem`` records by name, plus a counter that
gives each new name its sequence number; a walk sorts the records by
``(layer, sequence)`` once per stage. Waits are bounded with
``asyncio.wait(timeout=...)`` on tasks, never ``wait_for``: with no time left
``wait_for`` would cancel a coroutine before its first line.
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SHUTDOWN", "Deadlines", "Layer", "Registry", "Stage", "Subsystem",
           "current", "install", "register"]

log = logging.getLogger("pyresty.process")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Every shutdown deadline and budget, in seconds (the one table of them).

    A worker asked to stop at ``t0`` ends its own shutdown by
    ``t0 + worker_shutdown_timeout + worker_slack``; the master SIGKILLs it at
    ``+ kill_margin``, so the process is gone by ``+ gone_by`` whatever user
    code does (SPEC §4; OpenResty leaves a stuck worker forever, seed 000).
    Raises ValueError for a table that breaks that chain.
    """

    linger: float = 0.5
    """Step 2: how long an idle keepalive connection may still bring a request
    (a client that just sent one gets an answer, not a reset). Five sweep
    ticks: a client between two requests on a loaded machine (a thread that
    waited 100-200 ms for a CPU) still finds its connection open and gets a
    ``Connection: close`` answer; nginx closes idle connections at once."""
    cancel_grace: float = 0.2
    """Step 5: how long cancelled timer callbacks and every other deadline step
    may take to end, all together."""
    exit_hook: float = 5.0
    """Step 6: the longest ``exit_worker`` may run (SPEC §4)."""
    fast_exit_hook: float = 1.0
    """TERM/INT: the longest ``exit_worker`` may run in a fast shutdown."""
    worker_slack: float = 0.8
    """The worker's own end, past ``worker_shutdown_timeout``: the deadline
    stage and the exit hook fit in it, and ``close`` follows."""
    reap_children: float = 0.05
    """Close: how long to wait for killed children to be reaped (they got
    SIGKILL at the deadline, so they are normally gone already)."""
    kill_margin: float = 0.9
    """Master: SIGKILL a worker this long past its ``worker_shutdown_timeout``."""
    gone_by: float = 1.0
    """SPEC §4: a worker is gone ``worker_shutdown_timeout`` + this after QUIT."""
    fast_kill_after: float = 3.0
    """Master: after TERM/INT, SIGKILL what is still alive this long after."""

    def __post_init__(self) -> None:
        if not (0 < self.cancel_grace < self.worker_slack
                and self.worker_slack + self.reap_children < self.kill_margin < self.gone_by):
            raise ValueError("shutdown deadlines must satisfy cancel_grace < worker_slack and "
                             "worker_slack + reap_children < kill_margin < gone_by")
        if self.fast_exit_hook + self.cancel_grace >= self.fast_kill_after:
            raise ValueError("a fast shutdown (cancel_grace + fast_exit_hook) must end "
                             "before fast_kill_after")


SHUTDOWN = Deadlines()


class Layer(enum.IntEnum):
    """Where a subsystem stands in every stage of the walk: outermost first."""

    UPGRADED = 10     # WebSockets: their close frames go out before the server aborts sockets
    SERVER = 20       # listeners, client connections, requests (steps 1 and 2 come first)
    UPSTREAM = 30     # cosocket and upstream keepalive pools
    BACKGROUND = 40   # timers, health checkers (step 3, after the server's steps 1-2)
    CHILDREN = 50     # spawned processes: killed once the tasks waiting on them are cancelled
    STORES = 60       # shared dicts, log files: closed after everything that writes to them


class Stage(enum.Enum):
    BEGIN_EXIT = "begin exit"
    WAIT = "wait"
    DEADLINE = "deadline"
    CLOSE = "close"


SyncStep = Callable[[], object]
WaitStep = Callable[[float], Awaitable[object]]
DeadlineStep = Callable[[float], object]    # may return an awaitable


@dataclass(frozen=True, slots=True)
class Subsystem:
    """One registration: a name, its place, and what it does at each stage."""

    name: str
    layer: Layer
    sequence: int
    begin_exit: SyncStep | None = None
    wait: WaitStep | None = None
    deadline: DeadlineStep | None = None
    close: SyncStep | None = None


class Registry:
    """The subsystems of one process and the walk over them (rules above)."""

    def __init__(self, deadlines: Deadlines = SHUTDOWN) -> None:
        self.deadlines = deadlines
        self._subsystems: dict[str, Subsystem] = {}
        self._sequence = itertools.count()
        self._done: set[Stage] = set()

    # -- registering --------------------------------------------------------
    def register(self, name: str, layer: Layer, *, begin_exit: SyncStep | None = None,
                 wait: WaitStep | None = None, deadline: DeadlineStep | None = None,
                 close: SyncStep | None = None) -> Subsystem:
        """Add (or replace, keeping its place) the steps of subsystem ``name``."""
        old = self._subsystems.get(name)
        sub = Subsystem(name, layer, old.sequence if old is not None else next(self._sequence),
                        begin_exit, wait, deadline, close)
        self._subsystems[name] = sub
        if old is None and Stage.BEGIN_EXIT in self._done and begin_exit is not None:
            self._run_sync(sub, Stage.BEGIN_EXIT, begin_exit)     # rule 6
        return sub

    def unregister(self, name: str) -> bool:
        """Forget ``name`` (a subsystem closed before the process exits); True if it was known."""
        return self._subsystems.pop(name, None) is not None

    def subsystems(self) -> list[Subsystem]:
        """Every registration, in walk order."""
        return sorted(self._subsystems.values(), key=lambda s: (s.layer, s.sequence))

    def names(self) -> list[str]:
        return [s.name for s in self.subsystems()]

    # -- the walk -----------------------------------------------------------
    async def shutdown(self, timeout: float | None) -> None:
        """Stages begin exit, wait (skipped when ``timeout`` is None: a fast
        shutdown) and deadline. The caller runs its exit hook, then ``close()``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or 0.0)
        self.begin_exit()
        if timeout is not None:
            await self.wait(deadline)
        await self.deadline()

    def begin_exit(self) -> None:
        """Stage 1 (SPEC §4 steps 1-3)."""
        if self._begin(Stage.BEGIN_EXIT):
            for sub in self.subsystems():
                if sub.begin_exit is not None:
                    self._run_sync(sub, Stage.BEGIN_EXIT, sub.begin_exit)

    async def wait(self, deadline: float) -> bool:
        """Stage 2 (step 4): every wait step, together, until ``deadline`` (loop
        time). True if all of them ended before it."""
        if not self._begin(Stage.WAIT):
            return True
        loop = asyncio.get_running_loop()
        left = max(0.0, deadline - loop.time())
        tasks: dict[asyncio.Future[Any], Subsystem] = {}
        for sub in self.subsystems():
            if sub.wait is not None:
                try:
                    tasks[asyncio.ensure_future(sub.wait(left))] = sub
                except Exception:
                    self._failed(sub, Stage.WAIT)
        if not tasks:
            return True
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            _abandon(task)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                self._failed(tasks[task], Stage.WAIT, task.exception())
        return not pending

    async def deadline(self) -> None:
        """Stage 3 (step 5): every deadline step in order, within ``cancel_grace``."""
        if not self._begin(Stage.DEADLINE):
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadlines.cancel_grace
        for sub in self.subsystems():
            if sub.deadline is None:
                continue
            left = max(0.0, end - loop.time())
            try:
                result = sub.deadline(left)
            except Exception:
                self._failed(sub, Stage.DEADLINE)
                continue
            if isinstance(result, Awaitable):
                await self._bounded(sub, result, end)
        await asyncio.sleep(0)  # one loop turn: aborted transports and cancelled tasks finish

    def close(self) -> None:
        """Stage 4, after the exit hook: release what is left."""
        if self._begin(Stage.CLOSE):
            for sub in self.subsystems():
                if sub.close is not None:
                    self._run_sync(sub, Stage.CLOSE, sub.close)

    def ran(self, stage: Stage) -> bool:
        """Whether ``stage`` has run (or is running) in this registry."""
        return stage in self._done

    # -- helpers ------------------------------------------------------------
    def _begin(self, stage: Stage) -> bool:
        if stage in self._done:
            return False
        self._done.add(stage)
        return True

    def _run_sync(self, sub: Subsystem, stage: Stage, step: SyncStep) -> None:
        try:
            result = step()
        except Exception:
            self._failed(sub, stage)
            return
        if isinstance(result, Awaitable):   # a coroutine here would never run: say so
            if asyncio.iscoroutine(result):
                result.close()
            log.error("%s: the %s step returned an awaitable; it must not wait", sub.name,
                      stage.value)

    async def _bounded(self, sub: Subsystem, awaitable: Awaitable[object], end: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, end - loop.time()))
        if not done:
            _abandon(task)
            log.warning("%s: the %s step ran past %.3g s; abandoned", sub.name,
                        Stage.DEADLINE.value, self.deadlines.cancel_grace)
        elif not task.cancelled() and task.exception() is not None:
            self._failed(sub, Stage.DEADLINE, task.exception())

    @staticmethod
    def _failed(sub: Subsystem, stage: Stage, exc: BaseException | None = None) -> None:
        exc_info: Any = True if exc is None else (type(exc), exc, exc.__traceback__)
        log.error("%s: the %s step failed", sub.name, stage.value, exc_info=exc_info)


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a step past its bound without waiting for it (it ends at its next
    await); whatever it ends with is dropped, not reported as never retrieved."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


# -- this process's registry ----------------------------------------------------
_installed: Registry | None = None


def install(registry: Registry | None) -> None:
    """Make ``registry`` this process's (the worker calls it first thing); None removes it."""
    global _installed
    _installed = registry


def current() -> Registry | None:
    """This process's registry, or None outside a pyresty process."""
    return _installed


def register(name: str, layer: Layer, *, begin_exit: SyncStep | None = None,
             wait: WaitStep | None = None, deadline: DeadlineStep | None = None,
             close: SyncStep | None = None) -> Subsystem | None:
    """Register ``name``'s shutdown steps with this process's registry.

    Idempotent by name (rule 3). Does nothing and returns None when no
    registry is installed (rule 7).
    """
    registry = _installed
    if registry is None:
        return None
    return registry.register(name, layer, begin_exit=begin_exit, wait=wait,
                             deadline=deadline, close=close)


os.register_at_fork(after_in_child=lambda: install(None))
