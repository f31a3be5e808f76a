"""HTTP/1.1 response framing: status lines, heads, chunked encoding, error pages.

Everything here returns bytes ready for the transport. Status lines and error
pages are built once at import; the ``Date`` value is rebuilt at most once a
second (RFC 9110 §6.6.1 only asks for one-second resolution).
"""
from __future__ import annotations

import time
from typing import Final
from email.utils import formatdate
from http import HTTPStatus

from pyresty._version import __version__
from pyresty.http.headers import Headers
from pyresty.http.persistence import connection_tokens, response_persists

SERVER: Final = f"pyresty/{__version__}"

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_REASONS[499] = "Client Closed Request"

STATUS_LINES: Final[dict[int, bytes]] = {
    code: f"HTTP/1.1 {code} {reason}\r\n".encode("latin-1") for code, reason in _REASONS.items()
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode("latin-1")
    return line


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class _DateCache:
    """The ``Server`` and ``Date`` header lines, rebuilt when the second changes.

    ``refresh`` runs from the server's sweep tick (four times a second), not on
    every response: reading the clock per request is measurable on the hot path.
    """

    __slots__ = ("second", "lines", "plain_heads")

    def __init__(self) -> None:
        self.second = -1
        self.lines = b""
        self.plain_heads: dict[int, bytes] = {}
        self.refresh()

    def refresh(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.lines = f"Server: {SERVER}\r\nDate: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
            self.plain_heads = {}
        return self.lines


_dates: Final = _DateCache()


def date_lines() -> bytes:
    """The current ``Server`` and ``Date`` header lines."""
    return _dates.lines


def refresh_date() -> bytes:
    return _dates.refresh()


_PLAIN_200: Final = (b"HTTP/1.1 200 OK\r\n%bContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: keep-alive\r\n\r\n")
PLAIN_HEADS_MAX: Final = 256   # distinct body lengths remembered within one second


def plain_200_head(length: int) -> bytes:
    """The head of the commonest response: 200, text/plain, ``length`` bytes,
    kept alive. Built once per length and second: formatting it per request
    cost more than the rest of the response."""
    heads = _dates.plain_heads
    head = heads.get(length)
    if head is None:
        if len(heads) >= PLAIN_HEADS_MAX:
            heads.clear()
        head = heads[length] = _PLAIN_200 % (_dates.lines, length)
    return head


def plain_200_head_with(lines: bytes, length: int) -> bytes:
    """``plain_200_head`` with the field ``lines`` after ``Date``, where
    ``response_head`` puts a response's fields."""
    head = plain_200_head(length)
    cut = len(STATUS_LINES[200]) + len(_dates.lines)
    return head[:cut] + lines + head[cut:]


# RFC 9110 §15.2.1: the interim answer to ``Expect: 100-continue``.
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# RFC 9110 §7.6.1: fields that describe the connection, not the message. This
# layer owns them: what a handler sets under these names is not sent as is
# (a handler's ``Connection: close`` closes the connection after the response).
HOP_BY_HOP: Final = ("connection", "keep-alive", "proxy-connection", "transfer-encoding")


def response_head(status: int, fields: Headers | None, length: int | None, http11: bool,
                  keep_alive: bool) -> tuple[bytes, bool, bool]:
    """The head of a response: ``(bytes, chunked, keep_alive)``.

    ``length`` None means the body streams: chunked for HTTP/1.1, delimited by
    the end of the connection for HTTP/1.0 (RFC 9112 §6.3). A ``Content-Length``
    among ``fields`` frames the body as given. Bodiless statuses (1xx, 204,
    304) get no framing fields. Raises ValueError for a field with CR or LF.
    """
    if status == 200 and keep_alive and length is not None and fields is not None:
        lines = fields.encoded_alone()
        if lines is not None:   # a limited location's hello (Headers.set_encoded)
            return plain_200_head_with(lines, length), False, True
    if not fields:
        return _head(status, b"", False, False, False, length, http11, keep_alive)
    close_requested = False
    if fields.has("connection"):
        values = [value.encode("latin-1") for value in fields.get_all("connection")]
        close_requested = b"close" in connection_tokens(values)
    return _head(status, fields.encode(HOP_BY_HOP), fields.has("content-type"),
                 fields.has("content-length"), close_requested, length, http11, keep_alive)


class WireFields:
    """A response's end-to-end fields as another server sent them: a gateway
    forwards an upstream's fields as their wire lines rather than make them
    ``Headers`` and encode them again (issue 12: that cost a proxied request
    ~14k instructions). ``fields`` are the parsed (name, value) pairs, ``lines``
    the same as ``Name: value\r\n`` lines in order; neither holds a
    connection-specific field (RFC 9110 §7.6.1), a CR or a LF.
    ``headers()`` makes them ``Headers`` for whoever reads or edits them
    (a ``header_filter``): those send the same lines until one is changed."""

    __slots__ = ("fields", "lines", "has_type", "has_length")

    def __init__(self, fields: list[tuple[bytes, bytes]], lines: bytes, has_type: bool,
                 has_length: bool) -> None:
        self.fields = fields
        self.lines = lines
        self.has_type = has_type          # a Content-Type is among them
        self.has_length = has_length      # a Content-Length is: it frames the body

    def headers(self) -> Headers:
        return Headers.from_wire(self.fields, self.lines)


def wire_head(status: int, wire: WireFields, length: int | None, http11: bool,
              keep_alive: bool) -> tuple[bytes, bool, bool]:
    """``response_head`` for fields taken from the wire (``WireFields``): the
    same head, byte for byte, as ``response_head`` makes of ``wire.headers()``."""
    return _head(status, wire.lines, wire.has_type, wire.has_length, False, length, http11,
                 keep_alive)


def _head(status: int, lines: bytes, has_type: bool, has_length: bool, close_requested: bool,
          length: int | None, http11: bool, keep_alive: bool) -> tuple[bytes, bool, bool]:
    """A response head around its fields' ``lines`` (``response_head``'s rules)."""
    parts = [STATUS_LINES.get(status) or status_line(status), _dates.lines, lines]
    chunked = close_delimited = False
    if not bodiless(status):
        if not has_type:
            parts.append(b"Content-Type: text/plain\r\n")
        if has_length:
            pass
        elif length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
        elif http11:
            chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            close_delimited = True
    keep_alive = response_persists(keep_alive, close_requested, close_delimited)
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(parts), chunked, keep_alive


# RFC 9112 §7.1: a chunk is its size in hex, CRLF, the data, CRLF; size 0 ends the body.
LAST_CHUNK: Final = b"0\r\n\r\n"


def switching_protocols_head(fields: Headers) -> bytes:
    """The head of a 101 to a WebSocket upgrade (RFC 9110 §15.2.2, RFC 6455 §4.2.2):
    ``Upgrade`` and ``Connection`` are ours; ``fields`` carry the rest.
    Raises ValueError for a field with CR or LF."""
    return b"".join((STATUS_LINES[101], _dates.lines, fields.encode(HOP_BY_HOP),
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _error_body(status: int) -> bytes:
    title = f"{status} {reason(status)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>{SERVER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode("latin-1")


_ERROR_BODIES: dict[int, bytes] = {}


def error_body(status: int) -> bytes:
    """The small HTML page nginx-style servers send with an error status."""
    body = _ERROR_BODIES.get(status)
    if body is None:
        body = _ERROR_BODIES[status] = _error_body(status)
    return body


def error_response(status: int, *, close: bool = True, head: bool = False,
                   extra: bytes = b"") -> bytes:
    """A complete error response for ``status`` (used where no handler runs)."""
    body = error_body(status)
    lines = [
        status_line(status),
        date_lines(),
        b"Content-Type: text/html\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n",
        extra,
        b"\r\n",
    ]
    if not head:
        lines.append(body)
    return b"".join(lines)


def plain_http_on_tls_response() -> bytes:
    """400 to a plain HTTP request on a TLS port, with nginx's words for it
    (nginx's internal 497, shown as 400); the connection closes after it."""
    body = error_body(400).replace(
        b"<hr>", b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr>", 1)
    return b"".join([status_line(400), date_lines(), b"Content-Type: text/html\r\n",
                     b"Content-Length: %d\r\n" % len(body), b"Connection: close\r\n\r\n", body])


# Responses that never carry a body (RFC 9110 §6.4.1).
def bodiless(status: int) -> bool:
    return status < 200 or status in (204, 304)
