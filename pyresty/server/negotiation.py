"""Which protocol serves a connection: by ALPN after a TLS handshake, or by the
first bytes on a plain ``http2`` address (h2c with prior knowledge, RFC 9113 §3.3).

Both are protocol objects that live only until the choice is made: they
create the real one (``HttpConnection`` or ``Http2Connection``), hand it the
transport (``transport.set_protocol``) and the bytes already read, and are
gone. A listener that has nothing to choose gets ``HttpConnection`` directly.

Rules
-----
1. After a TLS handshake the negotiated version is counted (``/metrics``
   ``pyresty_tls_handshakes``); a handshake that fails never reaches
   ``connection_made``: the acceptor counts it by reason (server/tls.py rule 5).
2. On a plain ``http2`` address a connection whose first 24 bytes are the
   HTTP/2 preface speaks HTTP/2; anything else is HTTP/1.1, as nginx's
   ``http2 on`` does on a plain port. A client that sends nothing is closed
   after the default server's ``client_header_timeout``.
3. Plain HTTP on a TLS port (``PlainOnTls``) is answered 400 once its head
   arrived, or after ``client_header_timeout`` (server/tls.py rule 6).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from pyresty.server.connection import HttpConnection
from pyresty.server.h2connection import Http2Connection
from pyresty.http.parser import MAX_HEAD, head_ended
from pyresty.http.response import plain_http_on_tls_response
from pyresty.server.tls import H2, PlainHttpRequest, handshake_failed

if TYPE_CHECKING:
    from pyresty.config.model import Listen
    from pyresty.server.state import ServerState

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class TlsChoice:
    """The application protocol of a TLS listener, until ALPN chose one (rule 1)."""

    def __init__(self, state: ServerState, listen: Listen) -> None:
        self.state = state
        self.listen = listen

    def connection_made(self, transport: Any) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        self.state.count_handshake(ssl_object.version() or "unknown")
        proto: Any
        if ssl_object.selected_alpn_protocol() == H2:
            proto = Http2Connection(self.state, self.listen)
        else:
            proto = HttpConnection(self.state, self.listen)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class PlainOnTls:
    """A plain HTTP client on a TLS port: its request head is read, then it gets
    400 and the connection closes (server/tls.py rule 6)."""

    def __init__(self, state: ServerState, listen: Listen) -> None:
        self.state = state
        self.listen = listen
        self.transport: Any = None
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        timeout = self.state.default_server(self.listen).client_header_timeout
        self.timer = self.state.loop.call_later(timeout, self.answer)

    def data_received(self, data: bytes) -> None:
        self.head += data
        if head_ended(self.head) or len(self.head) > MAX_HEAD:
            self.answer()

    def eof_received(self) -> bool:
        self.answer()
        return True

    def answer(self) -> None:
        if self.timer is None:
            return               # answered already
        self.timer.cancel()
        self.timer = None
        self.transport.write(plain_http_on_tls_response())
        self.transport.close()
        handshake_failed(self.state, self.listen, PlainHttpRequest(),
                         self.transport.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class PrefaceChoice:
    """The protocol of a plain ``http2`` listener, until the first bytes chose one (rule 2)."""

    def __init__(self, state: ServerState, listen: Listen) -> None:
        self.state = state
        self.listen = listen
        self.transport: Any = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        timeout = self.state.default_server(self.listen).client_header_timeout
        self.timer = self.state.loop.call_later(timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < len(PREFACE) and PREFACE.startswith(self.buffer):
            return
        if self.timer is not None:
            self.timer.cancel()
        proto: Any
        if self.buffer.startswith(PREFACE):
            proto = Http2Connection(self.state, self.listen)
        else:
            proto = HttpConnection(self.state, self.listen)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.buffer)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
