"""HTTP/2 (RFC 9113): one protocol object per connection, one ``Stream`` per request.

The ``h2`` package does the protocol work (frames, HPACK, flow-control
accounting, the stream state machines); this module feeds it the bytes that
arrive, acts on its events, and writes what it has to send. Each request
stream becomes an ordinary ``Request`` under the same phases as HTTP/1.1
(``phases.start_request``): handlers see only ``r.http_version == "2.0"``.

Rules
-----
1. Flow control both ways. What the streams write goes out in one write
   per loop iteration (``schedule_flush``); control frames go at once. Response bytes wait in the stream (``H2Stream``)
   until its window and the connection's allow them; ``drain`` waits while
   more than ``STREAM_HIGH_WATER`` bytes wait or the transport is paused, so
   a slow stream parks its own handler only and memory per stream is bounded.
   Request-body bytes are acknowledged as they arrive, up to
   ``client_max_body_size`` (past it: 413, or a reset once answered).
2. ``SETTINGS``: at most ``MAX_CONCURRENT_STREAMS`` (128, nginx's
   ``http2_max_concurrent_streams``) open streams, header lists up to
   ``MAX_HEADER_LIST_SIZE`` (32 KiB, the HTTP/1.1 limit of SPEC §11). A
   stream past the limit is refused alone (``REFUSED_STREAM``, RFC 9113
   §5.1.2), the others go on; refusals count as resets (rule 4).
3. One failed stream is reset (``RST_STREAM``) and the others go on; a
   protocol error of the connection is answered with ``GOAWAY`` and the code
   h2 chose (``COMPRESSION_ERROR`` for bad HPACK, RFC 9113 §4.3), then close.
4. Floods are counted per connection and closed with ``GOAWAY
   ENHANCE_YOUR_CALM``: streams reset by the client before their answer
   (rapid reset, CVE-2023-44487), ``PING`` and ``SETTINGS`` frames, each past
   ``FLOOD_LIMIT`` per ``FLOOD_WINDOW``; and streams whose handlers still run
   after the client reset them count against twice the concurrency limit, so
   resetting cannot make a worker run unbounded handlers. h2 itself ends a
   ``CONTINUATION`` flood (64 frames) and an oversized header list.
5. Graceful shutdown (reload, quit, drain; seed 001, nginx trac #1106):
   ``GOAWAY`` with the last stream id the server saw, written by this module
   (h2 would refuse to send anything after its own ``GOAWAY``); streams up to
   that id complete, later ones are refused with ``REFUSED_STREAM`` (the
   client may retry them elsewhere), and the connection closes when the last
   one is done, or at ``worker_shutdown_timeout`` with everything else.
6. Deadlines, checked by the server's sweep as for HTTP/1.1 (and a
   handler waiting for body bytes gets ``ClientBodyTimeout`` after
   ``client_body_timeout``, as on HTTP/1.1):
   ``client_header_timeout`` for the preface, ``keepalive_timeout`` while no
   stream is open (then ``GOAWAY`` and close), ``send_timeout`` while the
   transport is paused.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import HPACKError
from hyperframe.frame import GoAwayFrame

from pyresty.errors import ClientBodyTimeout
from pyresty.http import response
from pyresty.server.connection import Deadline
from pyresty.server.phases import start_request
from pyresty.server.request import Request
from pyresty.server.stream import Exchange, Stream

if TYPE_CHECKING:
    from pyresty.config.model import Listen
    from pyresty.server.state import ServerState

log = logging.getLogger("pyresty.http")

MAX_CONCURRENT_STREAMS: Final = 128
MAX_HEADER_LIST_SIZE: Final = 32 * 1024
STREAM_HIGH_WATER: Final = 64 * 1024   # response bytes a stream holds before drain() waits
FILE_CHUNK: Final = 64 * 1024
# Floods (rule 4): nginx 1.25.3 answers rapid reset by bounding new streams per
# read event; counting per second keeps browsers (a few resets per navigation)
# far below the limit while an attacker's thousands per second trip it at once.
FLOOD_LIMIT: Final = 100
FLOOD_WINDOW: Final = 1.0
INF: Final = float("inf")

NO_ERROR: Final = 0
PROTOCOL_ERROR: Final = 1
INTERNAL_ERROR: Final = 2
REFUSED_STREAM: Final = 7
CANCEL: Final = 8
COMPRESSION_ERROR: Final = 9
ENHANCE_YOUR_CALM: Final = 11

_CODE_NAMES: Final = {code.value: code.name for code in h2.errors.ErrorCodes}

# RFC 9113 §8.2.2: connection-specific fields must not appear in HTTP/2
_CONNECTION_FIELDS: Final = frozenset(("connection", "keep-alive", "proxy-connection",
                                       "transfer-encoding", "upgrade"))

# Inbound header lists are checked by h2 (RFC 9113 §8.2); outbound ones are
# built here already lowercased and checked (_response_headers), and h2's
# second pass over them cost a quarter of a request's CPU.
_H2_CONFIG: Final = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                              validate_inbound_headers=True,
                                              validate_outbound_headers=False,
                                              normalize_outbound_headers=False)


class Flood:
    """Events of one kind in the current window; ``hit`` says when there were too many."""

    def __init__(self) -> None:
        self.start = 0.0
        self.count = 0

    def hit(self, now: float) -> bool:
        if now - self.start > FLOOD_WINDOW:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count > FLOOD_LIMIT


class H2Stream(Stream):
    """One request/response exchange on an HTTP/2 connection (rule 1)."""

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.stream_id = stream_id
        self.peer_host = conn.peer_host
        self.scheme = conn.scheme
        self.closed = False          # reset, or the connection is gone
        self.ended = False           # END_STREAM sent
        self.end_wanted = False      # the response ends once ``pending`` is out
        self.remaining = -1          # body bytes still due when the length was given
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.request: Request | None = None
        self.answered = False        # done(): the handler side is over
        self._drain_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None

    # Stream
    def send_head(self, x: Exchange, length: int | None, body: bytes) -> None:
        status = x.status
        headers = _response_headers(status, x.out_fields(), length)
        conn = self.conn
        if self.closed:
            return
        bodiless = x.method == "HEAD" or response.bodiless(status)
        if bodiless or (length == 0 and not body):
            conn.h2.send_headers(self.stream_id, headers, end_stream=True)
            self.ended = True
            conn.schedule_flush()
            return
        conn.h2.send_headers(self.stream_id, headers)
        if length is not None:
            self.remaining = length
        if body:
            self.send_data(x, body)
        else:
            conn.schedule_flush()

    def send_data(self, x: Exchange, data: bytes) -> None:
        if self.ended or self.closed or not data:
            return
        if x.method == "HEAD" or response.bodiless(x.status):
            return
        x.body_bytes_sent += len(data)
        x.bytes_sent += len(data)
        self.pending.append(data)
        self.pending_size += len(data)
        if self.remaining >= 0:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.end_wanted = True
        self.conn.pump(self)

    def end(self, x: Exchange) -> None:
        if self.ended or self.closed:
            return
        self.end_wanted = True
        self.conn.pump(self)

    async def drain(self) -> None:
        conn = self.conn
        while not self.closed and (self.pending_size > STREAM_HIGH_WATER or conn.write_paused):
            waiter = self._drain_waiter
            if waiter is None:
                waiter = self._drain_waiter = conn.loop.create_future()
            await waiter
        if self.closed:
            raise ConnectionResetError("the client reset the stream")

    async def wait_body(self, x: Exchange) -> None:
        """Until the whole body arrived; ``ClientBodyTimeout`` when the client
        sends nothing for ``client_body_timeout`` (the request ends with 408)."""
        req = self.request
        timeout = (req.server if req is not None else self.conn.server_conf).client_body_timeout
        loop = self.conn.loop
        while not x.body_complete:
            if self.closed:
                raise ConnectionResetError("the client reset the stream")
            waiter = self._body_waiter = loop.create_future()
            timer = loop.call_later(timeout, _body_timeout, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    async def send_file(self, x: Exchange, file: BinaryIO, offset: int, count: int) -> None:
        """Send a file region through the stream: read, frame, wait for the
        windows (no sendfile: the bytes must be framed, and encrypted under TLS)."""
        end = offset + count
        while offset < end:
            if self.closed:
                raise ConnectionResetError("the client reset the stream")
            data = os.pread(file.fileno(), min(FILE_CHUNK, end - offset), offset)
            if not data:
                raise ConnectionResetError("file shrank while being sent")
            offset += len(data)
            self.send_data(x, data)
            await self.drain()

    def reset(self) -> None:
        """End this exchange abnormally: RST_STREAM, the connection goes on (rule 3)."""
        if not self.closed:
            self.conn.reset_stream(self, INTERNAL_ERROR)

    def done(self, x: Exchange) -> None:
        self.answered = True
        self.conn.stream_done(self)

    # called by the connection
    def wake(self) -> None:
        for waiter in (self._drain_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._drain_waiter = self._body_waiter = None

    def kill(self) -> None:
        """The stream is gone (reset by either side, or the connection lost)."""
        self.closed = True
        self.pending = []
        self.pending_size = 0
        for waiter in (self._drain_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionResetError("the stream was reset"))
        self._drain_waiter = self._body_waiter = None


class Http2Connection:
    """The protocol object of one HTTP/2 connection (asyncio's Protocol
    interface, without the base class so that mypyc compiles it natively)."""

    def __init__(self, state: ServerState, listen: Listen) -> None:
        self.state = state
        self.listen = listen
        self.scheme = "https" if listen.ssl else "http"
        self.loop = state.loop
        self.server_conf = state.default_server(listen)
        self.shared_listen = state.shares_listen(listen)
        self.h2 = h2.connection.H2Connection(config=_H2_CONFIG)
        self.transport: Any = None
        self.peer_host = "-"
        self.streams: dict[int, H2Stream] = {}     # handler side not done yet
        self.closed = False
        self.write_paused = False
        self.upgraded: Any = None    # never: HTTP/2 has no Upgrade (RFC 9113 §8.6)
        self.closing = False
        self.flush_scheduled = False
        self.going_away = False      # GOAWAY sent (rule 5)
        self.last_stream_id = 0
        self.deadline = INF
        self.deadline_kind = Deadline.NONE
        self.resets = Flood()
        self.pings = Flood()
        self.settings_frames = Flood()

    @property
    def idle(self) -> bool:
        """No stream open (what the acceptor's room-making looks for)."""
        return not self.streams

    @property
    def current(self) -> H2Stream | None:
        """A stream in progress, if any (the server's figures count active connections)."""
        for stream in self.streams.values():
            return stream
        return None

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_host = peer[0]
        h2conn = self.h2
        h2conn.local_settings = _settings(MAX_CONCURRENT_STREAMS)
        # h2 applies MAX_HEADER_LIST_SIZE to its decoder only once the client
        # acknowledged it; the limit holds from the first header block
        h2conn.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        h2conn.initiate_connection()      # announces the settings
        # h2 ends the whole connection at one stream past the announced limit, and
        # drops the other streams of that read; RFC 9113 §5.1.2 makes it a stream
        # error: h2 holds a looser bound, on_request refuses past ours (rule 2)
        h2conn.local_settings = _settings(2 * MAX_CONCURRENT_STREAMS)
        self.flush()
        self.state.connection_opened(self)
        if not self.going_away:
            self.set_deadline(Deadline.HEAD, self.server_conf.client_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.kill()
        self.state.connection_closed(self)

    def eof_received(self) -> bool | None:
        return None   # close our side too: HTTP/2 has no half-closed connections

    def pause_writing(self) -> None:
        self.write_paused = True
        self.set_deadline(Deadline.SEND, self.server_conf.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.deadline_kind is Deadline.SEND:
            self.idle_or_clear()
        for stream in list(self.streams.values()):
            stream.wake()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.protocol_error(exc)
            return
        try:
            for event in events:
                if self.closing:
                    break     # closed for a flood: the rest of the read is not served
                self.on_event(event)
        except Exception:   # a bug of ours: never take the worker down with it
            log.critical("unexpected error on an HTTP/2 connection from %s", self.peer_host,
                         exc_info=True)
            self.abort()
            return
        self.flush()

    # h2 events
    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            self.on_data(event.stream_id, event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            self.on_stream_end(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self.on_window(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.on_reset(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self.settings_frames.hit(self.loop.time()):
                self.calm("SETTINGS flood")
            else:
                self.on_window(0)   # INITIAL_WINDOW_SIZE may have grown every window
        elif isinstance(event, h2.events.PingReceived):
            if self.pings.hit(self.loop.time()):
                self.calm("PING flood")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.going_away and stream_id > self.last_stream_id:
            self.refuse_stream(stream_id)   # rule 5
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS and self.open_streams() >= MAX_CONCURRENT_STREAMS:
            # rule 2: past SETTINGS_MAX_CONCURRENT_STREAMS, this stream only
            self.refuse_stream(stream_id)
            log.info("HTTP/2 client %s opened more than %d streams at once: stream %d refused",
                     self.peer_host, MAX_CONCURRENT_STREAMS, stream_id)
            if self.resets.hit(self.loop.time()):
                self.calm("streams refused past SETTINGS_MAX_CONCURRENT_STREAMS")
            return
        if len(self.streams) >= 2 * MAX_CONCURRENT_STREAMS:
            # handlers of streams the client reset still run (rule 4)
            self.refuse_stream(stream_id)
            if self.resets.hit(self.loop.time()):
                self.calm("streams refused while their handlers run (rapid reset)")
            return
        if self.deadline_kind is not Deadline.SEND:
            self.clear_deadline()
        stream = H2Stream(self, stream_id)
        method, target, fields = _request_fields(headers)
        req = Request(stream, method, target, "2.0", fields, True, False)
        if self.state.timing:
            req.start_time = self.loop.time()
        stream.request = req
        self.streams[stream_id] = stream
        self.state.h2_streams_total += 1
        state = self.state
        if self.shared_listen:
            state.route_by_host(req, self.listen)
        else:
            req.server = self.server_conf
            req.route = self.server_conf.route_for(req.path)
        if ended:
            req.end_body()
        else:
            length = req.header(b"content-length")
            limit = req.route.client_max_body_size
            if length is not None and length.isdigit() and int(length) > limit > 0:
                self.refuse(stream, 413)
                return
        req.queued = True
        start_request(state, req)

    def open_streams(self) -> int:
        """Streams open as the client counts them: not reset, not answered in full
        (h2's own count, read while a read's events are handled, includes streams
        of that read not yet seen here)."""
        return sum(1 for stream in self.streams.values() if not stream.closed)

    def refuse_stream(self, stream_id: int) -> None:
        """RST_STREAM REFUSED_STREAM, unless the client reset it first (same read)."""
        try:
            self.h2.reset_stream(stream_id, REFUSED_STREAM)
        except h2.exceptions.StreamClosedError:
            pass

    def on_data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        if flow_controlled:
            self.h2.acknowledge_received_data(flow_controlled, stream_id)
        stream = self.streams.get(stream_id)
        if stream is None or stream.request is None or stream.closed:
            return
        req = stream.request
        limit = req.route.client_max_body_size
        if req.body_size + len(data) > limit > 0:
            if req.started or req.finished:
                self.reset_stream(stream, CANCEL)
            else:
                self.refuse(stream, 413)
            return
        req.feed_body(data)
        stream.wake()

    def on_stream_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.request is not None:
            stream.request.end_body()
            stream.wake()

    def on_window(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self.pump(stream)
        else:
            for stream in list(self.streams.values()):
                if stream.pending or stream.end_wanted:
                    self.pump(stream)

    def on_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        req = stream.request
        if req is not None and not req.finished:
            if self.resets.hit(self.loop.time()):
                self.calm("streams reset before their answer (rapid reset)")
        stream.kill()

    # writing
    def pump(self, stream: H2Stream) -> None:
        """Send what the windows allow of ``stream``'s pending bytes (rule 1)."""
        if stream.closed or self.closed:
            return
        h2conn = self.h2
        sid = stream.stream_id
        try:
            while stream.pending:
                window = min(h2conn.local_flow_control_window(sid), h2conn.max_outbound_frame_size)
                if window <= 0:
                    break
                data = stream.pending[0]
                if len(data) > window:
                    stream.pending[0] = data[window:]
                    data = data[:window]
                else:
                    stream.pending.pop(0)
                stream.pending_size -= len(data)
                last = not stream.pending and stream.end_wanted
                h2conn.send_data(sid, data, end_stream=last)
                if last:
                    stream.ended = True
            if not stream.pending and stream.end_wanted and not stream.ended:
                h2conn.end_stream(sid)
                stream.ended = True
        except h2.exceptions.StreamClosedError:
            stream.kill()
        self.schedule_flush()
        if stream.pending_size <= STREAM_HIGH_WATER:
            stream.wake()
        if stream.ended and stream.answered:
            self.forget(stream)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write what the streams produced once, after the loop's current callbacks:
        the responses of many streams in one write (one TLS record, one syscall)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def stream_done(self, stream: H2Stream) -> None:
        """The handler side of ``stream`` is over (its response may still be queued)."""
        if stream.ended or stream.closed:
            self.forget(stream)

    def forget(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if not self.streams:
            if self.going_away:
                self.close()
            elif not self.closed:
                self.set_deadline(Deadline.IDLE, self.server_conf.keepalive_timeout)

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except h2.exceptions.StreamClosedError:
            pass
        stream.kill()
        self.flush()
        if stream.answered:
            self.forget(stream)

    def refuse(self, stream: H2Stream, status: int) -> None:
        """Answer ``status`` without running a handler, then stop the upload."""
        self.state.count_refused(status)
        body = response.error_body(status)
        headers = [(b":status", str(status).encode()), (b"content-type", b"text/html"),
                   (b"content-length", str(len(body)).encode())]
        self.h2.send_headers(stream.stream_id, headers)
        self.h2.send_data(stream.stream_id, body, end_stream=True)
        stream.ended = True
        self.state.log_refused(self.server_conf, self.peer_host, status, len(body))
        self.reset_stream(stream, NO_ERROR)   # RFC 9113 §8.1: the rest of the body is not wanted
        stream.answered = True
        self.forget(stream)

    # errors, shutdown and deadlines
    def protocol_error(self, exc: Exception) -> None:
        """A connection error (rule 3): GOAWAY with h2's code; COMPRESSION_ERROR
        for a header block HPACK cannot decode, ENHANCE_YOUR_CALM for a
        CONTINUATION flood (h2 says PROTOCOL_ERROR for both)."""
        code = int(getattr(exc, "error_code", PROTOCOL_ERROR) or PROTOCOL_ERROR)
        if code == PROTOCOL_ERROR:
            if isinstance(exc.__cause__, HPACKError):
                code = COMPRESSION_ERROR
            elif "continuation" in str(exc).lower():   # h2's frame_buffer.CONTINUATION_BACKLOG
                code = ENHANCE_YOUR_CALM
        # h2 queued its GOAWAY for most errors but not for a bad preface: the
        # connection ends here, so one GOAWAY of ours replaces whatever it queued
        self.h2.data_to_send()
        data = self.goaway_frame(code)
        if code == ENHANCE_YOUR_CALM:
            self.state.h2_floods_total += 1
            log.warning("client %s: HTTP/2 flood (%s): closing the connection (ENHANCE_YOUR_CALM)",
                        self.peer_host, exc)
        else:
            log.info("client %s: HTTP/2 protocol error (%s): %s", self.peer_host,
                     _CODE_NAMES.get(code, str(code)), exc)
            self.state.count_refused(400)
        if not self.closed:
            self.transport.write(data)
        self.close()

    def calm(self, reason: str) -> None:
        """A flood (rule 4): GOAWAY ENHANCE_YOUR_CALM, close."""
        log.warning("client %s: %s: closing the HTTP/2 connection (ENHANCE_YOUR_CALM)",
                    self.peer_host, reason)
        self.state.h2_floods_total += 1
        self.flush()
        if not self.closed:
            self.transport.write(self.goaway_frame(ENHANCE_YOUR_CALM))
        for stream in list(self.streams.values()):
            stream.kill()
        self.abort_after_write()

    def goaway_frame(self, code: int) -> bytes:
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = code
        return bytes(frame.serialize())

    def go_away(self) -> None:
        """Rule 5: tell the client the last stream served; close once it is done."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.last_stream_id = self.h2.highest_inbound_stream_id
        self.flush()
        self.transport.write(self.goaway_frame(NO_ERROR))
        if not self.streams:
            self.close()

    def stop_keepalive(self) -> None:
        """Shutdown step 2 (reload, quit, drain): GOAWAY."""
        if self.transport is not None:
            self.go_away()

    def close(self) -> None:
        if not self.closed:
            self.closing = True
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closing = True
            self.transport.abort()

    def abort_after_write(self) -> None:
        # close() lets the GOAWAY out; the sweep aborts it if the client reads nothing
        self.close()
        self.set_deadline(Deadline.SEND, self.server_conf.send_timeout)

    def set_deadline(self, kind: Deadline, timeout: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.state.now + timeout

    def clear_deadline(self) -> None:
        self.deadline_kind = Deadline.NONE
        self.deadline = INF

    def idle_or_clear(self) -> None:
        if self.streams:
            self.clear_deadline()
        else:
            self.set_deadline(Deadline.IDLE, self.server_conf.keepalive_timeout)

    def expire(self) -> None:
        """The sweeper found this connection's deadline passed (rule 6)."""
        kind = self.deadline_kind
        self.clear_deadline()
        if kind is Deadline.IDLE or kind is Deadline.HEAD:
            if not self.going_away:
                self.go_away()
            self.close()
        else:
            self.abort()


def _body_timeout(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ClientBodyTimeout("client_body_timeout"))


def _settings(max_streams: int) -> h2.settings.Settings:
    return h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
    })


def _request_fields(headers: list[tuple[bytes, bytes]]) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    """Method, target and regular fields of a request; ``:authority`` becomes
    ``Host`` when there is none (RFC 9113 §8.3.1), so routing is the same."""
    method = "GET"
    target = b"/"
    authority: bytes | None = None
    has_host = False
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value.decode("latin-1")
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
        else:
            if name == b"host":
                has_host = True
            fields.append((name, value))
    if authority is not None and not has_host:
        fields.insert(0, (b"host", authority))
    return method, target, fields


_date_cache: list[bytes] = [b"", b""]


def _date() -> bytes:
    """The ``Date`` value of the current ``Server``/``Date`` lines (response.py)."""
    lines = response.date_lines()
    if lines is not _date_cache[0]:
        _date_cache[0] = lines
        _date_cache[1] = lines.split(b"Date: ", 1)[1].split(b"\r\n", 1)[0]
    return _date_cache[1]


_SERVER: Final = response.SERVER.encode("latin-1")


def _response_headers(status: int, fields: Any, length: int | None) -> list[tuple[bytes, bytes]]:
    """The response's header list; raises ValueError for a value that cannot be
    sent (the Stream rule 2), before anything is written."""
    headers = [(b":status", b"%d" % status), (b"server", _SERVER), (b"date", _date())]
    has_type = has_length = False
    if fields is not None:
        for name, value in fields.fields():
            lowered = name.lower()
            if lowered in _CONNECTION_FIELDS:
                continue
            raw = str(value).encode("latin-1")
            if b"\r" in raw or b"\n" in raw or b"\0" in raw:
                raise ValueError(f"invalid character in header field {name!r}")
            if not lowered or lowered[0] == ":" or " " in lowered or ":" in lowered:
                raise ValueError(f"invalid header field name {name!r}")
            if lowered == "content-type":
                has_type = True
            elif lowered == "content-length":
                has_length = True
            headers.append((lowered.encode("latin-1"), raw))
    if not response.bodiless(status):
        if not has_type:
            headers.append((b"content-type", b"text/plain"))
        if length is not None and not has_length:
            headers.append((b"content-length", b"%d" % length))
    return headers
