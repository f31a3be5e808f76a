"""Request phases: rewrite, access, content, header_filter, body_filter, log.

Each location is compiled once per process into a ``Route`` holding the
resolved handler callables.

Rules
-----
1. Every request runs in an asyncio Task of its own (``start_request``), in a fresh
   copy of the process's base ``contextvars.Context`` (runtime/context.py),
   from the first line of its first phase to the end of its log phase. The
   phases of one request share that Task and Context; no two requests do.
2. ``run`` is the Task's body: rewrite (re-matching when ``r.path`` changes),
   access, content (or static files, or 404), the end of the response, the
   access log, then the log phase.
3. ``r.exit(status)`` raises ``Exit`` (a BaseException, so ``except
   Exception`` cannot swallow it); it ends the request from any phase. An
   ``Exit`` wrapped in an exception group (a TaskGroup's) still counts.
   ``exit`` after the response started ends the request as it stands; a
   status of 300 or more that differs from the one sent is logged once at
   ``[error]``, as OpenResty logs ``ngx.exit`` after the headers.
4. A handler that raises gives a 500 page (or, once the response started, a
   cut connection) and a traceback in the error log; the worker serves on.
   ``SystemExit`` and ``KeyboardInterrupt`` (``sys.exit()`` in a handler, a
   library's argparse on bad input) count as such failures in every phase and
   filter: a request cannot end the worker and every request in flight on it.
5. A phase handler that returns a value other than None is logged once per
   location and phase at ``[warn]``: the value is ignored (nginx users write
   ``return 403`` where ``r.exit(403)`` is meant).
6. Cancellation (``worker_shutdown_timeout``) reaches the handler as
   ``CancelledError`` at its await point; the connection is aborted and the
   request logged as 499. A client that disconnects does not cancel the
   handler (OpenResty's default): its writes raise ``ConnectionResetError``
   from ``flush()`` and ``read_body()``, and its output is dropped. A
   WebSocket handler (status 101) that ends with ``WebSocketClosed`` (a
   ConnectionError: it sent on a socket its client closed) ended normally.

Rewrite may change ``r.path``: the location is matched again and the new
location's rewrite runs, at most ``MAX_REMATCH`` times (nginx's limit of 10
internal redirects), then the request fails with 500 and a logged error.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import traceback
from typing import TYPE_CHECKING, Any, Final

from pyresty.errors import ClientBodyTimeout, Exit
from pyresty.runtime import context
from pyresty.server.request import Request

if TYPE_CHECKING:
    from pyresty.server.routes import Route
    from pyresty.server.state import ServerState

log = logging.getLogger("pyresty.http")

MAX_REMATCH: Final = 10
HANDLER_FAILURES: Final = (Exception, SystemExit, KeyboardInterrupt)
"""What user code may raise that fails its request, never the worker (rule 4)."""


_EAGER: Final = context.EAGER


def start_request(server: ServerState, r: Request) -> None:
    """Run ``r`` through its phases in a Task and Context of its own (rule 1)."""
    if _EAGER:
        task = context.spawn(server.loop, run(server, r))
        if task.done():
            return
    else:
        # a copy of a Context is O(1): it is a persistent map
        task = server.loop.create_task(run(server, r), context=server.base_context.copy())
    r.task = task
    server.tasks.add(task)


async def run(server: ServerState, r: Request) -> None:
    """The body of a request's Task: every phase, the response end, the logs (rule 2)."""
    held: Any = None    # limit_conn slots this request holds
    try:
        try:
            route = r.route
            if route.rewrite is not None:
                route = await _rewrite(server, r, route)
            if route.limits is not None:
                held = await route.limits.enter(r)
            if route.access is not None:
                result = await route.access(r)
                if result is not None:
                    _returned(r, route, "access", result)
            if route.content is not None:
                result = await route.content(r)
                if result is not None:
                    _returned(r, route, "content", result)
            elif route.static_root is not None and route.location is not None:
                await server.serve_static(r, route.location)
            else:
                raise Exit(404)
        except BaseException as exc:  # noqa: BLE001 - mapped to a response by _answer_exception
            if not _answer_exception(server, r, exc):
                raise
        _complete(server, r)
        if r.route.log is not None:
            await _log_phase(r)
    finally:
        if held is not None:
            held.release()          # limit_conn slots, at request cleanup as in nginx
        if r._sink is not None:
            r.release_body()        # the spool file of a large body (body_spool.py)
        task = r.task
        if task is not None:
            server.tasks.discard(task)


def _answer_exception(server: ServerState, r: Request, exc: BaseException) -> bool:
    """Turn what a phase raised into the response; False when it must propagate
    (cancellation: the request is over and its stream reset)."""
    stream = r.stream
    if isinstance(exc, BaseExceptionGroup):
        exc = _exit_in(exc) or exc   # an Exit raised inside a TaskGroup (rule 3)
    if isinstance(exc, Exit):
        _exit_response(r, exc.status, exc)
    elif isinstance(exc, asyncio.CancelledError):
        stream.reset()
        _log_request(server, r, 499)
        stream.done(r)
        return False
    elif isinstance(exc, ConnectionError) and r.status == 101:
        pass    # a WebSocket handler wrote to a socket its client had closed: its end
    elif isinstance(exc, (ConnectionError, TimeoutError)) and stream.closed:
        r.finished = True   # the client left: nothing to send; logged as 499
        r.status = 499
    elif isinstance(exc, ClientBodyTimeout) and not r.started:
        _exit_response(r, 408, None)
        r.keep_alive = False
    else:
        log.error("handler failed on %s %s", r.method, r.uri, exc_info=exc)
        _answer_failure(r)   # SystemExit and KeyboardInterrupt too (rule 4)
    return True


def _exit_in(group: BaseExceptionGroup[Any]) -> Exit | None:
    """The first ``Exit`` inside an exception group, however deeply nested."""
    for inner in group.exceptions:
        if isinstance(inner, Exit):
            return inner
        if isinstance(inner, BaseExceptionGroup):
            found = _exit_in(inner)
            if found is not None:
                return found
    return None


def _complete(server: ServerState, r: Request) -> None:
    """End the response, count and log the request, and move the connection on."""
    stream = r.stream
    if not stream.closed and not r.finished:
        try:
            r.finish()
        except HANDLER_FAILURES:
            # a filter raised, or a header value would split the response
            log.error("response failed on %s %s", r.method, r.uri, exc_info=True)
            if r.started:
                r.finished = True
                stream.reset()
            else:
                r.finished = False
                r.route = r.server.fallback   # no filters this time
                r.answer_status(500, drop_fields=True)
                r.finish()
    elif not r.finished:
        # The client left before the response was complete. Nothing was sent
        # at all: log 499, as nginx does (ngx_http_terminate_request).
        r.finished = True
        if not r.started:
            r.status = 499
    server.requests_total += 1
    if server.timing:
        _access_log(server, r, r.status)
    stream.done(r)


async def _rewrite(server: ServerState, r: Request, route: Any) -> Any:
    for _ in range(MAX_REMATCH):
        path = r.path
        result = await route.rewrite(r)
        if result is not None:
            _returned(r, route, "rewrite", result)
        if r.path == path:
            return route
        server.rematch(r)
        route = r.route
        if route.rewrite is None:
            return route
    log.error("rewrite or internal redirection cycle while processing \"%s\"", r.path)
    raise Exit(500)


def _exit_response(r: Request, status: int, exc: Exit | None) -> None:
    """Make the response ``exit(status)`` asked for (rule 3)."""
    if r.started:
        if status >= 300 and status != r.status and status not in (408, 499):
            log.error("attempt to set status %d via r.exit() after sending out the response "
                      "status %d%s, on %s %s", status, r.status, _where(exc), r.method, r.uri)
        return
    r.answer_status(status)


_PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _where(exc: BaseException | None) -> str:
    """`` at file:line`` of the user code that raised ``exc`` ("" if unknown)."""
    if exc is None:
        return ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _ours(f.filename)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _ours(filename: str) -> bool:
    # compiled modules name their source relative to the project ("pyresty/server/...")
    return filename.startswith(_PACKAGE_DIR + os.sep) or filename.startswith("pyresty" + os.sep)


def _returned(r: Request, route: Route, phase: str, value: object) -> None:
    """A phase handler returned a value: say once per location and phase that it is ignored."""
    if phase in route.warned:
        return
    route.warned.add(phase)
    name = getattr(route.location, phase, None) if route.location is not None else None
    if isinstance(value, int) and not isinstance(value, bool):
        hint = f"use r.exit({value})"
    else:
        hint = "the value is ignored; end a request with r.exit(status)"
    log.warning("%s handler %s returned %r; %s (on %s %s)", phase, name, value, hint,
                r.method, r.uri)


def _answer_failure(r: Request) -> None:
    """A handler raised: a 500 page if nothing was sent, else cut the connection."""
    if r.started:
        r.finished = True
        r.keep_alive = False
        r.stream.reset()
        return
    r.answer_status(500, drop_fields=True)


def _log_request(server: ServerState, r: Request, status: int) -> None:
    server.requests_total += 1
    if server.timing:
        _access_log(server, r, status)


def _access_log(server: ServerState, r: Request, status: int) -> None:
    access_log = r.server.access_log
    if access_log is not None:
        access_log.write(r, status, server.loop.time())


async def _log_phase(r: Request) -> None:
    route = r.route
    handler = route.log
    if handler is None:
        return
    try:
        result = handler(r)
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            _returned(r, route, "log", result)
    except Exit as exc:
        log.error("r.exit(%d) in the log phase does nothing: the response was sent%s, on %s %s",
                  exc.status, _where(exc), r.method, r.uri)
    except HANDLER_FAILURES:
        log.error("log handler failed on %s %s", r.method, r.uri, exc_info=True)
