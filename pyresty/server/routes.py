"""Routes: each location of the config compiled once per process.

A ``Route`` holds a location's phase handlers resolved to callables and the
settings the request path reads per request (body size limit, static root).
``build_routes`` compiles every location of a config; the server keys them by
location and caches the route of each path it has matched.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pyresty.config.model import Config, Location

PHASES: Final = ("rewrite", "access", "content", "header_filter", "body_filter", "log")


class Route:
    """A location with its handlers resolved to callables."""

    __slots__ = ("location", "rewrite", "access", "content", "header_filter", "body_filter",
                 "log", "client_max_body_size", "static_root", "warned", "limits")

    def __init__(self, location: Location | None, handlers: dict[str, Callable[..., Any]],
                 client_max_body_size: int, limits: Any = None) -> None:
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


def build_routes(config: Config, resolve: Callable[..., Callable[..., Any]],
                 make_limits: Callable[..., Any] | None = None) -> dict[int, Route]:
    """Compile every location of ``config``; keys are ``id(location)``.

    ``make_limits(config, location, resolve)`` builds a limited location's
    traffic-control step (server/limits.py).
    """
    routes: dict[int, Route] = {}
    for server in config.servers:
        for loc in server.locations:
            handlers = {phase: resolve(getattr(loc, phase), phase=phase)
                        for phase in PHASES if getattr(loc, phase)}
            limit = loc.client_max_body_size
            limits = None
            if loc.limited and make_limits is not None:
                limits = make_limits(config, loc, resolve)
            routes[id(loc)] = Route(loc, handlers,
                                    server.client_max_body_size if limit is None else limit, limits)
    return routes
