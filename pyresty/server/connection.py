"""One client connection: HTTP/1.1 keepalive, pipelining, flow control, timeouts.

The connection is the ``Stream`` (stream.py) of the requests it carries: it
writes their heads and bodies in HTTP/1.1 framing (built by http/response.py)
and decides keep-alive.

Rules:
- Requests on a connection are answered in order. The parser keeps reading
  while a request is handled, so pipelined requests queue (``pending``) with
  their bodies; past ``MAX_PIPELINED`` queued requests reading pauses.
- A handler runs as soon as its head is parsed; ``read_body`` waits for the rest.
- Writes go straight to the transport; ``drain`` waits while the transport is
  above its high-water mark (``pause_writing``), so memory per slow client is
  bounded by the transport limit plus one response buffer.
- Timeouts are deadlines checked by the server's sweeper (one timer per
  process, not one per connection): ``client_header_timeout`` while a head
  arrives, ``client_body_timeout`` while a handler waits for body bytes,
  ``keepalive_timeout`` while idle, ``send_timeout`` while writes are paused.
- A response that goes out before its request's body was read keeps the
  connection when the rest of the body is small enough to read and drop
  (nginx's ``ngx_http_discard_request_body``): at most ``persistence.DISCARD_MAX`` bytes
  after the response started, announced by Content-Length or counted as a
  chunked body arrives; past it the connection closes. A client waiting for
  ``100 Continue`` gets it just before the response, as nginx sends it, so it
  sends the body it announced rather than leave the next bytes ambiguous
  (body or next request?). nginx bounds discarding by time only
  (``lingering_time`` 30 s); here the rest must arrive within
  ``client_header_timeout`` of its first byte.
- An answer that leaves request bytes unread (an early 413, a response sent
  before a large body was read) ends with a lingering close (``linger``, as
  nginx's ``ngx_http_lingering_close``): our FIN first, then the client's
  bytes are read and dropped for up to ``LINGERING_TIME`` (``LINGERING_TIMEOUT``
  between reads), so a client that sends everything before reading sees the
  answer instead of a reset.
- A handler streaming the body (``body_chunks``) pauses reading while it is
  behind (``pause_reading``); body bytes past ``client_body_buffer_size`` go
  to a file (``body_spool.py``).
- Graceful shutdown (SPEC §4 step 2): ``stop_keepalive`` makes every later
  response carry ``Connection: close``; an idle connection is closed only
  after a short linger and only when no request bytes are waiting in the
  socket, so a request already on its way gets an answer, not a reset.
- Switching protocols (RFC 9110 §7.8, §15.2.2): the bytes after an Upgrade
  request's head are held (``held``, reading paused) until that request is
  answered; a handler that switches (``take_over``, for a WebSocket) gets
  them, else they are parsed as the next request. Once upgraded, the
  transport's protocol is the new one; the connection stays in the server's
  set (counted, and aborted at the shutdown deadline) until the new protocol
  hands ``connection_lost`` back, its deadlines no longer apply, and the
  request's end (``done``, ``reset``) is the new protocol's to act on.
- A connection holds a request parser while requests come. Going idle with
  the parser between messages, it gives the parser back to the process's pool
  (``_PARSERS``, at most ``PARSER_POOL``), and its next bytes take one from it
  (or a new one): at once when the process holds more than ``PARSER_POOL``
  connections, else after ``PARSER_REST`` idle (the ``REST`` deadline, then
  ``IDLE`` for the rest of ``keepalive_timeout``), so that a few busy
  connections do not pay for the hand-over on every request (~0.3k
  instructions, over 1% of a request). An idle keepalive connection then
  costs its transport and this object, not a parser (~1.8 KiB; issue 17).
  Never during a feed: httptools is still at work on the rest of the bytes
  (``feeding``). A closed connection's parser is not pooled:
  llhttp may have refused its last bytes or seen ``Connection: close``.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from pyresty.errors import ClientBodyTimeout
from pyresty.http import persistence, response
from pyresty.http.headers import Headers
from pyresty.http.parser import UNBOUND, HttpError, RequestParser
from pyresty.server.phases import start_request
from pyresty.server.request import Request
from pyresty.server.stream import Exchange, Stream

if TYPE_CHECKING:
    from pyresty.config.model import Listen
    from pyresty.server.routes import VirtualServer
    from pyresty.server.state import ServerState

log = logging.getLogger("pyresty.http")

MAX_PIPELINED: Final = 16
INF: Final = float("inf")
# Shared by every connection with nothing queued, never appended to: an empty
# deque costs 760 bytes, a quarter of an idle keepalive connection (issue 17)
_NO_PENDING: Final[deque[Any]] = deque()
# nginx's lingering_time and lingering_timeout: how long an answered client may
# go on sending a body nobody reads, in all and between two reads
LINGERING_TIME: Final = 30.0
LINGERING_TIMEOUT: Final = 5.0
# Parsers kept for the next connection that receives bytes (module rules): as
# many as connections this process usually answers at once; past it, an idle
# connection's parser is freed and a busy one gets a new one (~2 µs)
PARSER_POOL: Final = 256
PARSER_REST: Final = 1.0   # s idle before a keepalive connection gives its parser back
_PARSERS: Final[list[RequestParser]] = []
# The parser of a connection that has none (module rules): never fed, it says
# "no head in progress" wherever the connection asks
_NO_PARSER: Final = RequestParser(UNBOUND)


class Deadline(enum.Enum):
    NONE = 0
    IDLE = 1          # keepalive_timeout: close quietly
    HEAD = 2          # client_header_timeout: 408 if bytes arrived, else close
    BODY = 3          # client_body_timeout: the waiting handler gets 408
    SEND = 4          # send_timeout: close
    LINGER = 5        # shutdown: close if still idle
    DISCARD = 6       # lingering close: the client stopped sending (or took too long)
    REST = 7          # PARSER_REST of keepalive_timeout: the parser goes back, then IDLE


class HttpConnection(Stream):
    """The protocol object of one connection (asyncio's Protocol interface,
    without the base class so that mypyc can compile it as a native class)."""

    __slots__ = ("state", "default", "server", "listen", "transport", "parser", "peer_port",
                 "current", "parsing", "pending", "requests", "closing", "chunked", "continue_sent",
                 "_write_paused", "_drain_waiter", "_body_waiter", "deadline", "deadline_kind",
                 "_reading_paused", "shared_listen", "half_closed", "refusal",
                 "send", "discarded", "upgraded", "held", "lingering", "linger_until",
                 "feeding")

    def __init__(self, state: ServerState, listen: Listen) -> None:
        self.state = state
        self.listen = listen
        self.scheme = "https" if listen.ssl else "http"
        # The listen's default server: its header timeout applies to every
        # request (as nginx's does); the keepalive, body and send settings are
        # those of the server the last request's Host chose (``server``).
        self.default: VirtualServer = state.default_server(listen)
        self.server: VirtualServer = self.default
        self.shared_listen = state.shares_listen(listen)
        self.loop = state.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.send: Callable[[bytes], None] = _not_connected   # transport.write, bound once
        self.parser = _NO_PARSER       # one from the pool once bytes arrive (module rules)
        self.feeding = False
        self.peer_host = "-"
        self.peer_port = 0
        self.current: Request | None = None
        self.parsing: Request | None = None
        self.pending: deque[Request] = _NO_PENDING   # a deque of its own once one queues
        self.requests = 0
        self.closed = False
        self.closing = False
        self.half_closed = False
        self.refusal = 0
        self.chunked = False          # the current response's body is chunked
        self.continue_sent = False    # 100 Continue went out for the current request
        self._write_paused = False
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self.deadline = INF
        self.deadline_kind = Deadline.NONE
        self.discarded = 0   # body bytes of an answered request, dropped
        self.upgraded: Any = None   # the protocol that took the connection over (take_over)
        self.held = b""             # bytes after an Upgrade request's head (module rules)
        self.lingering = False       # answered and closing: reading to drop (linger)
        self.linger_until = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send = transport.write  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            # Responses go out in one write; Nagle would only hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_host, self.peer_port = peer[0], peer[1]
        self.state.connection_opened(self)
        self.set_deadline(Deadline.HEAD, self.default.client_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connection_closed(self)
        for waiter in (self._drain_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionResetError("client closed the connection"))
        self._drain_waiter = self._body_waiter = None

    def data_received(self, data: bytes) -> None:
        if self.refusal:
            return
        if self.lingering:   # read and dropped (linger)
            self.deadline = min(self.state.now + LINGERING_TIMEOUT, self.linger_until)
            return
        kind = self.deadline_kind
        if kind is Deadline.REST or kind is Deadline.IDLE:
            self.deadline_kind = Deadline.HEAD
            self.deadline = self.state.now + self.default.client_header_timeout
        parser = self.parser
        if parser is _NO_PARSER:
            parser = self.parser = _take_parser(self)
        self.feeding = True
        try:
            parser.feed(data)
        except HttpError as exc:
            self.refuse(exc.status, exc.reason)
        except Exception:  # a bug of ours: never take the worker down with it
            log.critical("unexpected error while parsing a request from %s", self.peer_host,
                         exc_info=True)
            self.abort()
        self.feeding = False

    def eof_received(self) -> bool | None:
        # The client half-closed (RFC 9112 §9.6 allows it after its last request):
        # answer everything already received, then close.
        self.half_closed = True
        if self.lingering:
            self.close()
            return False
        if self.current is None and not self.pending:
            self.close()
            return False
        return True  # keep our half open until the queue is answered

    def pause_writing(self) -> None:
        self._write_paused = True
        self.set_deadline(Deadline.SEND, self.server.send_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.deadline_kind is Deadline.SEND:
            self.clear_deadline()
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # parser sink
    def on_head(self, method: str, target: bytes, version: str,
                fields: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool) -> None:
        hosts = self.parser.hosts
        if hosts != 1 and (hosts or version == "1.1"):
            # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host and for
            # any request with more than one Host field line.
            raise HttpError(400, "missing or duplicate Host header")
        req = Request(self, method, target, version, fields, keep_alive, upgrade)
        state = self.state
        if state.timing:
            req.start_time = self.loop.time()
        if self.shared_listen:
            state.route_by_host(req, self.listen)
            self.server = req.server
        else:
            server = req.server = self.default
            req.route = server.cache.get(req.path) or server.route_for(req.path)
        self.requests += 1
        if self.requests >= self.server.max_requests:
            req.keep_alive = False
        self.parsing = req
        parser = self.parser
        if parser.chunked or parser.content_length:
            length = parser.content_length
            if length is not None and length > req.route.client_max_body_size > 0:
                raise HttpError(413, "request body too large")
            # A handler may read the body as it arrives (or answer 100-continue
            # first): start it now.
            self._start_or_queue(req)
        # else: started by on_end, in the same feed, once the message is complete

    def on_upgrade(self, rest: bytes) -> None:
        """The bytes after an Upgrade request's head (module rules)."""
        if self.upgraded is not None:     # switched already, within this feed
            self.upgraded.data_received(rest)
            return
        self.held += rest
        self.transport.pause_reading()

    def take_over(self, x: Exchange, fields: Headers, protocol: Any) -> None:
        """Answer ``x`` with ``101 Switching Protocols`` and ``fields``, then hand the
        transport to ``protocol`` (an asyncio protocol): it gets
        ``connection_made`` and any bytes already received after the request."""
        head = response.switching_protocols_head(fields)
        x.status = 101
        x.started = x.finished = True
        x.keep_alive = False
        x.bytes_sent += len(head)
        self.upgraded = protocol
        self.clear_deadline()
        self.send(head)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        rest, self.held = self.held, b""
        if rest:
            protocol.data_received(rest)
        if not self._reading_paused:
            self.transport.resume_reading()

    def _start_or_queue(self, req: Request) -> None:
        req.queued = True
        if self.current is None:
            self.current = req
            self.deadline_kind = Deadline.NONE
            self.deadline = INF
            start_request(self.state, req)
        elif req is not self.current:
            if self.pending is _NO_PENDING:
                self.pending = deque()
            self.pending.append(req)
            if len(self.pending) >= MAX_PIPELINED and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()

    def on_body(self, data: bytes) -> None:
        req = self.parsing
        if req is None or req.finished:
            # Answered without reading its body: discard the rest, as nginx does.
            # A 413 now would be a second response to one request (RFC 9112 §9.3).
            self.discarded += len(data)
            if self.discarded > persistence.DISCARD_MAX:
                self.linger()   # no longer worth keeping: drop the rest, then close
            return
        limit = req.route.client_max_body_size
        if req.body_size + len(data) > limit > 0:
            raise HttpError(413, "request body too large")
        req.feed_body(data)
        if req is self.current and self.deadline_kind is Deadline.BODY:
            self.set_deadline(Deadline.BODY, self.server.client_body_timeout)
        self._wake_body()

    def on_end(self) -> None:
        req = self.parsing
        self.parsing = None
        if req is None:
            return
        req.end_body()
        if self.parser.chunked and req.keep_alive and not self.parser.keeps_alive():
            # A trailer field said Connection: close. llhttp refuses any byte
            # after such a message, so close after the answer rather than
            # answer the next pipelined request with a 400.
            req.keep_alive = False
        if req is self.current:
            if self.deadline_kind is Deadline.BODY:
                self.clear_deadline()
            self._wake_body()
        elif req.queued:
            if req.finished and self.current is None and not self.closed:
                self._wait_for_request()   # the dropped body is over: idle again
        elif self.current is None:   # the common case: a bodiless request, nothing queued
            req.queued = True
            self.current = req
            self.deadline_kind = Deadline.NONE
            self.deadline = INF
            start_request(self.state, req)
        else:
            self._start_or_queue(req)

    # Stream
    def send_head(self, x: Exchange, length: int | None, body: bytes) -> None:
        status = x.status
        fields = x.fields_out
        if x.keep_alive and x.body_complete and not (self.closing or self.half_closed):
            keep_alive = not self.state.draining   # the common case, without a call
        else:
            keep_alive = x.keep_alive and self.keepalive_allowed(x)
        wire = x.fields_wire
        if status == 200 and keep_alive and length is not None and fields is None \
                and wire is None:
            # the common case: a 200 with a known length, kept alive
            head = response.plain_200_head(length)
            if body and x.method != "HEAD":
                x.body_bytes_sent = len(body)
                head += body
            x.bytes_sent = len(head)
            self.chunked = False
            if not self.closed:
                self.send(head)
            return
        if wire is not None:   # a proxied response's fields as the upstream sent them
            head, chunked, keep_alive = response.wire_head(status, wire, length,
                                                           x.http_version == "1.1", keep_alive)
        else:
            head, chunked, keep_alive = response.response_head(status, fields, length,
                                                               x.http_version == "1.1",
                                                               keep_alive)
        if not keep_alive:
            x.keep_alive = False
        self.chunked = chunked
        if body and not (response.bodiless(status) or x.method == "HEAD"):
            x.body_bytes_sent += len(body)
            head += response.chunk(body) if chunked else body
        x.bytes_sent += len(head)
        if not self.closed:
            self.send(head)

    def send_data(self, x: Exchange, data: bytes) -> None:
        if x.method == "HEAD" or response.bodiless(x.status):
            return
        x.body_bytes_sent += len(data)
        if self.chunked:
            data = response.chunk(data)
        x.bytes_sent += len(data)
        if not self.closed:
            self.send(data)

    def end(self, x: Exchange) -> None:
        if self.chunked:
            self.chunked = False
            if x.method != "HEAD":
                x.bytes_sent += len(response.LAST_CHUNK)
                self.write(response.LAST_CHUNK)

    def reset(self) -> None:
        if self.upgraded is not None:
            self.upgraded.handler_failed()
            return
        self.abort()

    def done(self, x: Exchange) -> None:
        self.request_done(x)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.send(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            waiter = self._drain_waiter
            if waiter is None:
                waiter = self._drain_waiter = self.loop.create_future()
            await waiter
        if self.closed:
            raise ConnectionResetError("client closed the connection")

    async def wait_body(self, req: Exchange) -> None:
        self._continue(req)
        while not req.body_complete:
            if self.closed:
                raise ConnectionResetError("client closed the connection")
            if req is self.current:
                self.set_deadline(Deadline.BODY, self.server.client_body_timeout)
            self._body_waiter = self.loop.create_future()
            await self._body_waiter

    def pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and len(self.pending) < MAX_PIPELINED // 2 and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    async def wait_body_data(self, req: Exchange) -> None:
        self._continue(req)
        if req.body_complete or req.body_waiting:
            return
        if self.closed:
            raise ConnectionResetError("client closed the connection")
        if req is self.current:
            self.set_deadline(Deadline.BODY, self.server.client_body_timeout)
        self._body_waiter = self.loop.create_future()
        await self._body_waiter

    def _continue(self, req: Exchange) -> None:
        if persistence.continue_due(req.http_version == "1.1", req.header(b"expect"),
                                    self.continue_sent, req.started):
            self.continue_sent = True
            self.write(response.CONTINUE)

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def keepalive_allowed(self, req: Exchange) -> bool:
        """Whether the connection survives the response starting now
        (persistence.after_response); sends 100 Continue when that is due."""
        complete = req.body_complete
        length = self.parser.content_length
        verdict = persistence.after_response(
            self.closing or (self.half_closed and not self.pending) or self.state.draining,
            complete, None if length is None else length - req.body_size,
            req.http_version == "1.1",
            None if complete or self.continue_sent else req.header(b"expect"),
            self.continue_sent)
        if verdict == persistence.CLOSE:
            return False
        if verdict == persistence.SEND_CONTINUE:
            # The client may be holding the body back: ask for it, so that
            # what follows on this connection is that body.
            self.continue_sent = True
            self.write(response.CONTINUE)
        if not complete:
            self.discarded = 0
        return True

    async def send_file(self, x: Exchange, file: BinaryIO, offset: int, count: int) -> None:
        """Send a file region: zero-copy ``os.sendfile`` whenever nothing is queued
        in the transport; when the socket is full, wait until it is writable
        again (a slow reader holds no copy of the file). Only a region begun
        behind queued bytes goes through the transport's buffered write path
        with ``drain``. Never sendfile under TLS: the plaintext would bypass the
        encryption."""
        sock = None if self.listen.ssl else self.transport.get_extra_info("socket")
        end = offset + count
        if sock is not None and self.transport.get_write_buffer_size() == 0:
            fd = sock.fileno()
            while offset < end and not self.closed:
                try:
                    sent = os.sendfile(fd, file.fileno(), offset, end - offset)
                except (BlockingIOError, InterruptedError):
                    # The socket is full: wait until it takes more, holding no
                    # copy of the file (a slow reader costs no memory, as in nginx)
                    if not await _writable(self.loop, fd, self.server.send_timeout):
                        self.abort()   # send_timeout: the client reads nothing
                        break
                    continue
                except OSError:
                    break
                if sent == 0:
                    break
                offset += sent
        while offset < end and not self.closed:
            data = os.pread(file.fileno(), min(256 * 1024, end - offset), offset)
            if not data:
                raise ConnectionResetError("file shrank while being sent")
            offset += len(data)
            self.transport.write(data)
            await self.drain()
        if self.closed:
            raise ConnectionResetError("client closed the connection")
        x.body_bytes_sent += count
        x.bytes_sent += count

    # called by the server when a request's response is complete
    def request_done(self, req: Exchange) -> None:
        self.current = None
        self.continue_sent = False
        if self.closed:
            return
        if self.upgraded is not None:
            self.upgraded.handler_done()
            return
        if self.held:
            # the Upgrade request was answered over HTTP/1.1: what followed it
            # is the next request (after this call: it may run inside a feed)
            held, self.held = self.held, b""
            if not self._reading_paused:
                self.transport.resume_reading()
            self.loop.call_soon(self._feed_held, held)
        if self.pending and (req.keep_alive or self.half_closed) and not self.closing:
            self._next_request()
        elif self.refusal and req.keep_alive and not self.closing:
            self._send_refusal(self.refusal)   # after every earlier answer
        elif not req.keep_alive or self.closing or self.half_closed:
            if not req.body_complete and not self.half_closed and not self.closing:
                self.linger()   # an early answer: the client may still be sending
            else:
                self.close()
        elif not self.state.draining and not self.parser._in_head:  # the common case
            self._keep_alive()
        else:
            self._wait_for_request()

    def _feed_held(self, data: bytes) -> None:
        if not self.closed and not self.closing:
            self.data_received(data)

    def _next_request(self) -> None:
        if self.pending:
            nxt = self.pending.popleft()
            if self._reading_paused and len(self.pending) < MAX_PIPELINED // 2:
                self._reading_paused = False
                self.transport.resume_reading()
            self.current = nxt
            start_request(self.state, nxt)

    def _wait_for_request(self) -> None:
        state = self.state
        if state.draining:
            self.set_deadline(Deadline.LINGER, state.linger)
        elif self.parser.in_head:
            self.set_deadline(Deadline.HEAD, self.default.client_header_timeout)
        else:
            self._keep_alive()

    def _keep_alive(self) -> None:
        """Wait for the next request: ``REST``, then ``IDLE`` (module rules)."""
        timeout = self.server.keepalive_timeout
        if len(self.state.connections) > PARSER_POOL and not self.feeding:
            self._release_parser()   # many connections: each parser counts
            self.deadline_kind = Deadline.IDLE
            self.deadline = self.state.now + timeout
        elif timeout > PARSER_REST:
            self.deadline_kind = Deadline.REST
            self.deadline = self.state.now + PARSER_REST
        else:
            self.deadline_kind = Deadline.IDLE
            self.deadline = self.state.now + timeout

    def _release_parser(self) -> None:
        """Give the parser back to the pool when it is between messages (module rules)."""
        parser = self.parser
        if parser is not _NO_PARSER and parser.at_rest and not self.feeding:
            self.parser = _NO_PARSER
            if len(_PARSERS) < PARSER_POOL:
                parser.release()
                _PARSERS.append(parser)

    # errors and closing
    def refuse(self, status: int, reason: str) -> None:
        """Answer a request the parser refused, then close (SPEC §11)."""
        log.info("client %s sent a bad request (%d): %s", self.peer_host, status, reason)
        self.state.count_refused(status)
        req = self.current
        bad = self.parsing
        if bad is not None and (bad.finished or bad.started):
            # The bad bytes are in the body of a request that has (or is
            # getting) its response: one response per request (RFC 9112 §9.3),
            # so close once that response is out, as nginx does.
            if bad.finished:
                self.close()
            else:
                self.abort()
            return
        if req is not None and req is not bad:
            # The bad bytes follow complete requests: answer those first, in order
            # (RFC 9112 §9.3.2), then send the refusal from request_done.
            if bad is not None and bad in self.pending:
                self.pending.remove(bad)
            self.refusal = status
            self.transport.pause_reading()
            return
        if req is not None and req.started:
            self.abort()
            return
        if req is not None:
            req.finished = True  # the handler's output, if any, is dropped
        self._send_refusal(status)

    def _send_refusal(self, status: int) -> None:
        self.write(response.error_response(status))
        self.state.log_refused(self.default, self.peer_host, status, len(response.error_body(status)))
        if self.parsing is not None and not self.parsing.body_complete:
            self.linger()      # a 413 before the body: let the client see it
        else:
            self.close()

    def linger(self) -> None:
        """nginx's lingering close: after an answer that leaves request bytes
        unread, send our FIN, then read and drop what the client still sends
        (for at most ``LINGERING_TIME``, ``LINGERING_TIMEOUT`` between reads)
        before closing. Closing with unread bytes would make the kernel send a
        reset, which destroys the answer in the client's receive buffer: a
        client that sends its whole body before reading would never see its 413."""
        if self.closed or self.lingering:
            return
        self.closing = True
        self.lingering = True
        self.linger_until = self.state.now + LINGERING_TIME
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError):   # already closing
            self.close()
            return
        self.set_deadline(Deadline.DISCARD, LINGERING_TIMEOUT)

    def close(self) -> None:
        if not self.closed:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closing = True
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return (self.current is None and not self.pending and not self.parser.in_head
                and self.upgraded is None)

    def set_deadline(self, kind: Deadline, timeout: float) -> None:
        """Arm the deadline ``timeout`` from now, on the server's coarse clock
        (updated every sweep: deadlines are checked no more often than that)."""
        self.deadline_kind = kind
        self.deadline = self.state.now + timeout

    def clear_deadline(self) -> None:
        self.deadline_kind = Deadline.NONE
        self.deadline = INF

    def expire(self) -> None:
        """The sweeper found this connection's deadline passed."""
        kind = self.deadline_kind
        self.clear_deadline()
        if kind is Deadline.HEAD:
            if self.parser.in_head:
                self.write(response.error_response(408))
            self.close()
        elif kind is Deadline.BODY:
            waiter = self._body_waiter
            self._body_waiter = None
            if waiter is not None and not waiter.done():
                waiter.set_exception(ClientBodyTimeout("client_body_timeout"))
            else:
                self.close()
        elif kind is Deadline.LINGER:
            self.close_if_idle()
        elif kind is Deadline.DISCARD:
            self.abort()   # lingering close over: nothing more is read
        elif kind is Deadline.REST:
            # idle for PARSER_REST: the parser goes back to the pool (kept while
            # a dropped body still arrives), the rest of keepalive_timeout begins
            self._release_parser()
            self.set_deadline(Deadline.IDLE, self.server.keepalive_timeout - PARSER_REST)
        elif kind is Deadline.SEND:
            # The client stopped reading: close() would wait for the write
            # buffer to drain, i.e. forever, with the handler parked in drain().
            # nginx's send_timeout closes the connection outright.
            self.abort()
        else:
            self.close()

    def close_if_idle(self) -> bool:
        """Close an idle connection unless request bytes already wait in the socket."""
        if not self.idle or self.closed:
            return False
        if _bytes_waiting(self.transport):
            return False
        self.close()
        return True

    def stop_keepalive(self) -> None:
        """Shutdown step 2 for this connection."""
        if self.idle:
            self.set_deadline(Deadline.LINGER, self.state.linger)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> bool:
    """Until the socket ``fd`` can take more bytes (True), or ``timeout`` (False).

    Watched through a duplicate descriptor: uvloop refuses a watcher on a
    descriptor its transport owns, and epoll tells the two apart."""
    probe = os.dup(fd)
    waiter: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_writer(probe, ready)
    try:
        await asyncio.wait_for(waiter, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(probe)
        os.close(probe)


def _take_parser(conn: HttpConnection) -> RequestParser:
    """A parser for ``conn``, from the pool when it has one (module rules)."""
    if _PARSERS:
        parser = _PARSERS.pop()
        parser.rebind(conn)
        return parser
    return RequestParser(conn)


def _not_connected(data: bytes) -> None:
    raise ConnectionError("no transport yet")


def _bytes_waiting(transport: Any) -> bool:
    """True when the kernel holds unread request bytes for this socket."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        probe = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return False
    try:
        return bool(probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False
    finally:
        probe.close()
