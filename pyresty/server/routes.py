"""Virtual servers and routes: the config's servers and locations compiled
once per process.

A ``Route`` holds a location's phase handlers resolved to callables and the
settings the request path reads per request (body size limit, static root).
A ``VirtualServer`` holds one ``[[server]]``'s settings as plain attributes
(timeouts, keepalive, access log), its routes in a location table, and the
route each path it has matched (a bounded cache: paths repeat).
``build_servers`` compiles every server of a config, in file order.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pyresty.server.router import LocationTable

if TYPE_CHECKING:
    from pyresty.config.model import Config, Location, Server
    from pyresty.server.access_log import AccessLog

PHASES: Final = ("rewrite", "access", "content", "header_filter", "body_filter", "log")
ROUTE_CACHE_SIZE: Final = 4096  # paths remembered per server (random paths only restart it)
FALLBACK_BODY_LIMIT: Final = 1024 * 1024   # client_max_body_size where no location matched


class Route:
    """A location with its handlers resolved to callables."""

    __slots__ = ("location", "rewrite", "access", "content", "header_filter", "body_filter",
                 "log", "client_max_body_size", "static_root", "warned", "limits",
                 "client_body_buffer_size", "client_body_temp_path")

    def __init__(self, location: Location | None, handlers: dict[str, Callable[..., Any]],
                 client_max_body_size: int, limits: Any = None,
                 client_body_buffer_size: int = 16 * 1024,
                 client_body_temp_path: str = "client_body_temp") -> None:
        self.location = location
        self.rewrite = handlers.get("rewrite")
        self.access = handlers.get("access")
        self.content = handlers.get("content")
        self.header_filter = handlers.get("header_filter")
        self.body_filter = handlers.get("body_filter")
        self.log = handlers.get("log")
        self.client_max_body_size = client_max_body_size
        self.static_root = location.root if location is not None else None
        self.warned: set[str] = set()   # phases whose returned value was logged (phases.py rule 5)
        # limit_req/limit_conn/limit_count (pyresty.server.limits.LocationLimits)
        self.limits: Any = limits
        # a larger body goes to a file in client_body_temp_path (body_spool.py)
        self.client_body_buffer_size = client_body_buffer_size
        self.client_body_temp_path = client_body_temp_path


class VirtualServer:
    """One ``[[server]]`` compiled: what the request path reads of it."""

    __slots__ = ("config", "name", "access_log", "keepalive_timeout", "max_requests",
                 "client_header_timeout", "client_body_timeout", "send_timeout",
                 "client_max_body_size", "routes", "fallback", "cache")

    def __init__(self, config: Server, routes: list[Route], access_log: AccessLog | None) -> None:
        self.config = config
        self.name = config.server_name[0] if config.server_name else ""
        self.access_log = access_log
        self.keepalive_timeout = config.keepalive_timeout
        # keepalive_timeout 0 turns keepalive off, as in nginx
        self.max_requests = config.keepalive_requests if config.keepalive_timeout > 0 else 0
        self.client_header_timeout = config.client_header_timeout
        self.client_body_timeout = config.client_body_timeout
        self.send_timeout = config.send_timeout
        self.client_max_body_size = config.client_max_body_size
        self.routes: LocationTable[Route] = LocationTable(config.locations, routes)
        # no location: a 404 whose body (at most the limit) is never spooled
        self.fallback = Route(None, {}, FALLBACK_BODY_LIMIT, None, FALLBACK_BODY_LIMIT)
        self.cache: dict[str, Route] = {}

    def route_for(self, path: str) -> Route:
        """The route of ``path``; remembered, since paths repeat."""
        route = self.cache.get(path)
        if route is None:
            route = self.routes.match(path)
            if route is None:
                route = self.fallback
            if len(self.cache) >= ROUTE_CACHE_SIZE:
                self.cache.clear()
            self.cache[path] = route
        return route


def build_servers(config: Config, resolve: Callable[..., Callable[..., Any]],
                  make_limits: Callable[..., Any] | None = None,
                  access_logs: dict[str, AccessLog] | None = None,
                  make_proxy: Callable[..., Any] | None = None) -> list[VirtualServer]:
    """Compile every server of ``config`` and its locations, in file order.

    ``make_limits(config, location, resolve)`` builds a limited location's
    traffic-control step (server/limits.py); ``access_logs`` are the opened
    logs by path; ``make_proxy(config, location, resolve)`` a ``proxy_pass``
    location's content handler (upstream/proxy.py).
    """
    logs = access_logs or {}
    return [VirtualServer(server, [_route(config, server, loc, resolve, make_limits, make_proxy)
                                   for loc in server.locations],
                          logs.get(server.access_log) if server.access_log else None)
            for server in config.servers]


def _route(config: Config, server: Server, loc: Location,
           resolve: Callable[..., Callable[..., Any]],
           make_limits: Callable[..., Any] | None,
           make_proxy: Callable[..., Any] | None = None) -> Route:
    handlers = {phase: resolve(getattr(loc, phase), phase=phase)
                for phase in PHASES if getattr(loc, phase)}
    if loc.proxy_pass and make_proxy is not None:
        handlers["content"] = make_proxy(config, loc, resolve)
    limits = None
    if loc.limited and make_limits is not None:
        limits = make_limits(config, loc, resolve)
    limit = loc.client_max_body_size
    buffer = loc.client_body_buffer_size
    return Route(loc, handlers, server.client_max_body_size if limit is None else limit, limits,
                 server.client_body_buffer_size if buffer is None else buffer,
                 config.client_body_temp_path)
