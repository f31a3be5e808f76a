"""``pyresty.websocket``: accept a WebSocket in a handler (SPEC §8b).

    async def echo(r: pyresty.Request) -> None:
        ws = await pyresty.websocket.accept(r, subprotocols=("chat",), compress=True)
        async for message in ws:        # str for text, bytes for binary
            await ws.send(message)

``accept`` checks the opening handshake (http/websocket.py), answers 101 and
takes the connection over from HTTP/1.1 (``HttpConnection.take_over``): from
then on the transport's protocol is the ``WebSocket``, which parses frames
with a wsproto ``Session`` and hands complete messages to the handler.

Rules
-----
1. A refused handshake is answered here (400 or 426, the reason in the
   body; 503 while the server drains or shuts down), logged at info, counted
   (``ws_refused``), and ends the request by raising ``pyresty.Exit``.
2. The request's Task is the WebSocket's: when the handler returns, a socket
   still open is closed with 1000; when it raises, with 1011. The access log
   line is written then, at the end: status 101, the bytes sent to the client,
   the duration, and the bytes received from it.
3. Messages wait in an inbox for ``receive``; past ``MAX_INBOX`` of them the
   socket stops reading, so a handler that does not keep up slows its client
   down instead of growing memory. ``send`` waits while the transport is above
   its high-water mark.
4. Every frame is written whole in one call (http/websocket.py rule 5), so
   any moment between two writes is a frame boundary: a close frame 1001 sent
   at shutdown or on ``pyresty drain`` never lands inside another frame.
5. Shutdown (SPEC §4): ``going_away`` is true from the start of a graceful
   shutdown (and on drain); the socket keeps working until the worker's
   deadline step, where the server sends 1001 to every WebSocket at once and
   gives the closing handshakes what is left of ``cancel_grace``; whatever is
   still open then is aborted with the other connections. ``pyresty drain``
   sends 1001 at once (``go_away``).
6. Closing: after our close frame the peer gets ``CLOSE_TIMEOUT`` (or less at
   shutdown) to answer with its own; then the server closes the TCP
   connection (RFC 6455 §7.1.1: the server closes first). After a protocol
   error (1002, 1007) or a message over the limit (1009) the close frame goes
   out and the connection closes at once.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from pyresty.errors import Exit, ResponseStarted, WebSocketClosed
from pyresty.http.headers import Headers
from pyresty.http.websocket import (DEFAULT_MAX_MESSAGE, Accept, Closed, CloseCode, Session,
                                    check_handshake)
from pyresty.runtime import lifecycle
from pyresty.runtime.identity import current as identity

if TYPE_CHECKING:
    from pyresty.server.request import Request

__all__ = ["WebSocket", "WebSocketClosed", "accept"]

log = logging.getLogger("pyresty.http")

MAX_INBOX: Final = 64          # received messages the handler has not taken before reading pauses
CLOSE_TIMEOUT: Final = 5.0     # how long the peer has to answer our close frame (websockets: 10 s)

# this process's figures, summed into the server's stats (``ws_*`` keys)
COUNTS: Counter[str] = Counter()


def counts() -> dict[str, int]:
    return {f"ws_{name}": n for name, n in COUNTS.items()}


async def accept(r: Request, subprotocols: Sequence[str] = (), *, compress: bool = False,
                 max_message_size: int = DEFAULT_MAX_MESSAGE, headers: Any = None,
                 idle_timeout: float | None = None, ping_interval: float | None = None,
                 ping_timeout: float = 20.0) -> WebSocket:
    """Answer ``r``'s WebSocket handshake with 101 and return the open ``WebSocket``.

    ``subprotocols``: the server's, by preference; ``compress``: negotiate
    permessage-deflate when the client offers it; ``max_message_size``: a
    larger message closes with 1009; ``headers``: more fields for the 101;
    ``idle_timeout``: close (1000) after that long without a byte from the
    client; ``ping_interval``: ping that often and close (1011) when no pong
    came back within ``ping_timeout``.

    Raises ``pyresty.Exit`` after answering a bad handshake with 400 or 426
    (503 while the server drains or shuts down),
    ``ResponseStarted`` when the response already began, ``ValueError`` for a
    non-positive size or interval.
    """
    if r.started or r.finished:
        raise ResponseStarted("cannot accept a WebSocket: the response has started")
    if max_message_size <= 0:
        raise ValueError(f"max_message_size must be positive, not {max_message_size}")
    for what, seconds in (("idle_timeout", idle_timeout), ("ping_interval", ping_interval),
                          ("ping_timeout", ping_timeout)):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"{what} must be positive, not {seconds}")
    take_over = getattr(r.stream, "take_over", None)
    result = check_handshake(r.method, r.http_version, r.fields, subprotocols, compress)
    if take_over is None:    # an HTTP/2 stream (RFC 8441 is not implemented)
        await _refuse(r, 400, "a WebSocket needs an HTTP/1.1 connection", ())
    if not isinstance(result, Accept):
        await _refuse(r, result.status, result.reason, result.fields)
    if getattr(getattr(r.stream, "state", None), "draining", False):
        # drain or shutdown: a socket opened now would only get 1001; the
        # client's reconnect finds a server that stays (rule 1)
        await _refuse(r, 503, "this server is draining; connect again", (("Retry-After", "1"),))
    fields = Headers()
    if headers:
        for name, value in (headers.items() if hasattr(headers, "items") else headers):
            fields.add(name, value)
    for name, value in result.fields:
        fields[name] = value
    ws = WebSocket(r, Session(result.deflate, max_message_size), result.subprotocol,
                   idle_timeout, ping_interval, ping_timeout)
    r.status = 101
    take_over(r, fields, ws)
    COUNTS["accepted"] += 1
    _register(r)
    return ws


def _register(r: Request) -> None:
    """The shutdown step of this process's WebSockets, at first use (rule 5;
    again on later uses: the registry keeps one entry per name)."""
    close_upgraded = getattr(getattr(r.stream, "state", None), "close_upgraded", None)
    if close_upgraded is not None:
        lifecycle.register("websockets", lifecycle.Layer.UPGRADED, deadline=close_upgraded)


async def _refuse(r: Request, status: int, reason: str,
                  fields: Sequence[tuple[str, str]]) -> NoReturn:
    """Answer a bad handshake (rule 1); raises Exit."""
    log.info("WebSocket handshake from %s refused (%d): %s", r.client_addr, status, reason)
    COUNTS["refused"] += 1
    r.status = status
    out = r.headers_out
    out["Content-Type"] = "text/plain"
    for name, value in fields:
        out[name] = value
    r.discard_output()
    await r.say(reason)
    r.finish()
    raise Exit(status)


class WebSocket:
    """One accepted WebSocket: the handler's API and the transport's protocol."""

    def __init__(self, r: Request, session: Session, subprotocol: str | None,
                 idle_timeout: float | None, ping_interval: float | None,
                 ping_timeout: float) -> None:
        self._request = r
        self._conn: Any = r.stream           # the HttpConnection it took over
        self._session = session
        self.subprotocol = subprotocol
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._inbox: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._gone: asyncio.Future[None] = self._loop.create_future()   # the transport is closed
        self._close_timer: asyncio.TimerHandle | None = None
        self._told_to_go = False
        self._idle_timeout = idle_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._last_seen = self._loop.time()
        self._ping_sent: float | None = None
        self._pongs = 0
        self._ticker: asyncio.TimerHandle | None = None

    # -- the handler's API ---------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once a close frame went either way or the connection ended."""
        return not self._session.open or self._gone.done()

    @property
    def close_code(self) -> int | None:
        """Why it ended: the close code received or sent (1006: no close frame), or None."""
        return self._session.close_code

    @property
    def close_reason(self) -> str:
        return self._session.close_reason

    @property
    def going_away(self) -> bool:
        """True once this worker is shutting down or draining: move the client elsewhere."""
        return self._told_to_go or identity.exiting

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except WebSocketClosed:
            raise StopAsyncIteration from None

    async def receive(self) -> str | bytes:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        Raises ``WebSocketClosed`` (with ``code`` and ``reason``) once the
        socket is closed and every message received before has been taken.
        """
        while not self._inbox:
            if self._gone.done() or self._session.close_code is not None:
                raise WebSocketClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if self._reading_paused and len(self._inbox) < MAX_INBOX // 2 and self._transport:
            self._reading_paused = False
            self._transport.resume_reading()
        return message

    async def send(self, message: str | bytes) -> None:
        """Send one message (``str``: text, ``bytes``: binary).

        Raises ``WebSocketClosed`` when the socket is closing or closed,
        ``TypeError`` for anything else than str or bytes.
        """
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
        if self.closed:
            raise WebSocketClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
        self._write(self._session.send(message))
        COUNTS["messages_out"] += 1
        await self._drain()

    async def ping(self, data: bytes = b"") -> None:
        """Send a ping (at most 125 bytes of ``data``); the pong is not awaited."""
        if len(data) > 125:
            raise ValueError("a ping carries at most 125 bytes (RFC 6455 §5.5)")
        if self.closed:
            raise WebSocketClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
        self._write(self._session.ping(bytes(data)))
        await self._drain()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait for it to end (at most ``CLOSE_TIMEOUT``)."""
        self._start_close(code, reason, CLOSE_TIMEOUT)
        await asyncio.shield(self._gone)

    async def wait_closed(self) -> None:
        """Until the connection is closed."""
        await asyncio.shield(self._gone)

    # -- the server's side ---------------------------------------------------
    def go_away(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Close 1001 now (drain, or the shutdown deadline); True if a frame went out."""
        self._told_to_go = True
        if self.closed:
            return False
        COUNTS["going_away"] += 1
        self._start_close(CloseCode.GOING_AWAY, "server going away", timeout)
        return True

    def handler_done(self) -> None:
        """The handler returned (rule 2)."""
        self._start_close(CloseCode.NORMAL, "", CLOSE_TIMEOUT)

    def handler_failed(self) -> None:
        """The handler raised (rule 2)."""
        self._start_close(CloseCode.INTERNAL_ERROR, "handler failed", CLOSE_TIMEOUT)

    def _start_close(self, code: int, reason: str, timeout: float) -> None:
        if self._gone.done():
            return
        frame = self._session.close(code, reason)
        if frame:
            self._write(frame)
        if self._session.finished:
            self._close_transport()
        else:
            self._arm_close_timer(timeout)

    def _arm_close_timer(self, timeout: float) -> None:
        if self._close_timer is not None:
            if self._close_timer.when() <= self._loop.time() + timeout:
                return
            self._close_timer.cancel()
        self._close_timer = self._loop.call_later(timeout, self._close_transport)

    def _close_transport(self) -> None:
        if self._transport is not None and not self._gone.done():
            self._transport.close()

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._idle_timeout is not None or self._ping_interval is not None:
            self._schedule_tick()

    def data_received(self, data: bytes) -> None:
        COUNTS["bytes_in"] += len(data)
        self._request.body_size += len(data)
        self._last_seen = self._loop.time()
        session = self._session
        events = session.receive(data)
        if session.outgoing:
            self._write(bytes(session.outgoing))
            session.outgoing.clear()
        for event in events:
            if isinstance(event, Closed):
                self._on_closed(event)
            else:
                self._inbox.append(event)
                COUNTS["messages_in"] += 1
        if session.pongs != self._pongs:
            self._pongs = session.pongs
            self._ping_sent = None
        self._wake()
        if len(self._inbox) >= MAX_INBOX and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()

    def _on_closed(self, event: Closed) -> None:
        if not event.by_peer:
            log.info("WebSocket from %s closed with %d: %s", self._conn.peer_host, event.code,
                     event.reason)
            COUNTS[f"failed_{event.code}"] += 1
            self._close_transport()     # rule 6: fail the connection
        elif self._session.finished:
            self._close_transport()     # the closing handshake is complete: we close first

    def eof_received(self) -> bool:
        self._session.receive_eof()
        self._wake()
        return False        # close our half too

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.receive_eof()
        if not self._gone.done():
            self._gone.set_result(None)
        for timer in (self._close_timer, self._ticker):
            if timer is not None:
                timer.cancel()
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._conn.connection_lost(exc)     # the HTTP connection's bookkeeping (counted until now)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- internals -------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._gone.done() and data:
            COUNTS["bytes_out"] += len(data)
            self._request.body_bytes_sent += len(data)
            self._transport.write(data)

    async def _drain(self) -> None:
        if self._write_paused and not self._gone.done():
            if self._drain_waiter is None:
                self._drain_waiter = self._loop.create_future()
            await asyncio.shield(self._drain_waiter)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _schedule_tick(self) -> None:
        periods = [p for p in (self._idle_timeout, self._ping_interval) if p is not None]
        self._ticker = self._loop.call_later(min(periods) / 2, self._tick)

    def _tick(self) -> None:
        """Idle timeout and keepalive pings (half a period's resolution)."""
        if self.closed:
            return
        now = self._loop.time()
        if self._idle_timeout is not None and now - self._last_seen >= self._idle_timeout:
            log.info("WebSocket from %s idle for %.1f s: closing", self._conn.peer_host,
                     self._idle_timeout)
            COUNTS["idle_closed"] += 1
            self._start_close(CloseCode.NORMAL, "idle timeout", CLOSE_TIMEOUT)
            return
        if self._ping_sent is not None and now - self._ping_sent >= self._ping_timeout:
            log.info("WebSocket from %s did not answer a ping in %.1f s: closing",
                     self._conn.peer_host, self._ping_timeout)
            COUNTS["ping_timeouts"] += 1
            self._start_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", CLOSE_TIMEOUT)
            return
        if self._ping_interval is not None and self._ping_sent is None \
                and now - self._last_seen >= self._ping_interval:
            self._ping_sent = now
            self._write(self._session.ping(b"pyresty"))
        self._schedule_tick()
