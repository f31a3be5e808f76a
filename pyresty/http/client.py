"""HTTP/1.1, client role (RFC 9112): request heads out, responses in. Sans-IO.

The upstream side of a gateway (proxying, cosockets speaking HTTP, health
checks) writes requests with ``request_head`` and feeds what the peer sends
to a ``ResponseParser``, which calls its sink back:
``on_response(status, fields, keep_alive)`` once per final response
(after any ``on_interim(status, fields)`` for 1xx), ``on_body(data)`` for each
piece of the body, then ``on_end()``. ``feed`` returns nothing; anything
malformed raises ``UpstreamError`` (the proxy answers 502 and does not reuse
the connection).

Rules: what is a response body (RFC 9112 §6.3), in the order they apply
-------------------------------------------------------------------------
0. One request is in flight at a time (``expect(method)`` before each; a
   gateway does not pipeline to its upstreams, nor does nginx). Bytes after
   the end of the response are a fault of the peer: they are dropped and the
   connection is marked not ``reusable`` (nginx: "upstream sent more data
   than specified").
1. A response to HEAD, and any 1xx, 204 or 304 response, has no body, whatever
   its Content-Length or Transfer-Encoding say. llhttp knows the status
   rules and goes from one response to the next on its own, so one llhttp
   parser serves every response of a connection; but it cannot be told the
   request was HEAD, so for HEAD the parser cuts the byte stream itself at
   the end of each head and hands that head alone to a parser of its own,
   never feeding llhttp the bytes of a body it must not expect. 1xx heads
   (other than 101) are interim: the final head follows.
2. 101 Switching Protocols ends HTTP on the connection:
   ``on_upgrade(fields, rest)`` receives the 101's fields and the bytes after
   its head (the start of the tunnel, never parsed as HTTP) and the parser
   takes no more input.
3. Otherwise ``Transfer-Encoding: chunked`` frames the body (the fields of
   its trailer section are dropped: nginx passes none on either), else
   ``Content-Length``, else the body runs to the end of the connection: the
   owner calls ``eof()`` when the peer closes, which ends such a body (and is
   an error for any other framing left incomplete: a truncated response).
4. The response keeps the connection open only if HTTP/1.1 without
   ``Connection: close`` (or HTTP/1.0 with ``keep-alive``) and framed by length
   or chunks; a close-delimited body never leaves a reusable connection.
5. Limits are the request parser's (parser.py): a head over ``MAX_HEAD`` (the
   bytes received while it is incomplete) or a field line over
   ``MAX_FIELD_LINE`` is refused, as are more than ``MAX_FIELDS`` fields.
"""
from __future__ import annotations

from typing import Final, Protocol

import httptools

from pyresty.http.headers import Headers
from pyresty.http.parser import MAX_FIELD_LINE, MAX_FIELDS, MAX_HEAD
from pyresty.http.persistence import connection_tokens, message_persists, response_persists, upgraded
from pyresty.http.response import HOP_BY_HOP, WireFields

_HEAD_ENDS: Final = (b"\r\n\r\n", b"\n\n")
_NO_OPTIONS: Final[set[bytes]] = set()    # the Connection options of a head without one


class UpstreamError(Exception):
    """A response that cannot be accepted (the reason says why)."""


class ResponseSink(Protocol):
    def on_interim(self, status: int, fields: list[tuple[bytes, bytes]]) -> None: ...

    def on_response(self, status: int, fields: list[tuple[bytes, bytes]],
                    keep_alive: bool) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    def on_upgrade(self, fields: list[tuple[bytes, bytes]], rest: bytes) -> None: ...


def request_head(method: str, target: str, host: str, fields: Headers | None,
                 length: int | None) -> tuple[bytes, bool]:
    """The head of a request: ``(bytes, chunked)``.

    ``length`` None with a method that sends a body means chunked; the
    caller's hop-by-hop fields (``Connection``, ``Transfer-Encoding``, ...) are
    not sent: this layer frames the message and asks for keep-alive. Raises
    ValueError for CR/LF in a field or a target with a space or control byte.
    """
    if any(c in target for c in " \r\n\t") or not target:
        raise ValueError(f"invalid request target {target!r}")
    parts = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    if fields is None or not fields.has("host"):
        parts.append(f"Host: {host}\r\n".encode("latin-1"))
    if fields:
        parts.append(fields.encode(HOP_BY_HOP))
    chunked = False
    if length is not None:
        if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
            parts.append(b"Content-Length: %d\r\n" % length)
    elif method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
        chunked = True
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"Connection: keep-alive\r\n\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != head.count(b"\r\n"):
        raise ValueError("CR or LF in a request header field")
    return head, chunked


# What a gateway never forwards of an upstream's response: RFC 9110 §7.6.1's
# hop-by-hop fields, and Date and Server, which nginx hides (proxy_hide_header)
# and the gateway writes itself
RESPONSE_DROP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"date", b"server"})
# What forward_fields and the response parser make of a field name
_KEEP: Final = 0
_DROP: Final = 1
_CONNECTION: Final = 2
_LENGTH: Final = 3
_TYPE: Final = 4
_CHUNKED: Final = 5
_KINDS: Final = {b"connection": _CONNECTION, b"content-length": _LENGTH,
                 b"content-type": _TYPE, b"transfer-encoding": _CHUNKED}


def _names_by_size(kinds: dict[bytes, int]) -> list[list[tuple[bytes, bytes, int]]]:
    """``kinds`` (lowercase name -> kind) indexed by the names' length, each as
    (usual spelling, lowercase, kind): ``_name_kind`` compares a name with the
    few of its length, the usual spelling first, instead of hashing or
    lowering every name (issue 12: ~0.4k instructions a field)."""
    table: list[list[tuple[bytes, bytes, int]]] = [[] for _ in range(max(map(len, kinds)) + 1)]
    for name, kind in kinds.items():
        usual = b"TE" if name == b"te" else name.title()
        table[len(name)].append((usual, name, kind))
    return table


def _name_kind(name: bytes, table: list[list[tuple[bytes, bytes, int]]]) -> int:
    """The kind ``table`` (``_names_by_size``) gives ``name``, whatever its case; 0 if none."""
    size = len(name)
    if size >= len(table):
        return 0
    known = table[size]
    if not known:
        return 0
    for usual, _, kind in known:
        if name == usual:
            return kind
    lowered = name.lower()
    for _, lowercase, kind in known:
        if lowered == lowercase:
            return kind
    return 0


_RESPONSE_KINDS: Final = _names_by_size(
    {name: _KINDS.get(name, _DROP) for name in RESPONSE_DROP} | _KINDS)


def _field_kind(name: bytes) -> int:
    """What ``forward_fields`` and the response parser make of a field ``name``."""
    return _name_kind(name, _RESPONSE_KINDS)


# What a forwarded request never carries as the client sent it: RFC 9110 §7.6.1's
# hop-by-hop fields, and the fields ``ForwardHead`` writes itself
FORWARD_DROP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"host", b"content-length", b"expect", b"x-real-ip", b"x-forwarded-for",
    b"x-forwarded-proto"})
_BODILESS_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_FORWARDED: Final = 6        # _name_kind of X-Forwarded-For in ForwardHead.build
_PROTO_HTTP: Final = b"X-Forwarded-Proto: http\r\n"
_PROTO_HTTPS: Final = b"X-Forwarded-Proto: https\r\n"


class ForwardHead:
    """The head of a request forwarded to an upstream (a reverse proxy's), built
    per request from the client's fields around lines fixed once per location.

    ``host`` is the upstream's ``Host``; ``set_fields`` override fields of the
    same name (an empty value removes the field, nginx's ``proxy_set_header``).
    The client's hop-by-hop fields and those its ``Connection`` names are
    dropped; ``X-Forwarded-For`` gets the client appended; ``X-Real-IP`` and
    ``X-Forwarded-Proto`` are set; the framing is ``Content-Length``, or chunked
    when the length is unknown (``BodyWriter`` frames the body to match);
    HTTP/1.0 asks the upstream to close. ``upgrade`` (a protocol name, e.g.
    ``b"websocket"``) asks the upstream to switch protocols (RFC 9110 §7.8):
    ``Upgrade`` and ``Connection: Upgrade`` replace the keep-alive framing.
    """

    def __init__(self, host: bytes, set_fields: list[tuple[bytes, bytes]], http11: bool) -> None:
        self.set_names = frozenset(name.lower() for name, _ in set_fields)
        self.set_lines = b"".join([b"%s: %s\r\n" % (n, v) for n, v in set_fields if v])
        if b"host" not in self.set_names:
            self.set_lines = b"Host: %s\r\n" % host + self.set_lines
        self.drop = FORWARD_DROP | self.set_names
        # the client's fields build drops (_name_kind: no lower() per field)
        self.drop_kinds = _names_by_size({name: _FORWARDED if name == b"x-forwarded-for"
                                         else _CONNECTION if name == b"connection" else _DROP
                                         for name in self.drop})
        self.real_ip = b"x-real-ip" not in self.set_names
        self.forwarded_for = b"x-forwarded-for" not in self.set_names
        self.forwarded_proto = b"x-forwarded-proto" not in self.set_names
        self.http11 = http11

    def build(self, method: str, target: str, fields: list[tuple[bytes, bytes]], client: str,
              scheme: str, length: int | None, upgrade: bytes = b"") -> bytes:
        kinds = self.drop_kinds
        # pieces joined once at the end: bytes % and + cost several times as much
        parts = [method.encode("latin-1"), b" ", target.encode("latin-1"), b" HTTP/1.1\r\n",
                 self.set_lines]
        forwarded: bytes | None = None
        connection_tokens: set[bytes] | None = None
        for field in fields:
            kind = _name_kind(field[0], kinds)
            if kind:
                if kind == _FORWARDED:
                    value = field[1]
                    forwarded = value if forwarded is None else forwarded + b", " + value
                elif kind == _CONNECTION:
                    connection_tokens = {t.strip().lower() for t in field[1].split(b",")}
                continue
            parts.append(field[0])
            parts.append(b": ")
            parts.append(field[1])
            parts.append(b"\r\n")
        if connection_tokens:   # fields the client's Connection named are hop-by-hop too
            parts = self._without_named(fields, parts, connection_tokens)
        address = client.encode("latin-1")
        if self.real_ip:
            parts.append(b"X-Real-IP: ")
            parts.append(address)
            parts.append(b"\r\n")
        if self.forwarded_for:
            parts.append(b"X-Forwarded-For: ")
            if forwarded:
                parts.append(forwarded)
                parts.append(b", ")
            parts.append(address)
            parts.append(b"\r\n")
        if self.forwarded_proto:
            parts.append(_PROTO_HTTPS if scheme == "https" else _PROTO_HTTP if scheme == "http"
                         else b"X-Forwarded-Proto: %s\r\n" % scheme.encode("latin-1"))
        if length is None:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif length or method not in _BODILESS_METHODS:
            parts.append(b"Content-Length: %d\r\n" % length)
        if upgrade:
            parts.append(b"Upgrade: ")
            parts.append(upgrade)
            parts.append(b"\r\nConnection: Upgrade\r\n\r\n")
        else:
            parts.append(b"\r\n" if self.http11 else b"Connection: close\r\n\r\n")
        return b"".join(parts)

    def _without_named(self, fields: list[tuple[bytes, bytes]], parts: list[bytes],
                       tokens: set[bytes]) -> list[bytes]:
        """``build``'s lines without those whose name the client's Connection
        listed (the request line and the set lines are lines too)."""
        lines = [b"".join(parts[:4]), self.set_lines]
        for name, value in fields:
            if name.lower() not in self.drop:
                lines.append(name + b": " + value + b"\r\n")
        if len(lines) > 2:
            lines = [p for p in lines if p.partition(b":")[0].lower() not in tokens]
        return lines


_KEEP_ALIVE: Final = b"keep-alive"


def _is_keep_alive(value: bytes) -> bool:
    """A ``Connection`` value that is exactly the ``keep-alive`` option."""
    return value == _KEEP_ALIVE or (len(value) == 10 and value.lower() == _KEEP_ALIVE)


def forward_fields(fields: list[tuple[bytes, bytes]], drop_length: bool) -> WireFields:
    """The fields of an upstream's response that a gateway passes on, as wire
    lines (``WireFields``): without ``RESPONSE_DROP``'s, without those the
    upstream's ``Connection`` names (hop-by-hop too, RFC 9110 §7.6.1), and
    without ``Content-Length`` when ``drop_length`` (the gateway frames the
    body itself: a body filter may change its size). Repeated fields stay
    as they came, in order."""
    parts: list[bytes] = []
    kept: list[tuple[bytes, bytes]] = []
    has_type = has_length = False
    named: list[bytes] | None = None
    for field in fields:
        name = field[0]
        kind = _field_kind(name)
        if kind != _KEEP:
            if kind == _DROP or kind == _CHUNKED:
                continue
            if kind == _CONNECTION:
                if not _is_keep_alive(field[1]):     # it may name fields
                    named = [field[1]] if named is None else named + [field[1]]
                continue
            if kind == _LENGTH:
                if drop_length:
                    continue
                has_length = True
            else:
                has_type = True
        kept.append(field)
        parts.append(name)
        parts.append(b": ")
        parts.append(field[1])
        parts.append(b"\r\n")
    if named is not None:
        tokens = connection_tokens(named)
        if any(name.lower() in tokens for name, _ in kept):
            return forward_fields([(n, v) for n, v in kept if n.lower() not in tokens], False)
    return WireFields(kept, b"".join(parts), has_type, has_length)


_LAST_CHUNK: Final = b"0\r\n\r\n"


class BodyWriter:
    """A request body as the client role sends it, in the framing its head
    announced (``ForwardHead``, ``request_head``): with a ``length`` the bytes
    go as they are (``Content-Length``); without one (``None``: the head said
    ``Transfer-Encoding: chunked``) each piece is a chunk and ``end`` writes
    the last chunk, with no trailer fields (RFC 9112 §7.1).

    Raises ValueError when more bytes are framed than ``length`` announced, or
    ``end`` comes before all of them: the upstream would read the rest as the
    next request (request smuggling).
    """

    __slots__ = ("chunked", "left")

    def __init__(self, length: int | None) -> None:
        self.chunked = length is None
        self.left = 0 if length is None else length

    def frame(self, data: bytes) -> bytes:
        """``data``'s bytes on the wire (nothing for an empty piece: a
        zero-size chunk would end a chunked body)."""
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if len(data) > self.left:
            raise ValueError(f"{len(data)} body bytes with {self.left} left of Content-Length")
        self.left -= len(data)
        return data

    def end(self) -> bytes:
        """What ends the body on the wire."""
        if self.chunked:
            return _LAST_CHUNK
        if self.left:
            raise ValueError(f"the body ended {self.left} bytes short of its Content-Length")
        return b""


class ResponseParser:
    """Responses to the requests written on one connection, in order (module rules).

    One per connection, kept with it across its requests: its llhttp parser
    goes from one response to the next as llhttp itself does (rule 1), so a
    pooled connection's next response costs no new parser."""

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink
        self._method: str | None = None   # the request in flight (rule 0)
        self._head = b""          # bytes of a HEAD response's head still arriving
        # the connection's parser; a HEAD response's head gets one of its own (rule 1)
        self._stream = httptools.HttpResponseParser(self)
        self._parser = self._stream   # the one calling back now
        self._fields: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._head_size = 0       # bytes of the head arriving (MAX_HEAD)
        self._in_head = False
        self._in_body = False
        self._until_close = False
        self._unasked = False     # a message nobody asked for began (rule 0)
        self.done = False         # an upgrade ended HTTP on this connection
        self.reusable = True      # False once the peer sent bytes past a response

    def expect(self, method: str) -> None:
        """A request with ``method`` was sent: its response comes next."""
        if self._method is not None:
            raise RuntimeError("a response is still expected on this connection")
        self._method = method

    @property
    def idle(self) -> bool:
        """No response is expected or arriving (a clean point to pool the connection)."""
        return self._method is None and not self._head and not self._in_body \
            and not self._in_head

    def feed(self, data: bytes) -> None:
        if self.done:
            raise UpstreamError("data after the end of HTTP on this connection")
        if self._in_body:
            if self._until_close:
                self.sink.on_body(data)
                return
        elif self._method is None:
            self.reusable = False         # rule 0: nothing was asked for
            return
        elif self._method == "HEAD":
            self._feed_heads(data)
            return
        else:
            self._head_size += len(data)
        try:
            self._stream.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[exc.args[0]:] if exc.args else b"")
            return
        except httptools.HttpParserError as exc:
            if self._unasked:
                return                    # rule 0: garbage after the response
            where = "body" if self._in_body else "head"
            raise UpstreamError(f"invalid response {where}: {exc}") from None
        if self._in_head and self._head_size > MAX_HEAD:
            raise UpstreamError("response head too large")

    def eof(self) -> None:
        """The peer closed its side."""
        if self._in_body:
            if not self._until_close:
                raise UpstreamError("the upstream closed the connection mid-body")
            self._in_body = False
            self.sink.on_end()
        elif self._head or self._in_head:
            raise UpstreamError("the upstream closed the connection mid-head")

    def _switch(self, rest: bytes) -> None:
        """Rule 2: llhttp stopped after a 101's head."""
        if self._status != 101:
            raise UpstreamError(f"upstream switched protocols with {self._status}")
        self.done = True
        self._method = None
        self.sink.on_upgrade(self._fields, rest)

    # a HEAD response's head, cut from the byte stream (rule 1)
    def _feed_heads(self, data: bytes) -> None:
        while data and self._head_expected():
            data = self._feed_head(data)
        if data:
            self.reusable = False         # rule 0: bytes past a HEAD response

    def _head_expected(self) -> bool:
        # a call: _feed_head changes these, and mypyc would otherwise keep the
        # attribute types narrowed by feed's checks
        return not self._in_body and self._method is not None

    def _feed_head(self, data: bytes) -> bytes:
        start = max(0, len(self._head) - 3)
        self._head += data
        end = -1
        for mark in _HEAD_ENDS:
            at = self._head.find(mark, start)
            if at >= 0 and (end < 0 or at + len(mark) < end):
                end = at + len(mark)
        if end < 0:
            if len(self._head) > MAX_HEAD:
                raise UpstreamError("response head too large")
            return b""
        head, rest = self._head[:end], self._head[end:]
        self._head = b""
        if len(head) > MAX_HEAD:
            raise UpstreamError("response head too large")
        parser = self._parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            self._switch(rest)
            return b""
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"invalid response head: {exc}") from None
        finally:
            self._parser = self._stream   # it refers back to this object: no cycle left
        if self._in_body:                 # rule 1: whatever its fields say, no body
            self._in_body = False
            self.sink.on_end()
        return rest

    def _persistence(self, parser: httptools.HttpResponseParser) -> tuple[bool, str]:
        """Rule 4's first half (persistence.py) and rule 3's framing, in one
        pass over the fields: ``(keep_alive, "chunked" | "length" | "close")``.
        The version is read only when the verdict depends on it: it costs a
        string (~2k instructions), and so does splitting ``Connection``."""
        connection: list[bytes] | None = None
        chunked = length = False
        for field in self._fields:
            kind = _field_kind(field[0])
            if kind == _CONNECTION:
                connection = [field[1]] if connection is None else connection + [field[1]]
            elif kind == _CHUNKED:
                chunked = True
            elif kind == _LENGTH:
                length = True
        framed = "chunked" if chunked else "length" if length else "close"
        if connection is None:
            if parser.should_keep_alive():
                # llhttp keeps HTTP/1.0 alive only for a Connection: keep-alive: 1.1
                return True, framed
            return message_persists(parser.get_http_version() == "1.1", _NO_OPTIONS), framed
        if len(connection) == 1 and _is_keep_alive(connection[0]):
            return True, framed           # HTTP/1.1 and 1.0 alike (RFC 9112 §9.3)
        return message_persists(parser.get_http_version() == "1.1",
                                connection_tokens(connection)), framed

    def http_version(self) -> str:
        """The HTTP version of the response being reported (in ``on_response``)."""
        return self._parser.get_http_version()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._method is None:
            self._unasked = True          # rule 0: a second response nobody asked for
            self.reusable = False
            return
        self._fields = []
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._unasked or not self._in_head:
            return                        # a trailer section's fields are dropped (rule 3)
        if len(name) + len(value) + 2 > MAX_FIELD_LINE:
            raise UpstreamError("response header line too long")
        if value:
            last = value[-1]
            if last == 32 or last == 9:       # llhttp drops the leading OWS, not the trailing
                value = value.rstrip(b" \t")
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self._unasked:
            return
        self._in_head = False
        self._head_size = 0
        fields = self._fields
        if len(fields) > MAX_FIELDS:
            raise UpstreamError("too many response header fields")
        parser = self._parser
        status = self._status = parser.get_status_code()
        if 100 <= status < 200:
            if not upgraded(status):      # 101: llhttp stops after it (_switch)
                self.sink.on_interim(status, fields)
            return
        keep_alive, framed = self._persistence(parser)
        self._method = None
        # HEAD (its own parser), 204 and 304 have no body: llhttp ends them at once
        self._until_close = framed == "close" and parser is self._stream \
            and status not in (204, 304)
        self._in_body = True
        self.sink.on_response(status, fields,
                              response_persists(keep_alive, False, framed == "close"))

    def on_body(self, body: bytes) -> None:
        if self._in_body and self._parser is self._stream:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._unasked or not self._in_body:
            return                        # interim (1xx) and 101 heads end here too
        if self._parser is self._stream:
            self._in_body = False
            self.sink.on_end()
