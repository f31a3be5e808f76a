"""The HTTP server one process hosts: listeners, connections, routing, shutdown.

A worker process (or the single process of ``workers = 0``) creates one
``HttpServer`` from its config and the listening sockets it inherited, and
drives its shutdown through the methods named after SPEC §4's steps:
``stop_accepting`` (1), ``stop_keepalive`` (2), ``wait_idle`` (4) and
``abort_all`` (5).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyresty.http.response import refresh_date
from pyresty.runtime import context
from pyresty.server.routes import Route, build_routes
from pyresty.server.access_log import AccessLog
from pyresty.server.connection import HttpConnection
from pyresty.server.router import Router

if TYPE_CHECKING:
    from pyresty.config.model import Config, Listen, Location, Server
    from pyresty.server.request import Request

log = logging.getLogger("pyresty.http")

SWEEP_INTERVAL = 0.25   # how often connection deadlines are checked (s)
ROUTE_CACHE_SIZE = 4096  # paths remembered per server (random paths only restart it)
LINGER = 0.1            # how long an idle connection may still bring a request at shutdown (s)
BACKLOG = 511           # nginx's default listen backlog


def open_access_logs(config: Config) -> dict[str, AccessLog]:
    """Every access log of ``config``, by path (opened before privileges drop)."""
    return {server.access_log: AccessLog(server.access_log)
            for server in config.servers if server.access_log}


class HttpServer:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 resolve: Callable[..., Callable[..., Any]],
                 access_logs: dict[str, AccessLog] | None = None) -> None:
        self.config = config
        self.loop = loop
        self.router = Router(config.servers)
        self.routes = build_routes(config, resolve)
        self.fallback = Route(None, {}, 1024 * 1024)
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        # what each request's Context is copied from (runtime/context.py, rule 2)
        self.base_context: contextvars.Context = context.fresh()
        self.draining = False
        self.linger = LINGER
        self.requests_total = 0
        self.connections_total = 0
        self.refused_total = 0
        self._listeners: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle_waiter: asyncio.Future[None] | None = None
        self._defaults: dict[Listen, Server] = {}
        self._shared_listen: set[Listen] = set()
        for server in config.servers:
            for listen in server.listen:
                if listen in self._defaults:
                    self._shared_listen.add(listen)
                else:
                    self._defaults[listen] = server
        opened = access_logs if access_logs is not None else open_access_logs(config)
        self._access_logs: dict[int, AccessLog | None] = {
            id(server): opened.get(server.access_log) if server.access_log else None
            for server in config.servers}
        self._static: Callable[..., Any] | None = None
        self._route_caches: dict[int, dict[str, Route]] = {id(s): {} for s in config.servers}
        self.now = loop.time()      # coarse clock for connection deadlines, set every sweep
        self.timing = any(self._access_logs.values())   # stamp requests only when logged

    # listening
    async def start(self, sockets: Sequence[tuple[Listen, socket.socket]]) -> None:
        """Serve on already-bound listening sockets."""
        refresh_date()   # the cached Date is as old as the fork otherwise, until the first sweep
        for listen, sock in sockets:
            # HttpConnection has a Protocol's methods, not its base class (mypyc)
            server = await self.loop.create_server(
                functools.partial(HttpConnection, self, listen),  # type: ignore[arg-type]
                sock=sock, backlog=BACKLOG)
            self._listeners.append(server)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def stop_accepting(self) -> None:
        """Shutdown step 1: close this process's listeners."""
        for server in self._listeners:
            server.close()
        self._listeners.clear()

    def stop_keepalive(self) -> None:
        """Shutdown step 2: ``Connection: close`` from now on; idle connections go."""
        self.draining = True
        for conn in list(self.connections):
            conn.stop_keepalive()

    def resume_keepalive(self) -> None:
        """End a drain (``pyresty drain --cancel``, a reload): new connections keep
        alive again; those already told to close do so after their answer."""
        self.draining = False

    async def wait_idle(self, timeout: float) -> bool:
        """Shutdown step 4: wait until every connection has closed (True) or timeout."""
        if not self.connections:
            return True
        self._idle_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle_waiter), timeout)
            return True
        except TimeoutError:
            return False

    def abort_all(self) -> None:
        """Shutdown step 5: cancel every request still running and close every connection."""
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.abort()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for access_log in {id(a): a for a in self._access_logs.values() if a}.values():
            access_log.close()

    def reopen_logs(self) -> None:
        for access_log in {id(a): a for a in self._access_logs.values() if a}.values():
            access_log.reopen()

    # connections
    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        self.connections_total += 1
        if self.draining:
            conn.stop_keepalive()

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._idle_waiter is not None and not self._idle_waiter.done():
            self._idle_waiter.set_result(None)

    def default_server(self, listen: Listen) -> Server:
        return self._defaults[listen]

    def count_refused(self, status: int) -> None:
        self.refused_total += 1

    def log_refused(self, conn: HttpConnection, status: int, body_size: int) -> None:
        """nginx logs refused requests too: the default server's access log gets a line."""
        access_log = self._access_logs.get(id(conn.server_conf))
        if access_log is not None:
            access_log.write_refused(conn.peer_host, status, body_size)

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        refresh_date()
        for conn in [c for c in self.connections if c.deadline <= now]:
            try:
                conn.expire()
            except Exception:
                log.critical("error while expiring a connection", exc_info=True)
                conn.abort()
        for access_log in self._access_logs.values():
            if access_log is not None:
                access_log.flush()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    # requests
    def route(self, req: Request, conn: HttpConnection) -> None:
        """Choose the virtual server and location for a new request."""
        if conn.shared_listen:
            host = req.header(b"host")
            server = self.router.server_for(conn.listen, host.decode("latin-1") if host else None)
            req.server = server
            req.route = self.route_for(server, req.path)
            return
        req.server = conn.server_conf
        route = conn.route_cache.get(req.path)
        if route is None:
            route = self.route_for(conn.server_conf, req.path)
        req.route = route

    def rematch(self, req: Request) -> None:
        req.route = self.route_for(req.server, req.path)

    def route_for(self, server: Server, path: str) -> Route:
        """The route of ``path`` in ``server``; remembered, since paths repeat."""
        cache = self._route_caches[id(server)]
        route = cache.get(path)
        if route is None:
            loc = self.router.match(server, path)
            route = self.fallback if loc is None else self.routes[id(loc)]
            if len(cache) >= ROUTE_CACHE_SIZE:
                cache.clear()
            cache[path] = route
        return route

    def route_cache(self, server: Server) -> dict[str, Route]:
        return self._route_caches[id(server)]

    def shares_listen(self, listen: Listen) -> bool:
        """Whether several servers listen on ``listen`` (so Host chooses)."""
        return listen in self._shared_listen

    def access_log_for(self, req: Request) -> AccessLog | None:
        return self._access_logs.get(id(req.server))

    async def serve_static(self, r: Request, location: Location) -> None:
        if self._static is None:
            from pyresty.server.static import serve
            self._static = serve
        await self._static(r, location)

    # figures for status and metrics
    def stats(self) -> dict[str, int]:
        return {
            "connections": len(self.connections),
            "active_requests": sum(1 for c in self.connections if c.current is not None),
            "requests": self.requests_total,
            "connections_total": self.connections_total,
            "refused": self.refused_total,
        }
