"""``pyresty.socket``: TCP cosockets with per-worker keepalive pools (SPEC §8).

::

    sock = await pyresty.socket.connect("127.0.0.1", 6379, timeout=5, pool="redis")
    await sock.send(b"PING\\r\\n")
    line = await sock.receive_line()          # b"+PONG"
    await sock.set_keepalive(timeout=60, pool_size=30)   # back to the pool, or closed

Rules
-----
1. ``connect`` takes an idle connection of the pool ``(host, port, pool)``
   (``pool`` defaults to ``"host:port"``) or opens one, within ``timeout``;
   ``timeout`` also bounds every later ``send`` and ``receive*`` (raising
   ``SocketTimeout``; the socket stays usable, as OpenResty's does).
2. ``set_keepalive`` returns a clean connection to the pool shared with the
   proxy (upstream/pool.py) and makes this object unusable. It raises
   ``SocketError`` when unread bytes are waiting (they would be the next
   user's). While the worker exits it closes instead (seed 001,
   lua-nginx-module #1279: a premature timer that parks a socket in a pool
   must not keep the worker alive).
3. A socket still open when the task that connected it ends (a request's
   phases, a timer run, a hook call) is closed then: nothing leaks past its
   request.
4. Reads wait for data as it arrives; past ``READ_LIMIT`` unread bytes the
   connection stops reading until the caller takes some.
5. ``ssl=True`` verifies the peer (the system CA store) against
   ``server_name`` (default ``host``) and sends it as SNI; pooled TLS
   connections are keyed by that name, so a connection made for one name is
   never handed to a ``connect`` for another.
"""
from __future__ import annotations

import asyncio
from typing import Final

from pyresty.errors import SocketError, SocketTimeout
from pyresty.runtime.client_tls import client_tls
from pyresty.upstream.pool import READ_LIMIT, PooledSocket, pools

__all__ = ["Socket", "connect"]

MAX_LINE: Final = 64 * 1024     # receive_line/receive_until give up past this many bytes


async def connect(host: str, port: int, *, timeout: float = 60.0, pool: str | None = None,
                  ssl: bool = False, server_name: str | None = None) -> Socket:
    """A connected ``Socket`` (rule 1). With ``ssl`` the peer's certificate is
    verified against ``server_name`` (default ``host``), which is also sent as SNI
    (rule 5). Raises ``SocketError`` (refused, unreachable, a failed handshake or
    verification, bad arguments) or ``SocketTimeout``."""
    if not isinstance(host, str) or not host:
        raise SocketError(f"invalid host {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SocketError(f"invalid port {port!r}")
    if timeout <= 0:
        raise SocketError(f"invalid timeout {timeout!r}")
    if server_name is not None and (not ssl or not isinstance(server_name, str) or not server_name):
        raise SocketError(f"invalid server_name {server_name!r} (a non-empty name, with ssl=True)")
    tls = client_tls(server_name or host) if ssl else None    # runtime/client_tls.py
    name = "socket:" + (pool if pool is not None else f"{host}:{port}") + (
        " " + tls.pool_tag if tls is not None else "")
    key = (host, port, name)
    loop = asyncio.get_running_loop()
    all_pools = pools()
    sock = all_pools.take(key, loop.time())
    if sock is None:
        try:
            sock = await all_pools.connect(key, timeout, tls)
        except TimeoutError:
            raise SocketTimeout(f"connect to {host}:{port} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise SocketError(f"connect to {host}:{port} failed: {exc.strerror or exc}") from exc
    result = Socket(sock, timeout)
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(result._task_done)     # rule 3
    return result


class Socket:
    """One cosocket (module rules). Methods that wait are coroutines."""

    def __init__(self, sock: PooledSocket, timeout: float) -> None:
        self._sock: PooledSocket | None = sock
        self._timeout = timeout
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._reused = sock.reused
        sock.owner = self

    # the pool's owner interface
    def on_data(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > READ_LIMIT and not self._paused and self._sock is not None:
            self._paused = True
            self._sock.pause_reading()
        self._wake()

    def on_eof(self) -> None:
        self._eof = True
        self._wake()

    def on_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # the API
    def settimeout(self, seconds: float) -> None:
        """The bound of every later send and receive."""
        if seconds <= 0:
            raise SocketError(f"invalid timeout {seconds!r}")
        self._timeout = seconds

    def reused_times(self) -> int:
        """How many times this connection was taken from a pool (0: a new one)."""
        return self._reused

    @property
    def closed(self) -> bool:
        return self._sock is None or self._sock.closed

    async def send(self, data: bytes | str) -> int:
        """Write ``data``; returns its length once the kernel took it."""
        sock = self._open()
        if sock.closed:
            raise SocketError("send failed: the peer closed the connection")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        sock.write(payload)
        if sock.write_blocked:
            try:
                await asyncio.wait_for(sock.drain(), self._timeout)
            except TimeoutError:
                raise SocketTimeout(f"send timed out after {self._timeout:g} s") from None
            except ConnectionError as exc:
                raise SocketError(f"send failed: {exc}") from exc
        return len(payload)

    async def receive(self, n: int) -> bytes:
        """Exactly ``n`` bytes. Raises SocketError if the peer closes first."""
        if n < 0:
            raise SocketError(f"invalid size {n!r}")
        while len(self._buffer) < n:
            await self._more(f"receive({n})")
        return self._take(n, 0)

    async def receive_any(self, max_size: int = 65536) -> bytes:
        """What has arrived (at least one byte, at most ``max_size``); b"" at EOF."""
        while not self._buffer:
            if self._eof:
                return b""
            await self._more("receive_any")
        return self._take(min(max_size, len(self._buffer)), 0)

    async def receive_line(self) -> bytes:
        """One line without its ``\\n`` (and a ``\\r`` before it)."""
        line = await self.receive_until(b"\n")
        return line[:-1] if line.endswith(b"\r") else line

    async def receive_until(self, delimiter: bytes) -> bytes:
        """The bytes before ``delimiter`` (which is consumed, not returned)."""
        if not delimiter:
            raise SocketError("empty delimiter")
        start = 0
        while True:
            at = self._buffer.find(delimiter, start)
            if at >= 0:
                return self._take(at, len(delimiter))
            if len(self._buffer) > MAX_LINE:
                raise SocketError(f"no {delimiter!r} within {MAX_LINE} bytes")
            start = max(0, len(self._buffer) - len(delimiter) + 1)
            await self._more(f"receive_until({delimiter!r})")

    async def set_keepalive(self, timeout: float = 60.0, pool_size: int = 30) -> None:
        """Put the connection back into its pool (rule 2); this object is closed after."""
        sock = self._open()
        if self._buffer:
            raise SocketError(f"set_keepalive: {len(self._buffer)} unread bytes")
        if self._eof:
            self.close_now()
            return
        self._sock = None
        if self._paused:
            sock.resume_reading()
        loop = asyncio.get_running_loop()
        pools().put(sock, pool_size, timeout, 1 << 62, loop.time())

    async def close(self) -> None:
        """Close the connection (never pooled)."""
        self.close_now()

    def close_now(self) -> None:
        sock = self._sock
        self._sock = None
        if sock is not None:
            sock.close()

    # internals
    def _open(self) -> PooledSocket:
        sock = self._sock
        if sock is None:
            raise SocketError("the socket is closed")
        return sock

    async def _more(self, what: str) -> None:
        sock = self._open()
        if self._eof:
            reason = f": {self._error}" if self._error else ""
            raise SocketError(f"{what}: the peer closed the connection{reason}")
        if self._paused:
            self._paused = False
            sock.resume_reading()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        try:
            await asyncio.wait_for(waiter, self._timeout)
        except TimeoutError:
            raise SocketTimeout(f"{what} timed out after {self._timeout:g} s") from None
        finally:
            self._waiter = None

    def _take(self, n: int, skip: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n + skip]
        return data

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self.close_now()

    def __del__(self) -> None:
        sock = self._sock
        if sock is not None and not sock.closed:
            sock.close()
