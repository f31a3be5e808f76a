"""Where user code runs: an asyncio Task of its own, in a fresh ``contextvars.Context``.

Rules
-----
1. Every piece of user code that may await (rewrite, access, content and log
   handlers, timer callbacks, ``init_worker``/``exit_worker`` hooks) runs in
   an asyncio Task, from its first line: ``asyncio.current_task()`` is that
   task, so ``asyncio.timeout``, ``TaskGroup``, anyio, httpx, aiohttp and
   redis.asyncio work as in any asyncio program.
2. Each request, timer run and hook call gets its own copy of the process's
   *base context*, captured at boot before any user code is imported. A
   ``ContextVar`` set by one request is seen by that request's later phases
   and by nothing else: not the next request on the same connection, not a
   request on another connection, not a timer.
3. On Python 3.12+ a task starts eagerly (``eager_start``): it runs
   synchronously up to its first real suspension, so a handler that never
   waits costs no extra trip through the event loop. On 3.11 it starts on
   the loop's next iteration (``bench/`` measures what that costs).

4. User code cannot end its process by raising: ``SystemExit`` (``sys.exit``,
   argparse and click on bad input) or ``KeyboardInterrupt`` raised in a timer
   callback or a hook becomes a ``ProcessExitRefused`` (a ``RuntimeError``,
   chained to it), a failure logged like any other. Escaping a Task, either
   would stop the event loop, and the worker with every request it served.
   A process ends through ``pyresty.process.signal_master`` or its signals.

Header and body filters are plain functions called on the write path; they
run inside the task of the request that writes, so they see its context too.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

EAGER: Final = sys.version_info >= (3, 12)

_base: contextvars.Context = contextvars.copy_context()


def capture_base() -> None:
    """Take the current context as the base every request and timer run copies.

    Called once at boot, before user code is imported.
    """
    global _base
    _base = contextvars.copy_context()


def fresh() -> contextvars.Context:
    """A new copy of the base context (O(1): contexts are persistent maps)."""
    return _base.copy()


def spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
          name: str | None = None) -> asyncio.Task[T]:
    """Run ``coro`` in a Task of its own with a fresh copy of the base context."""
    if EAGER:
        return asyncio.Task(coro, loop=loop, name=name, context=fresh(),  # type: ignore[call-arg]
                            eager_start=True)
    return loop.create_task(coro, name=name, context=fresh())


class ProcessExitRefused(RuntimeError):
    """User code raised ``SystemExit`` or ``KeyboardInterrupt`` where it cannot
    end the process (rule 4); ``__cause__`` is what it raised."""


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call user code ``fn(*args)`` (sync or async) in a Task and Context of its
    own and return its result; exceptions propagate to the caller
    (``SystemExit`` and ``KeyboardInterrupt`` as ``ProcessExitRefused``)."""
    return await spawn(asyncio.get_running_loop(), invoke(fn, *args))


async def invoke(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, awaited if it returns an awaitable (rule 4 applied)."""
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
    except (SystemExit, KeyboardInterrupt) as exc:
        raised = f"{exc.__class__.__name__}({', '.join(map(repr, exc.args))})"
        raise ProcessExitRefused(
            f"{raised} raised by user code: it cannot end a pyresty process "
            f"(pyresty.process.signal_master can)") from exc
    return result
