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

from typing import BinaryIO

from pyresty.http.headers import Headers


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
    started = False             # the response head was handed to the stream
    finished = False            # the response is complete (or abandoned)
    queued = False              # handed to the stream's dispatch queue
    start_time = 0.0
    bytes_sent = 0              # head and body bytes, framing included
    body_bytes_sent = 0         # body bytes as the handler produced them
    body_size = 0               # request body bytes received
    _body: list[bytes] | None = None
    _body_done = False

    def header(self, name: bytes) -> bytes | None:
        """One raw request field (lowercase ``name``), without building Headers."""
        for field, value in self.fields:
            if len(field) == len(name) and field.lower() == name:
                return value
        return None

    # called by the stream as request-body bytes arrive
    def feed_body(self, data: bytes) -> None:
        if self._body is None:
            self._body = []
        self._body.append(data)
        self.body_size += len(data)

    def end_body(self) -> None:
        self._body_done = True

    def take_body(self) -> bytes:
        """The request-body bytes received and not taken yet (streaming them on:
        a proxied body sent as it arrives). ``read_body`` sees only what is left."""
        body = self._body
        if not body:
            return b""
        self._body = None
        return body[0] if len(body) == 1 else b"".join(body)

    @property
    def body_complete(self) -> bool:
        return self._body_done

    @property
    def body_waiting(self) -> bool:
        """Request-body bytes were received and not taken yet."""
        return bool(self._body)


class Stream:
    """What a request needs from the protocol below it (see the module rules)."""

    peer_host = "-"
    closed = False

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

    async def send_file(self, x: Exchange, file: BinaryIO, offset: int, count: int) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def done(self, x: Exchange) -> None:
        raise NotImplementedError
