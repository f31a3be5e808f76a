"""Request phases: rewrite, access, content, header_filter, body_filter, log.

Each location is compiled once per process into a ``Route`` holding the
resolved handler callables. ``handle`` runs one request through the phases as
a single coroutine; ``start`` drives it synchronously and only creates a Task
when a handler really suspends, so a handler that never awaits I/O costs no
Task and no extra loop iteration.

Rewrite may change ``r.path``: the location is matched again and the new
location's rewrite runs, at most ``MAX_REMATCH`` times (nginx's limit of 10
internal redirects), then the request fails with 500 and a logged error.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

from pyresty.http import response as wire
from pyresty.server.request import Exit, Request

if TYPE_CHECKING:
    from pyresty.config.model import Config, Location
    from pyresty.server.server import HttpServer

log = logging.getLogger("pyresty.http")

MAX_REMATCH: Final = 10
PHASES: Final = ("rewrite", "access", "content", "header_filter", "body_filter", "log")


class Route:
    """A location with its handlers resolved to callables."""

    __slots__ = ("location", "rewrite", "access", "content", "header_filter", "body_filter",
                 "log", "client_max_body_size", "static_root", "content_only")

    def __init__(self, location: Location | None, handlers: dict[str, Callable[..., Any]],
                 client_max_body_size: int) -> None:
        self.location = location
        self.rewrite = handlers.get("rewrite")
        self.access = handlers.get("access")
        self.content = handlers.get("content")
        self.header_filter = handlers.get("header_filter")
        self.body_filter = handlers.get("body_filter")
        self.log = handlers.get("log")
        self.client_max_body_size = client_max_body_size
        self.static_root = location.root if location is not None else None
        # nothing but a content handler: start() runs it without the phase coroutine
        self.content_only = (self.content is not None and self.rewrite is None
                             and self.access is None and self.log is None)


def build_routes(config: Config, resolve: Callable[..., Callable[..., Any]]) -> dict[int, Route]:
    """Compile every location of ``config``; keys are ``id(location)``."""
    routes: dict[int, Route] = {}
    for server in config.servers:
        for loc in server.locations:
            handlers = {phase: resolve(getattr(loc, phase), phase=phase)
                        for phase in PHASES if getattr(loc, phase)}
            limit = loc.client_max_body_size
            routes[id(loc)] = Route(loc, handlers,
                                    server.client_max_body_size if limit is None else limit)
    return routes


def start(app: HttpServer, r: Request) -> None:
    """Run ``r`` through its phases; a Task is made only if a handler suspends.

    A route with only a content handler (the common case) runs that handler's
    coroutine directly, without the ``handle`` coroutine around it.

    The coroutine is stepped by a ``for`` loop over its ``__await__``
    iterator, not by ``send``: a coroutine that returns ends the loop without
    a ``StopIteration`` (whose traceback would cost more, compiled, than the
    rest of this function).
    """
    route = r.route
    content = route.content
    if route.content_only and content is not None:
        coro = content(r)
        try:
            for waiting_on in coro.__await__():
                # suspended on I/O: a Task takes the coroutine from here
                app.track(app.loop.create_task(_resume_content(app, r, coro, waiting_on)))
                return
        except BaseException as exc:  # noqa: BLE001 - mapped to a response by _failed
            if not _failed(app, r, exc):
                raise
        _complete(app, r)
        return
    coro = handle(app, r)
    for waiting_on in coro.__await__():
        app.track(app.loop.create_task(_resume(coro, waiting_on)))
        return


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _continue(coro, waiting_on)


async def _resume_content(app: HttpServer, r: Request, coro: Coroutine[Any, Any, None],
                          waiting_on: Any) -> None:
    try:
        await _continue(coro, waiting_on)
    except BaseException as exc:  # noqa: BLE001 - mapped to a response by _failed
        if not _failed(app, r, exc):
            raise
    _complete(app, r)


@types.coroutine
def _continue(coro: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, None, None]:
    # Hand the future the coroutine is blocked on to the Task, then let the
    # Task drive the coroutine itself from where it stopped.
    try:
        yield waiting_on
    except BaseException as exc:
        # Cancelled while parked on waiting_on: deliver it to the coroutine.
        try:
            waiting_on = coro.throw(exc)
        except StopIteration:
            return
        yield from _continue(coro, waiting_on)
        return
    yield from coro.__await__()


async def handle(app: HttpServer, r: Request) -> None:
    """All phases of one request, then the response end, the log phase and the access log."""
    try:
        route = r.route
        if route.rewrite is not None:
            route = await _rewrite(app, r, route)
        if route.access is not None:
            await route.access(r)
        if route.content is not None:
            await route.content(r)
        elif route.static_root is not None and route.location is not None:
            await app.serve_static(r, route.location)
        else:
            raise Exit(404)
    except BaseException as exc:  # noqa: BLE001 - mapped to a response by _failed
        if not _failed(app, r, exc):
            raise
    _complete(app, r)
    if r.route.log is not None:
        await _log_phase(r)


def _failed(app: HttpServer, r: Request, exc: BaseException) -> bool:
    """Turn what a phase raised into the response; False when it must propagate
    (cancellation: the request is over and the connection aborted)."""
    conn = r.conn
    if isinstance(exc, Exit):
        _exit_response(r, exc.status)
    elif isinstance(exc, asyncio.CancelledError):
        conn.abort()
        _log_request(app, r, 499)
        conn.request_done(r)
        return False
    elif isinstance(exc, (ConnectionError, TimeoutError)) and conn.closed:
        r.finished = True   # the client left: nothing to send; logged as 499
        r.status = 499
    elif isinstance(exc, TimeoutError) and not r.started:
        _exit_response(r, 408)
        r.keep_alive = False
    elif isinstance(exc, Exception):
        log.error("handler failed on %s %s", r.method, r.uri, exc_info=exc)
        _fail(r)
    else:
        return False   # KeyboardInterrupt, SystemExit: not ours to swallow
    return True


def _complete(app: HttpServer, r: Request) -> None:
    """End the response, count and log the request, and move the connection on."""
    conn = r.conn
    if not conn.closed and not r.finished:
        try:
            r.finish()
        except Exception:
            # a filter raised, or a header value would split the response
            log.error("response failed on %s %s", r.method, r.uri, exc_info=True)
            if r.started:
                r.finished = True
                conn.abort()
            else:
                r.finished = False
                r._headers_out = None
                r.route = app.fallback   # no filters this time
                _exit_response(r, 500)
                r.finish()
    elif not r.finished:
        # The client left before the response was complete. Nothing was sent
        # at all: log 499, as nginx does (ngx_http_terminate_request).
        r.finished = True
        if not r.started:
            r.status = 499
    app.requests_total += 1
    if app.timing:
        _access_log(app, r, r.status)
    conn.request_done(r)


async def _rewrite(app: HttpServer, r: Request, route: Any) -> Any:
    for _ in range(MAX_REMATCH):
        path = r.path
        await route.rewrite(r)
        if r.path == path:
            return route
        app.rematch(r)
        route = r.route
        if route.rewrite is None:
            return route
    log.error("rewrite or internal redirection cycle while processing \"%s\"", r.path)
    raise Exit(500)


def _exit_response(r: Request, status: int) -> None:
    if r.started:
        return
    r.status = status
    if status >= 300:
        r.discard_output()
        headers = r._headers_out
        if headers is not None and "content-length" in headers:
            del headers["content-length"]   # it framed the discarded body (RFC 9112 §6.3)
        if not wire.bodiless(status):
            r.headers_out["Content-Type"] = "text/html"
            r._out.append(wire.error_body(status))


def _fail(r: Request) -> None:
    """A handler raised: a 500 page if nothing was sent, else cut the connection."""
    if r.started:
        r.finished = True
        r.keep_alive = False
        r.conn.abort()
        return
    r._headers_out = None
    _exit_response(r, 500)


def _log_request(app: HttpServer, r: Request, status: int) -> None:
    app.requests_total += 1
    if app.timing:
        _access_log(app, r, status)


def _access_log(app: HttpServer, r: Request, status: int) -> None:
    access_log = app.access_log_for(r)
    if access_log is not None:
        access_log.write(r, status, app.loop.time())


async def _log_phase(r: Request) -> None:
    handler = r.route.log
    if handler is None:
        return
    try:
        result = handler(r)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.error("log handler failed on %s %s", r.method, r.uri, exc_info=True)
