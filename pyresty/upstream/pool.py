"""Per-worker keepalive pools of upstream connections (proxy and cosockets).

A ``PooledSocket`` is the asyncio protocol of one connection to an upstream
peer; whoever uses it (a proxied request, a cosocket) is its ``owner`` and
gets its bytes. An idle pooled socket has no owner. ``Pools`` keeps the idle
sockets of this process by key ``(host, port, pool name)``; the pool name of
a TLS connection carries the server name it was made and verified for
(``ClientTls.pool_tag``), so it is never reused for another name.

Rules
-----
1. Only clean connections return (nginx's keepalive module): the owner
   returns a socket only when its exchange ended with nothing unread, no
   error and no ``Connection: close``; a socket that failed, saw EOF or has
   unread bytes is closed, never pooled.
2. At most ``size`` idle sockets per key, least recently used evicted first;
   a socket idle longer than ``timeout`` or used ``max_requests`` times is
   closed. Idle expiry runs on one timer per process (``SWEEP``), not one
   per socket.
3. An idle socket that receives bytes or EOF (the peer closed it, or sent
   garbage) is closed and leaves the pool at once, so a later ``take`` never
   hands out a connection known to be dead.
4. Exiting (SPEC §4 step 2): ``begin_exit`` closes every idle socket, and
   from then on nothing is pooled again: ``put`` closes instead. This is
   seed 001 (lua-nginx-module #1279): a premature timer that parks a
   cosocket in a pool must not keep the worker alive. At the deadline every
   socket still in use is aborted.
5. The pools register with the lifecycle registry at first use.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from typing import Any, Final

from pyresty.runtime import lifecycle
from pyresty.runtime.client_tls import ClientTls

log = logging.getLogger("pyresty.upstream")

SWEEP: Final = 1.0          # how often idle sockets are checked for expiry (s)
READ_LIMIT: Final = 64 * 1024   # unread bytes an owner holds before reading pauses

PoolKey = tuple[str, int, str]


class PooledSocket:
    """One upstream connection (asyncio's Protocol interface, module rules)."""

    __slots__ = ("pools", "key", "transport", "owner", "closed", "reused", "idle_since",
                 "idle_timeout", "stats", "_connected", "_drain", "_paused", "peer", "parser")

    def __init__(self, pools: Pools, key: PoolKey) -> None:
        self.pools = pools
        self.key = key
        self.peer = f"[{key[0]}]:{key[1]}" if ":" in key[0] else f"{key[0]}:{key[1]}"
        self.transport: asyncio.Transport | None = None
        self.owner: Any = None            # on_data(bytes), on_eof(), on_lost(exc)
        self.closed = False
        self.reused = 0                   # times taken from the pool
        self.idle_since = 0.0
        self.idle_timeout = 0.0           # its pool's keepalive_timeout, set by put
        # its key's counters, found once: no tuple-keyed lookup per take and put
        self.stats = pools.counters(key)
        self._connected: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        # what its owners keep with the connection across requests (the proxy's
        # response parser: one per connection, proxy.py)
        self.parser: Any = None

    # asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pools.opened.add(self)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            self.close()                  # rule 3: bytes nobody asked for
            return
        owner.on_data(data)

    def eof_received(self) -> bool:
        owner = self.owner
        if owner is not None:
            owner.on_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pools.opened.discard(self)
        self.pools.forget(self)
        owner = self.owner
        if owner is not None:
            owner.on_lost(exc)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain = self._drain
        self._drain = None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # owners
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    @property
    def write_blocked(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        """Until the kernel took what was written (backpressure from a slow peer)."""
        if self.closed:
            raise ConnectionResetError("the upstream closed the connection")
        if self._paused:
            drain = self._drain
            if drain is None:
                drain = self._drain = asyncio.get_running_loop().create_future()
            await drain

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.owner = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
        self.pools.forget(self)

    def abort(self) -> None:
        self.owner = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.pools.forget(self)


class PoolStats:
    """Counters of one pool key (for /metrics)."""

    __slots__ = ("hits", "misses", "closed_idle")

    def __init__(self) -> None:
        self.hits = 0          # a request got an idle connection
        self.misses = 0        # a request had to connect
        self.closed_idle = 0   # idle connections closed (expired, evicted, closed by the peer)


class Pools:
    """Every keepalive pool of this process (module rules)."""

    def __init__(self) -> None:
        self.idle: dict[PoolKey, deque[PooledSocket]] = {}
        self.opened: set[PooledSocket] = set()     # every open socket, idle or in use
        self.stats: dict[PoolKey, PoolStats] = {}
        self.exiting = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._registered = False

    def _register(self) -> None:
        self._registered = True
        lifecycle.register("upstream pools", lifecycle.Layer.UPSTREAM,
                           begin_exit=self.begin_exit, deadline=self.abort_all,
                           close=self.close_all)

    def counters(self, key: PoolKey) -> PoolStats:
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = PoolStats()
        return found

    def take(self, key: PoolKey, now: float) -> PooledSocket | None:
        """The most recently returned idle socket of ``key`` that is still usable."""
        queue = self.idle.get(key)
        while queue:
            sock = queue.pop()
            if sock.closed:
                continue
            if now - sock.idle_since > sock.idle_timeout:
                sock.stats.closed_idle += 1
                sock.close()
                continue
            sock.reused += 1
            sock.stats.hits += 1
            return sock
        return None

    async def connect(self, key: PoolKey, timeout: float,
                      tls: ClientTls | None = None) -> PooledSocket:
        """A new connection to ``key``'s host and port (over TLS with ``tls``, whose
        server name is part of ``key``'s pool name); raises OSError or TimeoutError."""
        if not self._registered:
            self._register()
        loop = asyncio.get_running_loop()
        sock = PooledSocket(self, key)
        sock.stats.misses += 1
        host, port, _ = key
        # PooledSocket has a Protocol's methods, not its base class (mypyc)
        if tls is None:
            connecting = loop.create_connection(  # type: ignore[type-var]
                lambda: sock, host, port)
        else:
            connecting = loop.create_connection(  # type: ignore[type-var]
                lambda: sock, host, port, ssl=tls.context, server_hostname=tls.server_hostname)
        try:
            await asyncio.wait_for(connecting, timeout)
            if tls is not None:
                tls.check(sock.transport)
        except BaseException:
            sock.abort()
            raise
        return sock

    def put(self, sock: PooledSocket, size: int, timeout: float, max_requests: int,
            now: float) -> bool:
        """Return a clean socket to its pool (rule 1 is the caller's); False if it was closed."""
        if self.exiting or sock.closed or size <= 0 or sock.reused + 1 >= max_requests:
            sock.close()
            return False
        if not self._registered:
            self._register()
        sock.owner = None
        sock.idle_since = now
        sock.idle_timeout = timeout
        key = sock.key
        queue = self.idle.get(key)
        if queue is None:
            queue = self.idle[key] = deque()
        queue.append(sock)
        while len(queue) > size:
            oldest = queue.popleft()       # rule 2: least recently used first
            oldest.stats.closed_idle += 1
            oldest.close()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)
        return True

    def forget(self, sock: PooledSocket) -> None:
        """``sock`` closed: out of its idle queue if it was there."""
        queue = self.idle.get(sock.key)
        if queue and sock in queue:
            queue.remove(sock)
            sock.stats.closed_idle += 1

    def idle_count(self) -> int:
        return sum(len(q) for q in self.idle.values())

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = False
        for queue in self.idle.values():
            while queue and now - queue[0].idle_since > queue[0].idle_timeout:
                expired = queue.popleft()
                expired.stats.closed_idle += 1
                expired.close()
            left = left or bool(queue)
        if left and not self.exiting:
            self._sweeper = loop.call_later(SWEEP, self._sweep)

    # lifecycle (rule 4)
    def begin_exit(self) -> None:
        self.exiting = True
        closed = 0
        for queue in self.idle.values():
            while queue:
                queue.pop().close()
                closed += 1
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if closed:
            log.info("closed %d idle upstream connections", closed)

    def abort_all(self, grace: float = 0.0) -> None:
        for sock in list(self.opened):
            sock.abort()

    def close_all(self) -> None:
        self.begin_exit()
        self.abort_all()


_pools: Pools | None = None
_counters: list[Any] = []     # other per-peer counters to report (proxy.stats)


def report(source: Any) -> None:
    """Add ``source()`` (a ``{"pool peer": {counter: n}}``) to what ``stats`` reports."""
    if source not in _counters:
        _counters.append(source)


def stats() -> dict[str, dict[str, int]]:
    """``{"pool peer": {counter: n}}``: pool hits and misses, and every reported source."""
    out: dict[str, dict[str, int]] = {}
    for source in _counters:
        for key, figures in source().items():
            out.setdefault(key, {}).update(figures)
    if _pools is not None:
        for (host, port, name), p in _pools.stats.items():
            addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            figures = out.setdefault(f"{name} {addr}", {})
            figures["pool_hits"] = p.hits
            figures["pool_misses"] = p.misses
    return out


def pools() -> Pools:
    """This process's pools (created at first use; a forked child starts afresh)."""
    global _pools
    if _pools is None:
        _pools = Pools()
    return _pools


def _forget_after_fork() -> None:
    global _pools
    _pools = None


os.register_at_fork(after_in_child=_forget_after_fork)
