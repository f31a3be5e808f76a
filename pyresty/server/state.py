"""The state one process's HTTP server shares with its connections and requests.

``ServerState`` is what the request path reads and writes per request: the
loop and the coarse clock (``now``, advanced by the server's sweep), the
draining flag, counters, the running request tasks and the Context each
request copies, the compiled virtual servers (routes.py) with the router that
chooses one by address and ``Host``, and the access logs (``open_access_logs``
registers their ``close`` with the process's lifecycle registry). It knows nothing of listeners or of the connection class: ``server.py``'s
``HttpServer`` extends it with those, so that ``connection.py`` and
``phases.py`` depend on this module and not the other way round.
"""
from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyresty.runtime import context, lifecycle
from pyresty.server.access_log import AccessLog
from pyresty.server.limits import location_limits
from pyresty.server.router import Router
from pyresty.server.routes import VirtualServer, build_servers

if TYPE_CHECKING:
    from pyresty.config.model import Config, Listen, Location
    from pyresty.server.request import Request


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



def _proxy_maker(config: Config) -> Callable[..., Any] | None:
    """upstream/proxy.py's ``location_proxy``, imported only when a location proxies."""
    if not any(loc.proxy_pass for server in config.servers for loc in server.locations):
        return None
    from pyresty.upstream.proxy import location_proxy
    return location_proxy

class ServerState:
    """Per-process server state shared by connections and the phase runner."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 resolve: Callable[..., Callable[..., Any]],
                 access_logs: dict[str, AccessLog] | None = None) -> None:
        self.config = config
        self.loop = loop
        self.access_logs = access_logs if access_logs is not None else open_access_logs(config)
        self.servers = build_servers(config, resolve, location_limits, self.access_logs,
                                     _proxy_maker(config))
        self.router: Router[VirtualServer] = Router(config.servers, self.servers)
        self.connections: set[Any] = set()     # the connections of server.py
        self.tasks: set[asyncio.Task[None]] = set()
        # what each request's Context is copied from (runtime/context.py, rule 2)
        self.base_context: contextvars.Context = context.fresh()
        self.draining = False
        self.linger = lifecycle.SHUTDOWN.linger   # step 2: an idle connection's last chance
        self.requests_total = 0
        self.connections_total = 0
        self.refused_total = 0
        self.tls_handshakes: dict[str, int] = {}   # by negotiated version
        self.tls_handshake_failures: dict[str, int] = {}   # by reason (server/tls.py rule 5)
        self.h2_streams_total = 0
        self.h2_floods_total = 0                    # connections closed with ENHANCE_YOUR_CALM
        self._idle_waiter: asyncio.Future[None] | None = None
        self._static: Callable[..., Any] | None = None
        self.now = loop.time()      # coarse clock for connection deadlines, set every sweep
        # stamp requests only when some server logs them
        self.timing = any(server.access_log is not None for server in self.servers)

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

    def default_server(self, listen: Listen) -> VirtualServer:
        return self.router.default(listen)

    def shares_listen(self, listen: Listen) -> bool:
        """Whether several servers listen on ``listen`` (so Host chooses)."""
        return self.router.shared(listen)

    def count_refused(self, status: int) -> None:
        self.refused_total += 1

    def count_handshake(self, version: str) -> None:
        self.tls_handshakes[version] = self.tls_handshakes.get(version, 0) + 1

    def count_handshake_failure(self, reason: str) -> None:
        self.tls_handshake_failures[reason] = self.tls_handshake_failures.get(reason, 0) + 1

    def log_refused(self, server: VirtualServer, peer_host: str, status: int,
                    body_size: int) -> None:
        """nginx logs refused requests too: the default server's access log gets a line."""
        if server.access_log is not None:
            server.access_log.write_refused(peer_host, status, body_size)

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
        req.route = server.route_for(req.path)

    def rematch(self, req: Request) -> None:
        req.route = req.server.route_for(req.path)

    async def serve_static(self, r: Request, location: Location) -> None:
        if self._static is None:
            from pyresty.server.static import serve
            self._static = serve
        await self._static(r, location)
