"""The HTTP server one process hosts: listeners, connections, routing, shutdown.

A worker process (or the single process of ``workers = 0``) creates one
``HttpServer`` from its config and the listening sockets it inherited. The
server registers its shutdown with the process's lifecycle registry when it
is created, with the methods named after SPEC §4's steps: begin exit runs
``stop_accepting`` (1) and ``stop_keepalive`` (2), then come ``wait_idle``
(4), ``abort_all`` (5) and ``close``.

Upgraded connections (WebSockets; proxied tunnels will be the same) are
found through the connections that took them over (``conn.upgraded``): at
the shutdown deadline, in the registry's outermost layer (``close_upgraded``,
registered by the first WebSocket a process accepts), each gets its
``go_away`` (close frame 1001, between frames) and the closing handshakes get
what is left of the cancel grace before the server's own deadline step aborts
what remains; ``drain`` (``pyresty drain``) does the same at once.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from pyresty.http.response import refresh_date
from pyresty.runtime import lifecycle
from pyresty.server.access_log import AccessLog
from pyresty.server import heap
from pyresty.server.acceptor import Acceptor, Limits
from pyresty.server.connection import HttpConnection
from pyresty.server.negotiation import PlainOnTls, PrefaceChoice, TlsChoice
from pyresty.server.state import ServerState, open_access_logs
from pyresty.server.tls import handshake_failed, open_tls

if TYPE_CHECKING:
    import ssl

    from pyresty.config.model import Config, Listen

log = logging.getLogger("pyresty.http")

SWEEP_INTERVAL: Final = 0.25   # how often connection deadlines are checked (s)
EXPIRE_BATCH: Final = 32       # expired connections closed per turn of the loop

__all__ = ["HttpServer", "open_access_logs", "open_tls", "start_upstreams"]


async def start_upstreams(config: Config) -> None:
    """This process's upstream state: active health checks and their verdicts (issue 12).
    Every process calls it at boot, the agent included (it may run the checks)."""
    if any(up.health_check is not None for up in config.upstreams):
        from pyresty.upstream import health   # only when checks are configured
        await health.start(config)


class HttpServer(ServerState):
    """The server: the shared state plus listeners, connections and their deadlines."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 resolve: Callable[..., Callable[..., Any]],
                 access_logs: dict[str, AccessLog] | None = None,
                 tls: dict[Listen, ssl.SSLContext] | None = None) -> None:
        super().__init__(config, loop, resolve, access_logs)
        # contexts of the ssl addresses, opened before privileges dropped (tls.py)
        self._tls = tls if tls is not None else (
            open_tls(config) if any(s.ssl for s in config.servers) else {})
        self._listeners: list[Acceptor] = []
        self.limits = Limits(config.worker_connections, self.connections)
        self._sweeper: asyncio.TimerHandle | None = None
        self._due: list[Any] = []    # found expired by the last scan, not yet expired
        self._peak = 0               # the most connections held since the last heap trim
        lifecycle.register("http server", lifecycle.Layer.SERVER, begin_exit=self._begin_exit,
                           wait=self.wait_idle, deadline=self._at_deadline, close=self.close)

    # listening
    async def start(self, sockets: Sequence[tuple[Listen, socket.socket]]) -> None:
        """Serve on already-bound listening sockets."""
        refresh_date()   # the cached Date is as old as the fork otherwise, until the first sweep
        for listen, sock in sockets:
            # our own accept path, not loop.create_server: acceptor.py says why.
            # TLS: the protocol is chosen by ALPN once the handshake is done;
            # a plain http2 address: by the first bytes (negotiation.py)
            factory: Any = TlsChoice if listen.ssl else (
                PrefaceChoice if listen.http2 else HttpConnection)
            tls = self._tls.get(listen)
            self._listeners.append(Acceptor(
                self.loop, sock, functools.partial(factory, self, listen), self.limits, ssl=tls,
                # the handshake is bounded and its failures counted as nginx's (tls.py rule 5)
                handshake_timeout=self.default_server(listen).client_header_timeout if tls else None,
                handshake_failed=functools.partial(handshake_failed, self, listen) if tls else None,
                plain_factory=functools.partial(PlainOnTls, self, listen) if tls else None))
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

    def drain(self) -> None:
        """``pyresty drain``: stop keepalive, and every WebSocket gets 1001 now."""
        self.stop_keepalive()
        closing = [up for up in self._upgraded() if up.go_away()]
        if closing:
            log.info("drain: closing %d WebSockets with 1001", len(closing))

    async def close_upgraded(self, grace: float) -> None:
        """Shutdown step 5, first: 1001 to every upgraded connection, then their
        closing handshakes get ``grace`` (the server's own step aborts the rest)."""
        upgraded = self._upgraded()
        if not upgraded:
            return
        log.info("worker_shutdown_timeout: closing %d WebSockets with 1001", len(upgraded))
        for up in upgraded:
            up.go_away(grace)
        await asyncio.wait([asyncio.ensure_future(up.wait_closed()) for up in upgraded],
                           timeout=grace)

    def _upgraded(self) -> list[Any]:
        return [c.upgraded for c in self.connections if c.upgraded is not None]

    def resume_keepalive(self) -> None:
        """End a drain (``pyresty drain --cancel``, a reload): new connections keep
        alive again; those already told to close do so after their answer."""
        self.draining = False

    async def wait_idle(self, timeout: float) -> bool:
        """Shutdown step 4: wait until every connection has closed (True) or timeout.

        A connection the loop accepted just before step 1 closed the listeners
        is announced (``connection_made``) in a later callback of the loop: one
        pass of the loop lets it in before the set counts as empty, or the
        worker would exit under its request (its client saw the connection
        close before an answer)."""
        end = self.loop.time() + timeout
        while True:
            await asyncio.sleep(0)
            if not self.connections:
                return True
            self._idle_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle_waiter),
                                       max(0.0, end - self.loop.time()))
            except TimeoutError:
                return False

    def abort_all(self) -> None:
        """Shutdown step 5: cancel every request still running and close every connection."""
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.abort()

    def _begin_exit(self) -> None:
        self.stop_accepting()
        self.stop_keepalive()

    def _at_deadline(self, grace: float) -> None:
        if self.connections:
            log.info("worker_shutdown_timeout: closing %d connections", len(self.connections))
        self.abort_all()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.limits.close()
        for access_log in self.access_logs.values():
            access_log.close()

    def reopen_logs(self) -> None:
        for access_log in self.access_logs.values():
            access_log.reopen()

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        due = self._due
        if not due:   # one scan per SWEEP_INTERVAL, not per batch
            refresh_date()
            due = self._due = [c for c in self.connections if c.deadline <= now]
            held = len(self.connections)
            if held > self._peak:
                self._peak = held
            elif self._peak - held >= heap.TRIM_AFTER:   # a crowd has gone (heap.py)
                self._peak = held
                heap.trim()
        batch = due[-EXPIRE_BATCH:]
        del due[-EXPIRE_BATCH:]
        for conn in batch:
            if conn.deadline > now:   # bytes came since the scan: a new deadline
                continue
            try:
                conn.expire()
            except Exception:
                log.critical("error while expiring a connection", exc_info=True)
                conn.abort()
        if not due:
            for access_log in self.access_logs.values():
                access_log.flush()
        # More due than one batch (a slowloris of 1,000 connections expiring
        # together): the rest on the next turns of the loop, after the I/O that
        # is ready, rather than one stall of every client of this worker.
        delay = 0.0 if due else SWEEP_INTERVAL
        self._sweeper = self.loop.call_later(delay, self._sweep)

    # figures for status and metrics
    def stats(self) -> dict[str, Any]:
        h2 = sum(1 for c in self.connections if not isinstance(c, HttpConnection))
        return {
            "connections": len(self.connections),
            "active_requests": sum(1 for c in self.connections if c.current is not None),
            "requests": self.requests_total,
            "connections_total": self.connections_total,
            "refused": self.refused_total,
            "websockets": sum(1 for c in self.connections if c.upgraded is not None),
            **_websocket_counts(),
            **self.limits.counters(),
            "access_log_errors": sum(a.errors for a in self.access_logs.values()),
            "connections_by_protocol": {"http/1.1": len(self.connections) - h2, "h2": h2},
            "tls_handshakes": dict(self.tls_handshakes),
            "tls_handshake_failures": dict(self.tls_handshake_failures),
            "h2_streams": self.h2_streams_total,
            "h2_floods": self.h2_floods_total,
        }


def _websocket_counts() -> dict[str, int]:
    """The ``ws_*`` figures, once a handler has used ``pyresty.websocket`` or a
    WebSocket was proxied (``ws_tunnel_*``)."""
    found: dict[str, int] = {}
    for name in ("pyresty.server.websocket", "pyresty.upstream.tunnel"):
        module = sys.modules.get(name)
        if module is not None:
            found.update(module.counts())
    return found
