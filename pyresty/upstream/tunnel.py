"""Proxied WebSockets: an ``Upgrade: websocket`` request to a ``proxy_pass``
location becomes a tunnel that follows frame boundaries (SPEC §8, §4 step 5).

Theory of operation
-------------------
``proxy_websocket(plan, r)`` picks a peer with the location's balancer,
opens a new connection (an upgraded connection never returns to a pool),
sends the request with ``Upgrade: websocket`` and ``Connection: Upgrade``
(``ForwardHead``, http/client.py) and reads the answer through the client
role's response parser: a 101 ends HTTP there, and the bytes after its head
are the tunnel's first. A 101 whose ``Sec-WebSocket-Accept`` matches
the client's key is passed on (``HttpConnection.take_over``) and the
``Tunnel`` carries bytes both ways; any other answer goes to the client as
a normal response.

Rules
-----
1. One try, on a new connection: a failure to connect, a timeout
   (``proxy_connect_timeout``, ``proxy_read_timeout`` for the head) or an
   invalid answer is logged and answered 502 (504 after a timeout).
2. A 101 with a wrong or missing ``Sec-WebSocket-Accept`` is a 502: the
   upstream did not speak WebSocket to this client (RFC 6455 §4.1).
3. Payloads pass untouched; a ``FrameTracker`` per direction follows the
   frame headers (http/wsframes.py).
4. ``go_away`` (drain, the shutdown deadline): each side gets a close frame
   1001 at its next frame boundary (at once when it is at one): to the
   client unmasked, to the upstream masked (RFC 6455 §5.3). From then on the
   frames that follow in that direction are dropped; once both sides
   answered with their close frame, or after the timeout, both connections
   close.
5. ``proxy_read_timeout`` applies to an idle tunnel: nothing in either
   direction for that long closes both connections (as nginx does).
6. Backpressure: a side that cannot take more stops the other side's reading.
7. ``COUNTS`` holds this process's tunnel figures (messages and bytes each
   way: "in" from the client, "out" to it), summed into the server's stats
   as ``ws_tunnel_*`` and shown in ``/metrics``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import Counter
from typing import Any, Final, NoReturn

from pyresty.errors import Exit
from pyresty.http.client import ResponseParser, UpstreamError
from pyresty.http.headers import Headers
from pyresty.http.wsframes import FrameTracker
from pyresty.runtime import lifecycle
from pyresty.upstream.pool import pools

log = logging.getLogger("pyresty.upstream")

MAX_BODY: Final = 1024 * 1024   # a non-101 answer's body, passed on whole
CLOSE_TIMEOUT: Final = 5.0      # how long both sides have to answer a 1001
_GOING_AWAY: Final = struct.pack("!H", 1001) + b"server going away"
COUNTS: Counter[str] = Counter()     # rule 7


def counts() -> dict[str, int]:
    return {f"ws_tunnel_{name}": n for name, n in COUNTS.items()}


_HOP: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"date", b"server"})


def wants_websocket(r: Any) -> bool:
    """An HTTP/1.1 GET asking for ``Upgrade: websocket`` with a key."""
    if not r.upgrade or r.method != "GET" or r.http_version != "1.1":
        return False
    upgrade = r.header(b"upgrade")
    return upgrade is not None and b"websocket" in upgrade.lower() \
        and r.header(b"sec-websocket-key") is not None and hasattr(r.stream, "take_over")


def _frame(payload: bytes, masked: bool) -> bytes:
    """A close frame (RFC 6455 §5.5.1) carrying ``payload``."""
    if not masked:
        return bytes([0x88, len(payload)]) + payload
    mask = os.urandom(4)
    return bytes([0x88, 0x80 | len(payload)]) + mask + \
        bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class _Answer:
    """The upstream's answer to the upgrade request, read through the client
    role's response parser (http/client.py): the socket's owner and the
    parser's sink until a 101's head, or a whole other answer (bounded by
    ``MAX_BODY``), arrived. Bytes after the 101's head belong to the tunnel
    and are kept as they are (``rest``), never parsed as HTTP."""

    def __init__(self, method: str) -> None:
        self.parser = ResponseParser(self)
        self.parser.expect(method)
        self.status = 0
        self.fields: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.ended = False
        self.upgraded = False
        self.rest = b""
        self.eof = False
        self.error = ""
        self.news: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # the socket's owner
    def on_data(self, data: bytes) -> None:
        if self.upgraded:
            self.rest += data            # the tunnel's, until it takes the socket
            return
        try:
            self.parser.feed(data)
        except UpstreamError as exc:
            self.error = f"upstream sent an invalid answer ({exc})"
        if self.size > MAX_BODY:
            self.error = "upstream sent too big an answer to a WebSocket upgrade"
        self._wake()

    def on_eof(self) -> None:
        self.eof = True
        if not self.upgraded:
            try:
                self.parser.eof()
            except UpstreamError:
                pass                     # an incomplete answer: not ended
        self._wake()

    def on_lost(self, exc: Exception | None) -> None:
        self.on_eof()

    # the parser's sink
    def on_interim(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        pass

    def on_response(self, status: int, fields: list[tuple[bytes, bytes]],
                    keep_alive: bool) -> None:
        self.status, self.fields = status, fields

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def on_end(self) -> None:
        self.ended = True

    def on_upgrade(self, fields: list[tuple[bytes, bytes]], rest: bytes) -> None:
        self.status, self.fields, self.rest = 101, fields, rest
        self.upgraded = True

    # the waiting side
    def _wake(self) -> None:
        if not self.news.done():
            self.news.set_result(None)

    def complete(self) -> bool:
        return self.upgraded or self.ended or self.eof or bool(self.error)

    async def wait(self, timeout: float) -> None:
        """Until the answer is complete; TimeoutError after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.complete():
            self.news = loop.create_future()
            await asyncio.wait_for(self.news, max(0.0, deadline - loop.time()))


async def proxy_websocket(plan: Any, r: Any) -> None:
    """Rules 1-2, then the tunnel until it closes."""
    loop = asyncio.get_running_loop()
    balancer = plan.balancer
    peer = balancer.pick(loop.time(), set(), plan.hash_value(r)) if balancer is not None else None
    if peer is None:
        log.error("no live upstreams while connecting to upstream \"%s\" (WebSocket)", plan.name)
        raise Exit(502)
    key = (peer.host, peer.port, plan.pool_name)
    addr = f"{peer.host}:{peer.port}"
    r.upstream_addr = addr
    started = loop.time()
    try:
        sock = await pools().connect(key, plan.connect_timeout, plan.tls)
    except (OSError, TimeoutError) as exc:
        _fail(r, addr, f"connect() failed ({exc}) while connecting to upstream",
              504 if isinstance(exc, TimeoutError) else 502)
    answer = _Answer(r.method)
    sock.owner = answer
    sock.write(plan.forward.build(r.method, plan.target(r.uri, r.path, r.query), r.fields, r.client_addr, r.scheme,
                                  0, b"websocket"))
    try:
        await answer.wait(plan.read_timeout)
    except TimeoutError:
        sock.close()
        _fail(r, addr, "upstream timed out (110: Connection timed out) while reading "
              + ("upstream" if answer.status else "response header from upstream"), 504)
    r.upstream_times = [loop.time() - started]
    if answer.upgraded:
        await _switch(plan, r, sock, answer, addr)
        return
    sock.close()
    if answer.error:
        _fail(r, addr, answer.error, 502)
    if not answer.ended:
        _fail(r, addr, "upstream prematurely closed connection while reading "
              + ("upstream" if answer.status else "response header from upstream"), 502)
    await _answer(r, answer)


def _fail(r: Any, addr: str, reason: str, status: int) -> NoReturn:
    log.error('%s, client: %s, request: "%s %s HTTP/%s", upstream: "http://%s%s"', reason,
              r.client_addr, r.method, r.uri, r.http_version, addr, r.uri)
    r.upstream_status = str(status)
    raise Exit(status)


async def _answer(r: Any, answer: _Answer) -> None:
    """Not a 101: the upstream's answer goes to the client as it is (bounded)."""
    r.upstream_status = str(answer.status)
    r.status = answer.status
    out = Headers()
    for name, value in answer.fields:
        if name.lower() not in _HOP and name.lower() != b"content-length":
            out.add_raw(name, value)
    r.fields_out = out
    await r.print(b"".join(answer.chunks))


async def _switch(plan: Any, r: Any, sock: Any, answer: _Answer, addr: str) -> None:
    """A 101: check it (rule 2), answer the client and run the tunnel."""
    from wsproto.utilities import generate_accept_token
    fields = Headers()
    accept = None
    for name, value in answer.fields:
        lowered = name.lower()
        if lowered == b"sec-websocket-accept":
            accept = value
        if lowered not in _HOP:
            fields.add_raw(name, value)
    key = r.header(b"sec-websocket-key") or b""
    if accept != generate_accept_token(key.strip()):
        sock.close()
        _fail(r, addr, "upstream sent a 101 without the right Sec-WebSocket-Accept", 502)
    r.upstream_status = "101"
    tunnel = Tunnel(r, sock, plan.read_timeout)
    r.stream.take_over(r, fields, tunnel)
    close_upgraded = getattr(getattr(r.stream, "state", None), "close_upgraded", None)
    if close_upgraded is not None:       # as server/websocket.py does: rule 5 there
        lifecycle.register("websockets", lifecycle.Layer.UPGRADED, deadline=close_upgraded)
    if answer.rest:
        tunnel.on_data(answer.rest)
    if answer.eof:
        tunnel.on_eof()                  # the upstream closed right after its 101
    await tunnel.wait_closed()


class Tunnel:
    """The client connection's protocol and the upstream socket's owner (rules 3-6)."""

    def __init__(self, r: Any, sock: Any, idle_timeout: float) -> None:
        self._r = r
        self._conn: Any = r.stream
        self._sock = sock
        sock.owner = self
        self._client: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._to_client = FrameTracker()
        self._to_upstream = FrameTracker()
        self._closing_client = False      # our 1001 went (or waits) to the client
        self._closing_upstream = False
        self._client_close_sent = False
        self._upstream_close_sent = False
        self._gone: asyncio.Future[None] = self._loop.create_future()
        self._idle_timeout = idle_timeout
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(idle_timeout, self._idle)
        self._close_timer: asyncio.TimerHandle | None = None
        self.going_away = False

    # the client side (asyncio protocol, after take_over)
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        before = self._to_upstream.messages
        self._from_client(data)
        COUNTS["bytes_in"] += len(data)
        COUNTS["messages_in"] += self._to_upstream.messages - before

    def _from_client(self, data: bytes) -> None:
        self._last = self._loop.time()
        self._r.body_size += len(data)
        tracker = self._to_upstream
        if self._upstream_close_sent:
            tracker.consume(data)            # frames after our 1001 are dropped (rule 4)
            self._maybe_done()
            return
        if self._closing_upstream:
            n = tracker.consume(data, stop_at_boundary=True)
            self._sock.write(data[:n])
            if tracker.at_boundary:
                self._send_upstream_close()
                tracker.consume(data[n:])
            self._maybe_done()
            return
        tracker.consume(data)
        self._sock.write(data)
        if self._sock.write_blocked and self._client is not None:
            self._client.pause_reading()
            self._loop.create_task(self._resume_client())

    async def _resume_client(self) -> None:
        try:
            await self._sock.drain()
        except ConnectionError:
            return
        if self._client is not None and not self._gone.done():
            self._client.resume_reading()

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._gone.done():
            self._gone.set_result(None)
        for timer in (self._timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._sock.close()
        self._conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self._sock.pause_reading()

    def resume_writing(self) -> None:
        self._sock.resume_reading()

    # the upstream side (the pooled socket's owner)
    def on_data(self, data: bytes) -> None:
        before = self._to_client.messages
        self._from_upstream(data)
        COUNTS["bytes_out"] += len(data)
        COUNTS["messages_out"] += self._to_client.messages - before

    def _from_upstream(self, data: bytes) -> None:
        self._last = self._loop.time()
        tracker = self._to_client
        if self._client_close_sent:
            tracker.consume(data)
            self._maybe_done()
            return
        if self._closing_client:
            n = tracker.consume(data, stop_at_boundary=True)
            self._write_client(data[:n])
            if tracker.at_boundary:
                self._send_client_close()
                tracker.consume(data[n:])
            self._maybe_done()
            return
        tracker.consume(data)
        self._write_client(data)

    def on_eof(self) -> None:
        self.close()

    def on_lost(self, exc: Exception | None) -> None:
        self.close()

    # the server's side (as server/websocket.py's WebSocket)
    def go_away(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Rule 4; True if close frames are on their way."""
        self.going_away = True
        if self._gone.done() or self._closing_client:
            return False
        self._closing_client = self._closing_upstream = True
        if self._to_client.at_boundary:
            self._send_client_close()
        if self._to_upstream.at_boundary:
            self._send_upstream_close()
        self._close_timer = self._loop.call_later(timeout, self.close)
        return True

    async def wait_closed(self) -> None:
        await asyncio.shield(self._gone)

    def handler_done(self) -> None:
        self.close()

    def handler_failed(self) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()
        if self._client is not None and not self._gone.done():
            self._client.close()

    # internals
    def _write_client(self, data: bytes) -> None:
        if data and self._client is not None and not self._gone.done():
            self._r.body_bytes_sent += len(data)
            self._client.write(data)

    def _send_client_close(self) -> None:
        if not self._client_close_sent and not self._to_client.close_seen:
            self._write_client(_frame(_GOING_AWAY, masked=False))
        self._client_close_sent = True

    def _send_upstream_close(self) -> None:
        if not self._upstream_close_sent and not self._to_upstream.close_seen:
            self._sock.write(_frame(_GOING_AWAY, masked=True))
        self._upstream_close_sent = True

    def _maybe_done(self) -> None:
        """Both sides answered our 1001 with their close frame: close both."""
        if self._client_close_sent and self._upstream_close_sent \
                and self._to_client.close_seen and self._to_upstream.close_seen:
            self.close()

    def _idle(self) -> None:
        """Rule 5."""
        if self._gone.done():
            return
        idle = self._loop.time() - self._last
        if idle >= self._idle_timeout:
            log.info("WebSocket tunnel to %s idle for %.1f s (proxy_read_timeout): closing",
                     self._sock.peer, idle)
            self.close()
            return
        self._timer = self._loop.call_later(self._idle_timeout - idle, self._idle)
