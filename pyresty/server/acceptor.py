"""Accepting client connections on one listening socket, within limits.

Why not ``loop.create_server``: when ``accept`` fails with EMFILE or ENFILE,
libuv accepts and closes the waiting connections (its "EMFILE trick") and
reports the error to uvloop, whose listener then *closes itself* in that
process and logs nothing (``UVStreamServer._fatal_error`` is silent for an
``OSError``). A worker that ran out of descriptors once would never accept on
that address again, and nobody would know. So the worker accepts itself, and
hands each accepted socket to uvloop (``connect_accepted_socket``): the
transport and the protocol are the same as before.

Rules:
- The listening socket is watched with ``loop.add_reader``; each readiness
  accepts up to ``ACCEPT_BATCH`` connections (the rest wait for the next turn
  of the loop, so accepting cannot starve the connections already open).
- ``worker_connections``: when a client waits and the process already holds
  that many client connections (counting those accepted and not yet set up),
  idle keepalive connections are closed to make room (nginx's
  ``ngx_drain_connections``); if none is idle, accepting stops for
  ``ACCEPT_PAUSE`` and the waiting connections stay in the kernel's backlog
  (where another worker may take them), logged ``[alert] N worker_connections
  are not enough`` (nginx's words) at most once a second and counted.
- EMFILE / ENFILE: logged ``[crit] accept4() failed (24: Too many open
  files)`` with the counts, at most once a second, counted; idle keepalive
  connections are closed to free descriptors and accepting pauses for
  ``ACCEPT_PAUSE`` (nginx disables its accept events for a moment too).
- Any other accept error (a connection reset while queued) costs that
  connection only: the next one is accepted.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, Final

from pyresty.errorlog import ALERT
from pyresty.runtime.throttle import LogThrottle
from pyresty.server.connection import PARSER_REST, Deadline
from pyresty.server.tls import looks_like_tls

log = logging.getLogger("pyresty.http")

ACCEPT_BATCH: Final = 32     # connections accepted per readiness of the socket
ACCEPT_PAUSE: Final = 0.1    # seconds without accepting when no descriptor or slot is free
ROOM_BATCH: Final = 32       # idle connections closed at once to make room (nginx: 32)
_OUT_OF_FILES: Final = (errno.EMFILE, errno.ENFILE)


class Limits:
    """What every acceptor of one process shares: the counts and the fault reports."""

    def __init__(self, worker_connections: int, connections: set[Any]) -> None:
        self.worker_connections = worker_connections
        self.connections = connections   # the process's open client connections (HttpConnection)
        self.fd_failures = LogThrottle(log, logging.CRITICAL)
        self.full = LogThrottle(log, ALERT)
        self.reusing = LogThrottle(log, logging.WARNING)
        self.idle_closed = 0
        self.handing_over = 0          # accepted, not yet in ``connections`` (connection_made)
        # one descriptor kept back, so that the fault report can count the others
        self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def fds_in_use(self) -> int:
        """Open descriptors of this process (the reserve lent to the count)."""
        if self._reserve >= 0:
            os.close(self._reserve)
        try:
            return len(os.listdir("/proc/self/fd")) - 1   # minus the listing's own
        except OSError:
            return -1
        finally:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._reserve = -1

    def close(self) -> None:
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1

    def counters(self) -> dict[str, int]:
        return {"accept_errors": self.fd_failures.total,
                "worker_connections_full": self.full.total,
                "idle_closed_for_room": self.idle_closed}

    def room(self) -> bool:
        """Whether one more connection fits, closing idle ones if that makes room."""
        if len(self.connections) + self.handing_over < self.worker_connections:
            return True
        closed = close_idle(self.connections, ROOM_BATCH)
        if closed:
            self.idle_closed += closed
            self.reusing.report("%d worker_connections are not enough, reusing connections "
                                "(%d idle closed)", self.worker_connections, closed)
        return closed > 0


class Acceptor:
    """Accepts on one listening socket and hands connections to ``protocol_factory``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], Any], limits: Limits,
                 ssl: ssl_module.SSLContext | None = None, handshake_timeout: float | None = None,
                 handshake_failed: Callable[[BaseException, Any], None] | None = None,
                 plain_factory: Callable[[], Any] | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = protocol_factory
        self.limits = limits
        self.ssl = ssl      # a TLS listener: uvloop's SSLProtocol wraps the connection
        self.handshake_timeout = handshake_timeout
        self.handshake_failed = handshake_failed    # (exception, client address): server/tls.py
        self.plain_factory = plain_factory    # plain HTTP on this TLS port (server/tls.py rule 6)
        self.paused: asyncio.TimerHandle | None = None
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close this process's copy of the listening socket."""
        if self.closed:
            return
        self.closed = True
        if self.paused is not None:
            self.paused.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        limits = self.limits
        for turn in range(ACCEPT_BATCH):
            if not limits.room():
                if turn:    # maybe nobody else is waiting: the next readiness will tell
                    return
                limits.full.report("%d worker_connections are not enough, not accepting for "
                                   "%.1f s", limits.worker_connections, ACCEPT_PAUSE)
                self._pause()
                return
            try:
                conn, client = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FILES:
                    self._out_of_files(exc)
                    return
                log.info("accept4() failed (%d: %s)", exc.errno, exc.strerror)
                continue
            limits.handing_over += 1
            self.loop.create_task(self._connect(conn, client))

    async def _connect(self, conn: socket.socket, client: Any) -> None:
        try:
            if self.plain_factory is not None and not looks_like_tls(await self._first_byte(conn)):
                await self.loop.connect_accepted_socket(self.plain_factory, conn)
                return
            await self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl,
                                                    ssl_handshake_timeout=self.handshake_timeout)
        except OSError as exc:   # the client was gone before its transport was made
            if self.handshake_failed is not None:
                self.handshake_failed(exc, client)     # or its TLS handshake failed
            else:
                log.info("cannot set up an accepted connection: %s", exc)
            conn.close()
        finally:
            self.limits.handing_over -= 1

    async def _first_byte(self, conn: socket.socket) -> bytes:
        """The connection's first byte, left in the socket (nginx peeks too); b"" at EOF.
        Raises ConnectionAbortedError when nothing came within the handshake's time."""
        conn.setblocking(False)      # uvloop makes it non-blocking anyway
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        fd = conn.fileno()
        readable = self.loop.create_future()
        self.loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, self.handshake_timeout)
        except TimeoutError:
            raise ConnectionAbortedError("no TLS handshake within the time allowed") from None
        finally:
            self.loop.remove_reader(fd)
        return conn.recv(1, socket.MSG_PEEK)

    def _out_of_files(self, exc: OSError) -> None:
        limits = self.limits
        limits.idle_closed += close_idle(limits.connections, ROOM_BATCH)
        limits.fd_failures.report(
            "accept4() failed (%d: %s): %d connections open, %d file descriptors in use of %d "
            "(worker_rlimit_nofile); not accepting for %.1f s", exc.errno, exc.strerror,
            len(limits.connections) + limits.handing_over, limits.fds_in_use(), _fd_limit(),
            ACCEPT_PAUSE)
        self._pause()

    def _pause(self) -> None:
        if self.paused is None and not self.closed:
            self.loop.remove_reader(self.sock.fileno())
            self.paused = self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self.paused = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)


def close_idle(connections: set[Any], most: int) -> int:
    """Close up to ``most`` idle keepalive connections, those idle longest first."""
    idle = [c for c in connections
            if (c.deadline_kind is Deadline.IDLE or c.deadline_kind is Deadline.REST)
            and c.idle and not c.closing]
    idle.sort(key=_keepalive_deadline)
    for conn in idle[:most]:
        conn.close()
    return min(len(idle), most)


def _keepalive_deadline(conn: Any) -> float:
    """When an idle connection's keepalive_timeout ends (its ``REST`` deadline
    comes first: connection.py)."""
    if conn.deadline_kind is Deadline.REST:
        return float(conn.deadline + conn.server.keepalive_timeout - PARSER_REST)
    return float(conn.deadline)


def _fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
