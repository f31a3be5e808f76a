"""The state one process's HTTP server shares with its connections and requests.

``ServerState`` is what the request path reads and writes per request: the
loop and the coarse clock (``now``, advanced by the server's sweep), the
draining flag, counters, the running request tasks and the Context each
request copies, the compiled routes with their per-server caches, the access
logs (``open_access_logs`` registers their ``close`` with the process's
lifecycle registry), and the choice of virtual server and location for a
request. It knows nothing of listeners or of the connection class: ``server.py``'s
``HttpServer`` extends it with those, so that ``connection.py`` and
``phases.py`` depend on this module and not the other way round.
"""
from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pyresty.runtime import context, lifecycle
from pyresty.server.access_log import AccessLog
from pyresty.server.limits import location_limits
from pyresty.server.router import Router
from pyresty.server.routes import Route, build_routes

if TYPE_CHECKING:
    from pyresty.config.model import Config, Listen, Location, Server
    from pyresty.server.request import Request

ROUTE_CACHE_SIZE: Final = 4096  # paths remembered per server (random paths only restart it)
FALLBACK_BODY_LIMIT: Final = 1024 * 1024   # client_max_body_size where no location matched


def open_access_logs(config: Config) -> dict[str, AccessLog]:
    """Every access log of ``config``, by path (opened before privileges drop)."""
    opened = {server.access_log: AccessLog(server.access_log)
              for server in config.servers if server.access_log}
    if opened:
        def close() -> None:
            for access_log in opened.values():
                access_log.close()
        lifecycle.register("access logs", lifecycle.Layer.STORES, close=close)
    return opened


class ServerState:
    """Per-process server state shared by connections and the phase runner."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 resolve: Callable[..., Callable[..., Any]],
                 access_logs: dict[str, AccessLog] | None = None) -> None:
        self.config = config
        self.loop = loop
        self.router = Router(config.servers)
        self.routes = build_routes(config, resolve, location_limits)
        self.fallback = Route(None, {}, FALLBACK_BODY_LIMIT)
        self.connections: set[Any] = set()     # the connections of server.py
        self.tasks: set[asyncio.Task[None]] = set()
        # what each request's Context is copied from (runtime/context.py, rule 2)
        self.base_context: contextvars.Context = context.fresh()
        self.draining = False
        self.linger = lifecycle.SHUTDOWN.linger   # step 2: an idle connection's last chance
        self.requests_total = 0
        self.connections_total = 0
        self.refused_total = 0
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

    # connections
    def connection_opened(self, conn: Any) -> None:
        self.connections.add(conn)
        self.connections_total += 1
        if self.draining:
            conn.stop_keepalive()

    def connection_closed(self, conn: Any) -> None:
        self.connections.discard(conn)
        if not self.connections and self._idle_waiter is not None and not self._idle_waiter.done():
            self._idle_waiter.set_result(None)

    def default_server(self, listen: Listen) -> Server:
        return self._defaults[listen]

    def shares_listen(self, listen: Listen) -> bool:
        """Whether several servers listen on ``listen`` (so Host chooses)."""
        return listen in self._shared_listen

    def count_refused(self, status: int) -> None:
        self.refused_total += 1

    def log_refused(self, server: Server, peer_host: str, status: int, body_size: int) -> None:
        """nginx logs refused requests too: the default server's access log gets a line."""
        access_log = self._access_logs.get(id(server))
        if access_log is not None:
            access_log.write_refused(peer_host, status, body_size)

    # requests
    def route_by_host(self, req: Request, listen: Listen) -> None:
        """Choose the virtual server by Host, then the location, for a request
        on an address several servers share."""
        # RFC 9112 §3.2.2: an absolute-form target's host wins over Host (nginx too)
        host = req._authority
        if host is None:
            field = req.header(b"host")
            host = field.decode("latin-1") if field else None
        server = self.router.server_for(listen, host)
        req.server = server
        req.route = self.route_for(server, req.path)

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

    def access_log_for(self, req: Request) -> AccessLog | None:
        return self._access_logs.get(id(req.server))

    async def serve_static(self, r: Request, location: Location) -> None:
        if self._static is None:
            from pyresty.server.static import serve
            self._static = serve
        await self._static(r, location)
