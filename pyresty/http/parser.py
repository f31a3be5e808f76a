"""HTTP/1.1 request parsing with limits (RFC 9112), on top of httptools.

Theory of operation: the connection feeds every received byte string to
``RequestParser.feed``; the parser calls the sink back with one ``on_head``
per request, ``on_body`` for each piece of its body and ``on_end`` when the
message is complete. Anything malformed raises ``HttpError(status)`` out of
``feed``, after which the parser is dead and the connection must answer
``status`` (when it can) and close.

Limits and why (nginx's defaults, which operators know):
- request target over 8 KiB -> 414 (nginx ``large_client_header_buffers 4 8k``);
- one header line over 8 KiB -> 431 (the same 8k buffer);
- all header lines over 32 KiB, or more than 100 fields -> 431 (4 x 8k; Apache's
  ``LimitRequestFields 100``);
- ``Transfer-Encoding`` together with ``Content-Length``, a bad chunk size, or
  two different ``Content-Length`` values -> 400: llhttp refuses them, which is
  what stops request smuggling (RFC 9112 §6.3).
httptools buffers a header line until it ends, so bytes that arrive while a head
is incomplete are counted too and the head is cut at ``MAX_HEAD`` even if no
line ever ends.
"""
from __future__ import annotations

from typing import Final, Protocol

from types import SimpleNamespace

import httptools

# Final: compiled (setup.py), constants are inlined instead of looked up by name
MAX_TARGET: Final = 8 * 1024
MAX_FIELD_LINE: Final = 8 * 1024
MAX_FIELDS_SIZE: Final = 32 * 1024
MAX_FIELDS: Final = 100
MAX_HEAD: Final = MAX_TARGET + MAX_FIELDS_SIZE + 1024


_OWS: Final = (0x20, 0x09)  # SP, HTAB
_CONNECTION_FIELDS: Final = (b"connection", b"proxy-connection")   # llhttp reads both
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class HttpError(Exception):
    """A request the server must refuse with ``status`` and then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestSink(Protocol):
    def on_head(self, method: str, target: bytes, version: str,
                fields: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...


class RequestParser:
    """Feeds bytes to httptools and turns its callbacks into sink calls."""

    __slots__ = ("_parser", "_target", "_fields",
                 "_in_head", "_head_bytes", "_callbacks", "content_length", "chunked", "hosts",
                 "_began", "_feed_size", "_feed_data", "_get_method", "_get_http_version",
                 "_should_keep_alive", "_should_upgrade", "_on_head")

    def __init__(self, sink: RequestSink) -> None:
        self._on_head = sink.on_head
        # httptools looks its callbacks up once, by name: body and message-end
        # events go straight to the sink, with no frame of ours in between.
        self._callbacks = SimpleNamespace(
            on_message_begin=self.on_message_begin, on_url=self.on_url,
            on_header=self.on_header, on_headers_complete=self.on_headers_complete,
            on_body=sink.on_body, on_message_complete=sink.on_end)
        self._new_parser()
        self._target = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        self._began = False
        self._feed_size = 0
        self.content_length: int | None = None   # of the request whose head was parsed last
        self.chunked = False
        self.hosts = 0   # Host field lines of that request (RFC 9112 §3.2 is the server's rule)

    def _new_parser(self) -> None:
        # bound once: a method looked up by name on every request is measurable
        parser = self._parser = httptools.HttpRequestParser(self._callbacks)
        self._feed_data = parser.feed_data
        self._get_method = parser.get_method
        self._get_http_version = parser.get_http_version
        self._should_keep_alive = parser.should_keep_alive
        self._should_upgrade = parser.should_upgrade

    def keeps_alive(self) -> bool:
        """llhttp's keep-alive verdict now: after a chunked body it has also
        read the trailer fields, where a ``Connection: close`` turns it off."""
        return self._should_keep_alive()

    @property
    def in_head(self) -> bool:
        """True while a request head has begun and is not complete."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises HttpError for a request that must be refused."""
        self._began = False
        self._feed_size = len(data)
        try:
            self._feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops at a request asking for Upgrade (RFC 9110 §7.8). No
            # handler switches protocols yet, so the connection stays HTTP/1.1:
            # go on with a fresh parser from the first byte after that request.
            rest = data[exc.args[0]:] if exc.args else b""
            self._new_parser()
            if rest:
                self.feed(rest)
            return
        except httptools.HttpParserCallbackError as exc:
            # httptools keeps what our callback raised as the context
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise HttpError(400, f"malformed request: {exc}") from None
        if self._in_head and not self._began:
            # Count only feeds that lie wholly inside one head: a head that began
            # in this feed shares it with the end of the previous message.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                # a target over MAX_TARGET has already failed in on_url (414)
                raise HttpError(431, "request header fields too large")

    def _fail(self, status: int, reason: str) -> None:
        raise HttpError(status, reason)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._began = self._in_head = True
        self._head_bytes = 0
        if self._fields:
            self._fields = []   # the trailer fields of the previous message

    def on_url(self, piece: bytes) -> None:
        target = self._target + piece if self._target else piece   # one piece, nearly always
        if len(target) > MAX_TARGET:
            self._fail(414, "request target too long")
        self._target = target

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per field line: keep it to the append. Limits, framing
        # fields and whitespace are settled once per head in on_headers_complete.
        fields = self._fields
        fields.append((name, value))
        if not self._in_head:   # a trailer field (chunked body): the same limits, now
            _check_field_sizes(fields)
            if len(fields) > MAX_FIELDS:
                self._fail(431, "request trailer fields too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        target = self._target
        self._target = b""
        fields, self._fields = self._fields, []   # trailers must not join them (RFC 9110 §6.5.1)
        if len(fields) > MAX_FIELDS:
            self._fail(431, "request header fields too large")
        if not (self._began and self._feed_size <= MAX_FIELD_LINE):
            _check_field_sizes(fields)   # a head this feed holds whole cannot break them
        content_length = None
        chunked = padded = upgrade_field = connection_field = False
        hosts = 0
        for name, value in fields:
            length = len(name)
            if length == 14 or length == 17:  # len("content-length"), len("transfer-encoding")
                lowered = name.lower()
                if lowered == b"content-length":
                    content_length = int(value.rstrip(b" \t"))   # llhttp checked the digits
                elif lowered == b"transfer-encoding":
                    chunked = True
            elif length == 4 and (name == b"Host" or name.lower() == b"host"):
                hosts += 1
            elif length == 7 and name.lower() == b"upgrade":
                upgrade_field = True
            elif (length == 10 or length == 16) and name.lower() in _CONNECTION_FIELDS:
                connection_field = True
            if value and value[-1] in _OWS:
                padded = True
        if padded:
            fields = _strip_ows(fields)
        self.content_length = content_length
        self.chunked = chunked
        self.hosts = hosts
        method = self._get_method()
        # llhttp's verdict, asked only when it can be yes (RFC 9110 §7.8, §9.3.6)
        upgrade = (upgrade_field or method == b"CONNECT") and self._should_upgrade()
        if upgrade and (chunked or content_length) and method != b"CONNECT":
            # httptools hands every byte after this head to the new protocol; no
            # one switches, so the body would be parsed as the next request.
            self._fail(400, "a body on an Upgrade request")
        keep_alive = self._should_keep_alive()
        if keep_alive and not connection_field:
            # llhttp accepts 0.9, 1.0, 1.1 and 2.0, and keeps alive by default
            # only 1.1 (without a Connection field, nothing else turns keep-alive
            # on): the version is known without get_http_version's formatting,
            # the costliest call of this function.
            version = "1.1"
        else:
            version = self._get_http_version()
            if version != "1.0" and version != "1.1":
                # llhttp also accepts "HTTP/2.0" and "HTTP/0.9" request lines; as
                # nginx, answer 505 rather than serve them as HTTP/1.x
                self._fail(505, f"HTTP/{version} is not supported")
        self._on_head(_METHODS.get(method) or method.decode("ascii"), target,
                      version, fields, keep_alive, upgrade)


def _check_field_sizes(fields: list[tuple[bytes, bytes]]) -> None:
    total = 0
    for name, value in fields:
        size = len(name) + len(value) + 4
        if size > MAX_FIELD_LINE:
            raise HttpError(431, "request header line too long")
        total += size
    if total > MAX_FIELDS_SIZE:
        raise HttpError(431, "request header fields too large")


def _strip_ows(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 9110 §5.5: trailing whitespace is not part of a field value."""
    return [(name, value.rstrip(b" \t")) for name, value in fields]
