"""The seam between a request and the protocol that carries it.

``Exchange`` is the protocol-facing half of one request/response exchange: the
fields a protocol layer reads (method, version, the response status and
fields, whether the body is complete) and writes (byte counts, keep-alive).
``Request`` (the handler API) extends it; nothing else does.

``Stream`` is what a request needs from below: send the response head, send
body data, end the body, wait for request-body bytes, wait for the peer to
drain, send a file region, reset the exchange, and say that the exchange is
done. The HTTP/1.1 connection implements it (``connection.py``); an HTTP/2
stream or an upgraded connection will implement it the same way, so every
phase runs unchanged on each (nginx does the same: an HTTP/2 stream creates an
ordinary request).

Rules
-----
1. A ``Stream`` owns the wire format: status lines, framing
   (Content-Length, chunked, close-delimited), ``Connection``, ``100
   Continue``, HEAD and bodiless-status suppression. Nothing above it writes
   protocol bytes.
2. ``send_head`` is called once per exchange, before any ``send_data``;
   ``length`` None means the body streams. It raises (``ValueError``) before
   writing anything when a field cannot be sent, so the caller can still
   answer 500.
3. ``reset`` ends one exchange abnormally (HTTP/1.1 closes the connection,
   HTTP/2 will send RST_STREAM); ``done`` hands the stream back after the
   exchange's response is complete.

Both are plain (mypyc-compiled) classes rather than ``typing.Protocol``s so
that compiled calls through them are native.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from pyresty.http.headers import Headers
from pyresty.http.response import WireFields
from pyresty.server.body_spool import FileSpool

if TYPE_CHECKING:
    import asyncio


class Exchange:
    """What a Stream and the request above it share about one exchange.

    Fields start as class attributes and become instance attributes only
    when an exchange changes them: the request constructor is on the hot path.
    """

    method: str
    http_version: str
    keep_alive: bool            # the stream may turn it off; never on again
    fields: list[tuple[bytes, bytes]]   # request header fields, raw
    status = 200
    fields_out: Headers | None = None   # response header fields (None: none set)
    # instead of fields_out, an upstream's fields as it sent them (a proxied
    # response nobody has read the fields of: ``out_fields`` makes them Headers)
    fields_wire: WireFields | None = None
    started = False             # the response head was handed to the stream
    finished = False            # the response is complete (or abandoned)
    queued = False              # handed to the stream's dispatch queue
    start_time = 0.0
    bytes_sent = 0              # head and body bytes, framing included
    body_bytes_sent = 0         # body bytes as the handler produced them
    body_size = 0               # request body bytes received
    _body: list[bytes] | None = None
    _body_done = False
    # where body bytes go instead of _body: a FileSpool past client_body_buffer_size,
    # or the ChunkQueue of a handler iterating body_chunks() (body_spool.py)
    _sink: Any = None
    _buffered = 0               # body bytes in _body (what take_body has not taken)

    def out_fields(self) -> Headers | None:
        """The response fields as ``Headers`` (None: none set); a proxied
        response's ``fields_wire`` become ``fields_out`` here, on first use."""
        fields = self.fields_out
        if fields is None:
            wire = self.fields_wire
            if wire is not None:
                self.fields_wire = None
                fields = self.fields_out = wire.headers()
        return fields

    def header(self, name: bytes) -> bytes | None:
        """One raw request field (lowercase ``name``), without building Headers."""
        for field, value in self.fields:
            if len(field) == len(name) and field.lower() == name:
                return value
        return None

    # called by the stream as request-body bytes arrive
    def feed_body(self, data: bytes) -> None:
        self.body_size += len(data)
        sink = self._sink
        if sink is not None:
            sink.feed(data)
            return
        if self._body is None:
            self._body = []
        self._body.append(data)
        self._buffered += len(data)
        limit, folder = self.body_buffer()
        if self._buffered > limit:
            self._sink = FileSpool(folder, self._body)
            self._body = None

    def body_buffer(self) -> tuple[int, str]:
        """(client_body_buffer_size, client_body_temp_path): past the size, the
        body goes to a file in the folder (``Request`` answers from its route)."""
        return 16 * 1024, "client_body_temp"

    def release_body(self) -> None:
        """The request is over: remove its spool file, drop what is queued."""
        sink = self._sink
        if sink is not None:
            sink.close()

    def end_body(self) -> None:
        self._body_done = True

    def take_body(self) -> bytes:
        """The request-body bytes received and not taken yet (streaming them on:
        a proxied body sent as it arrives). ``read_body`` sees only what is left."""
        sink = self._sink
        if sink is not None:
            return sink.take() or b""   # spooled while the peer was slower than the client
        body = self._body
        if not body:
            return b""
        self._body = None
        self._buffered = 0
        return body[0] if len(body) == 1 else b"".join(body)

    @property
    def body_complete(self) -> bool:
        return self._body_done

    @property
    def body_waiting(self) -> bool:
        """Request-body bytes were received and not taken yet."""
        sink = self._sink
        if sink is not None:
            return bool(sink.waiting)
        return bool(self._body)


class Stream:
    """What a request needs from the protocol below it (see the module rules)."""

    peer_host = "-"
    scheme = "http"             # "https" when the connection came through a TLS listener
    closed = False
    # the loop the exchange runs on: asyncio.get_running_loop() asks the kernel
    # for the pid on every call in CPython 3.11 (a getpid syscall per call)
    loop: asyncio.AbstractEventLoop

    def send_head(self, x: Exchange, length: int | None, body: bytes) -> None:
        raise NotImplementedError

    def send_data(self, x: Exchange, data: bytes) -> None:
        raise NotImplementedError

    def end(self, x: Exchange) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    async def wait_body(self, x: Exchange) -> None:
        """Until the whole request body arrived (``100 Continue`` first if asked)."""
        raise NotImplementedError

    async def wait_body_data(self, x: Exchange) -> None:
        """Until more request-body bytes arrived or the body ended (``100 Continue``
        first if asked); for streaming a body on as it arrives."""
        raise NotImplementedError

    def pause_reading(self) -> None:
        """Stop reading from the peer (a handler streaming the body is behind)."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    async def send_file(self, x: Exchange, file: BinaryIO, offset: int, count: int) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def done(self, x: Exchange) -> None:
        raise NotImplementedError
