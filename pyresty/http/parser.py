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

The request line, where llhttp and nginx differ (nginx 1.22's answers, checked):
- ``Transfer-Encoding`` is refused before the head is handed on, so no handler
  ever runs for it (``_transfer_coding_error``): exactly ``chunked`` (any case)
  is the only coding served; 400 where the value cannot frame a request even
  with every coding known (RFC 9112 §6.3: ``chunked`` missing, not last or
  twice; bad syntax; HTTP/1.0, §6.1); 501 for a list that ends in ``chunked``
  with a coding we do not implement (``gzip, chunked``; §6.1). nginx answers
  501 for every value but ``chunked`` and 400 for HTTP/1.0.
- The target must be origin-form (``/...``) or absolute-form
  (``http://host/...``, RFC 9112 §3.2.2; the connection routes by its host).
  ``*`` (asterisk-form, ``OPTIONS *`` included) and ``CONNECT`` are 400, as nginx.
- A method llhttp does not know (``FOO``) is 501 (RFC 9110 §9.1; nginx instead
  hands an upper-case method it does not know to the location); one that is
  not an upper-case token (``get``, a TLS ClientHello) is 400, as nginx.
- ``HTTP/1.x`` with x > 1 is served as HTTP/1.1 (RFC 9112 §2.3), other majors
  get 505 (nginx does both). llhttp refuses those versions; the head is fed
  again, located as below, to a parser taking any version (``_reversion``)
  for that one head: on every other head the fast path infers "1.1" from
  llhttp's keep-alive verdict, since ``get_http_version`` costs ~0.5 µs.
- A raw byte >= 0x80 in the target (UTF-8 typed into curl) is accepted, as
  nginx does; llhttp refuses it, so the request line is fed again with those
  bytes percent-encoded (``_reencode_target``): ``Request.uri`` shows them
  encoded and ``Request.path`` decodes them as UTF-8. The parser finds where
  the refused request began from what it knows: exactly when the request
  began in an earlier read, or the read began between two messages (the sink
  sets ``between_messages`` in ``on_end``); otherwise (the read began inside a
  body and the request follows it in the same read) it answers 400.
"""
from __future__ import annotations

import re
from typing import Final, Protocol

from types import SimpleNamespace

import httptools

# Final: compiled (setup.py), constants are inlined instead of looked up by name
MAX_TARGET: Final = 8 * 1024
MAX_FIELD_LINE: Final = 8 * 1024
MAX_FIELDS_SIZE: Final = 32 * 1024
MAX_FIELDS: Final = 100
MAX_HEAD: Final = MAX_TARGET + MAX_FIELDS_SIZE + 1024
# A request llhttp refused is fed again, rewritten (a raw UTF-8 target, an
# HTTP/1.x version), by a nested feed; each pipelined request of one read that
# needs it nests once more. Past this depth the read is refused with 400: never
# a loop, never Python's recursion limit (which killed the worker: test_fuzz).
MAX_REFEEDS: Final = 64


_OWS: Final = (0x20, 0x09)  # SP, HTAB
_CONNECTION_FIELDS: Final = (b"connection", b"proxy-connection")   # llhttp reads both
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# nginx's method alphabet (ngx_http_parse_request_line): upper-case letters, "_", "-"
_METHOD_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
MAX_METHOD: Final = 32   # an unknown method longer than this is refused as malformed
_ABSOLUTE_FORM: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]+(?:[/?]|$)")
_HIGH_BYTE: Final = re.compile(rb"[\x80-\xff]")
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def head_ended(data: bytes) -> bool:
    """Whether ``data``, the first bytes of a request, hold the empty line that
    ends its head (RFC 9112 §2.2 lets a recipient accept a bare LF)."""
    return b"\r\n\r\n" in data or b"\n\n" in data


class HttpError(Exception):
    """A request the server must refuse with ``status`` and then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestSink(Protocol):
    """Receives a request's events. ``on_body`` and ``on_end`` are called by
    the parser's own ``on_message_complete``, which sets ``between_messages``
    first (a sink fed by an older parser set it in its ``on_end``; doing so
    again is harmless)."""

    def on_head(self, method: str, target: bytes, version: str,
                fields: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    # optional: ``on_upgrade(rest)`` takes the bytes after an Upgrade request's
    # head (the connection holds them until it knows whether it switches
    # protocols); a sink without it gets them parsed as the next request.


class _Unbound:
    """The sink of a parser at rest in a pool (``release``): it is fed nothing."""

    def on_head(self, method: str, target: bytes, version: str,
                fields: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool) -> None:
        raise RuntimeError("a released parser was fed")

    def on_body(self, data: bytes) -> None:
        raise RuntimeError("a released parser was fed")

    def on_end(self) -> None:
        raise RuntimeError("a released parser was fed")


UNBOUND: Final = _Unbound()


class RequestParser:
    """Feeds bytes to httptools and turns its callbacks into sink calls.

    A parser between two messages (``at_rest``) can be handed from one sink to
    another (``release``, then ``rebind``): a process keeps a few for its
    connections rather than one per idle connection (issue 17: a parser with
    its httptools state is ~1.8 KiB, half of an idle keepalive connection)."""

    __slots__ = ("_parser", "_target", "_fields",
                 "_in_head", "_head_bytes", "_sink", "content_length", "chunked", "hosts",
                 "_began", "_feed_size", "_feed_data", "_get_method", "_get_http_version",
                 "_should_keep_alive", "_should_upgrade", "between_messages",
                 "_fed_between", "_method_tail", "_lenient", "_fed_lenient", "_refeeds",
                 "_on_head", "_on_body", "_on_end")

    def __init__(self, sink: RequestSink) -> None:
        self._refeeds = 0   # nested feeds of re-encoded bytes (bounded by MAX_REFEEDS)
        self._sink = sink
        self.rebind(sink)   # the sink's methods (rebind)
        self._new_parser()
        self._target = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        self._began = 0   # messages begun in the current feed
        self._feed_size = 0
        self.content_length: int | None = None   # of the request whose head was parsed last
        self.chunked = False
        self.hosts = 0   # Host field lines of that request (RFC 9112 §3.2 is the server's rule)
        # True when the last message is complete. The parser sees the end of a
        # bodiless message itself; httptools hands a body's end straight to the
        # sink, so a sink that receives bodies sets this in its on_end.
        self.between_messages = True
        self._fed_between = True    # between_messages when the current feed began
        self._method_tail: bytes | None = None   # an unknown method, until it ends
        self._lenient = False   # this head is fed again, llhttp taking any version
        self._fed_lenient = False   # _lenient when the current feed began

    def _new_parser(self, lenient: bool = False) -> None:
        # bound once: a method looked up by name on every request is measurable
        # httptools looks its callbacks up once, by name, and keeps them (all
        # ours, so that the parser can change sinks: rebind); the namespace
        # itself is not kept (memory per connection)
        parser = self._parser = httptools.HttpRequestParser(SimpleNamespace(
            on_message_begin=self.on_message_begin, on_url=self.on_url,
            on_header=self.on_header, on_headers_complete=self.on_headers_complete,
            on_body=self.on_body, on_message_complete=self.on_message_complete))
        self._lenient = lenient
        if lenient:
            # HTTP/1.2 and the like, for one head (_reversion)
            parser.set_dangerous_leniencies(lenient_version=True)
        self._feed_data = parser.feed_data
        self._get_method = parser.get_method
        self._get_http_version = parser.get_http_version
        self._should_keep_alive = parser.should_keep_alive
        self._should_upgrade = parser.should_upgrade

    @property
    def at_rest(self) -> bool:
        """True between two messages with nothing of the next one seen, outside
        any feed of re-encoded bytes, the last one kept alive (llhttp refuses
        any byte after one that was not): the parser may change sinks."""
        return (self.between_messages and not self._in_head and self._method_tail is None
                and not self._lenient and not self._target and not self._refeeds
                and self._should_keep_alive())

    def release(self) -> None:
        """Detach the parser, at rest, from its sink (for a pool of parsers)."""
        self.rebind(UNBOUND)
        if self._fields:
            self._fields = []   # the trailer fields of the last message

    def rebind(self, sink: RequestSink) -> None:
        """Hand the parser, released, to ``sink``: its next message goes there."""
        self._sink = sink
        # bound once per sink: called through these, not looked up by name on
        # the sink, which costs ~150 instructions a call (a Protocol type)
        self._on_head = sink.on_head
        self._on_body = sink.on_body
        self._on_end = sink.on_end

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
        if self._method_tail is not None:
            self._refuse_method(self._method_tail + data)
            return
        self._began = 0
        self._feed_size = len(data)
        self._fed_between = self.between_messages
        self._fed_lenient = self._lenient
        again: bytes | None = None   # fed after the except clause (see _refeed)
        try:
            self._feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops at a request asking for Upgrade (RFC 9110 §7.8). What
            # follows is the new protocol's if a handler switches, else the next
            # request: the sink holds it until it knows (on_upgrade); without
            # one, go on with a fresh parser from the first byte after that request.
            rest = data[exc.args[0]:] if exc.args else b""
            self._new_parser()
            self.between_messages = True
            on_upgrade = getattr(self._sink, "on_upgrade", None) if rest else None
            if on_upgrade is not None:
                on_upgrade(rest)
            else:
                again = rest
        except httptools.HttpParserCallbackError as exc:
            # httptools keeps what our callback raised as the context
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserInvalidURLError as exc:
            again = self._reencode_target(data) if _HIGH_BYTE.search(data) else None
            if again is None:
                raise HttpError(400, f"malformed request: {exc}") from None
        except httptools.HttpParserInvalidMethodError as exc:
            tail = self._method_bytes(data, httptools.HttpParserInvalidMethodError)
            if tail is None:
                raise HttpError(400, f"malformed request: {exc}") from None
            self._refuse_method(tail)
            return
        except httptools.HttpParserError as exc:
            again = self._reversion(data) if str(exc) == "Invalid HTTP version" else None
            if again is None:
                raise HttpError(400, f"malformed request: {exc}") from None
        if again is not None:
            # Out of the except clause: inside it, an exception a callback raises
            # in this feed would get the handled one as its context, where
            # httptools puts what the callback raised (HttpParserCallbackError).
            if again:
                if self._refeeds >= MAX_REFEEDS:
                    raise HttpError(400, "malformed request")
                self._refeeds += 1
                try:
                    self.feed(again)
                finally:
                    self._refeeds -= 1
            return
        if self._in_head and not self._began:
            # Count only feeds that lie wholly inside one head: a head that began
            # in this feed shares it with the end of the previous message.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                # a target over MAX_TARGET has already failed in on_url (414)
                raise HttpError(431, "request header fields too large")

    def _fail(self, status: int, reason: str) -> None:
        raise HttpError(status, reason)

    # what llhttp refuses and we serve or answer otherwise (module docstring)
    def _message_start(self, data: bytes, error: type[Exception]) -> int:
        """Where in ``data`` the request llhttp just refused began, or -1.

        httptools gives no offsets. When the request began in this read and
        the read began between two messages, a fresh parser fed the same bytes
        goes through the same messages and fails the same way; its
        ``on_message_begin`` count locates the refused request's first byte."""
        if not self._began:
            return 0   # the request began in an earlier read
        if not self._fed_between:
            return -1
        total, failure = _begins(data, self._fed_lenient)
        if failure is not error or total != self._began:
            return -1   # the fresh parser did not go the same way: do not guess
        low, high = 1, len(data)   # the shortest prefix in which the request has begun
        while low < high:
            middle = (low + high) // 2
            if _begins(data[:middle], self._fed_lenient)[0] >= total:
                high = middle
            else:
                low = middle + 1
        return low - 1

    def _reencode_target(self, data: bytes) -> bytes | None:
        """The bytes to feed again, from the request llhttp refused for a byte
        >= 0x80 in its target, with those bytes percent-encoded, to a new
        parser; None when the request cannot be located."""
        method = self._get_method()
        start = self._message_start(data, httptools.HttpParserInvalidURLError)
        if start < 0:
            return None
        if self._began:
            line = data[start:]
        else:
            # The request line began in an earlier read: the method and the
            # target's first pieces (on_url) were seen; the rest is in data.
            first = _HIGH_BYTE.search(data)
            head = data[:first.start()] if first is not None else data
            space = head.find(b" ")
            if b"\r" in head or b"\n" in head:
                return None
            if space >= 0:
                line = method + b" " + data[space + 1:]
            else:
                line = method + b" " + self._target + data
        encoded = _percent_encode_target(line)
        if encoded is None:
            return None
        self._target = b""
        self._new_parser()
        self.between_messages = True   # the new parser starts at this request
        return encoded

    def _reversion(self, data: bytes) -> bytes | None:
        """llhttp refused a version other than 0.9, 1.0, 1.1 and 2.0: 505 for a
        major other than 1, else the bytes to feed again, from that head on, to
        a new parser that takes any version, for on_headers_complete to serve it
        as 1.1 (RFC 9112 §2.3); None when the head cannot be located."""
        version = self._get_http_version()
        if version[0] != "1":
            self._fail(505, f"HTTP/{version} is not supported")
        start = self._message_start(data, httptools.HttpParserError)
        if start < 0:
            return None
        if self._began:
            line = data[start:]
        else:
            # The request line began in an earlier read; llhttp has seen the
            # method, the whole target (on_url) and both digits of the version,
            # and what of the line is in this read must end it.
            end = data.find(b"\r")
            seen = data if end < 0 else data[:end]
            known = (self._get_method() + b" " + self._target + b" HTTP/"
                     + version.encode("ascii"))
            if not known.endswith(seen):
                return None
            line = known + (data[end:] if end >= 0 else b"")
        self._target = b""
        self._new_parser(lenient=True)
        self.between_messages = True
        return line

    def _method_bytes(self, data: bytes, error: type[Exception]) -> bytes | None:
        """The refused method's bytes known so far (None: cannot be told)."""
        start = self._message_start(data, error)
        if start < 0:
            return None
        if not self._began:
            # The method began in an earlier read with bytes llhttp accepted
            # (upper-case letters): "A" stands in for them.
            return b"A" + data
        return data[start:]

    def _refuse_method(self, tail: bytes) -> None:
        """An unknown method: 501 once a whole upper-case token followed by SP
        has arrived (RFC 9110 §9.1), 400 for anything else (nginx)."""
        for i in range(len(tail)):
            byte = tail[i]
            if byte == 0x20 and i > 0:   # a leading SP is not a method
                self._method_tail = None
                raise HttpError(501, "unknown method")
            if byte not in _METHOD_CHARS or i >= MAX_METHOD:
                self._method_tail = None
                raise HttpError(400, "malformed request: invalid method")
        if len(tail) >= MAX_METHOD:
            self._method_tail = None
            raise HttpError(400, "malformed request: invalid method")
        self._method_tail = tail   # wait for the rest of the method

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._began += 1
        self._in_head = True
        self.between_messages = False
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
        codings: bytes | None = None
        hosts = 0
        for name, value in fields:
            length = len(name)
            if length == 14 or length == 17:  # len("content-length"), len("transfer-encoding")
                lowered = name.lower()
                if lowered == b"content-length":
                    content_length = int(value.rstrip(b" \t"))   # llhttp checked the digits
                elif lowered == b"transfer-encoding":
                    chunked = True
                    # several field lines are one list (RFC 9110 §5.3)
                    codings = value if codings is None else codings + b"," + value
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
        if target[0] != 0x2F or method == b"CONNECT":   # not origin-form "/..."
            _check_target_form(method, target)
        # llhttp's verdict, asked only when it can be yes (RFC 9110 §7.8)
        upgrade = upgrade_field and self._should_upgrade()
        if upgrade and (chunked or content_length):
            # httptools hands every byte after this head to the new protocol; no
            # one switches, so the body would be parsed as the next request.
            self._fail(400, "a body on an Upgrade request")
        keep_alive = self._should_keep_alive()
        if keep_alive and not connection_field and not self._lenient:
            # llhttp accepts 0.9, 1.0, 1.1 and 2.0, and keeps alive by default
            # only 1.1 (without a Connection field, nothing else turns keep-alive
            # on): the version is known without get_http_version's formatting,
            # the costliest call of this function.
            version = "1.1"
        else:
            version = self._get_http_version()
            if self._lenient:   # the next head is parsed strictly again
                self._lenient = False
                self._parser.set_dangerous_leniencies(lenient_version=False)
            if version != "1.0" and version != "1.1":
                if version[0] != "1":
                    # llhttp also accepts "HTTP/2.0" and "HTTP/0.9" request lines;
                    # as nginx, answer 505 rather than serve them as HTTP/1.x
                    self._fail(505, f"HTTP/{version} is not supported")
                version = "1.1"   # RFC 9112 §2.3: a higher minor version is served as 1.1
        if chunked and (codings != b"chunked" or content_length is not None or version != "1.1"):
            status = _transfer_coding_error(codings, content_length is not None, version)
            if status:
                self._fail(status, f"unsupported Transfer-Encoding {codings!r}")
        self.between_messages = not (chunked or content_length)
        self._on_head(_METHODS.get(method) or method.decode("ascii"), target,
                      version, fields, keep_alive, upgrade)

    def on_body(self, data: bytes) -> None:
        self._on_body(data)

    def on_message_complete(self) -> None:
        self.between_messages = True   # the next byte begins a message
        self._on_end()


def _check_target_form(method: bytes, target: bytes) -> None:
    """Refuse a request-target that is neither origin-form nor absolute-form
    (RFC 9112 §3.2), and CONNECT: nginx answers 400 to ``OPTIONS *``, ``GET *``
    and ``CONNECT host:port`` (and 405 to ``CONNECT /``); a server that is not a
    forward proxy has no use for either."""
    if method == b"CONNECT":
        raise HttpError(400, "CONNECT is not served")
    if _ABSOLUTE_FORM.match(target) is None:
        raise HttpError(400, "malformed request target")


def _transfer_coding_error(codings: bytes | None, content_length: bool, version: str) -> int:
    """The status refusing a ``Transfer-Encoding`` that is not exactly
    ``chunked`` (0: it is ``chunked``, spelt otherwise). See the module docstring."""
    if codings is None or content_length or version != "1.1":
        return 400   # RFC 9112 §6.1 (HTTP/1.0), §6.3 (with Content-Length)
    names: list[bytes] = []
    parameters = False
    for item in codings.split(b","):
        coding = item.strip(b" \t")
        if not coding:
            continue   # RFC 9110 §5.6.1: empty list elements are ignored
        name, semicolon, _ = coding.partition(b";")
        name = name.rstrip(b" \t")
        if _TOKEN.fullmatch(name) is None:
            return 400
        names.append(name.lower())
        parameters = parameters or bool(semicolon)
    if not names or names[-1] != b"chunked":
        return 400   # RFC 9112 §6.3: the length cannot be determined
    if names.count(b"chunked") > 1:
        return 400   # RFC 9112 §6.1: chunked is applied once
    if len(names) == 1 and not parameters:
        return 0
    return 501       # RFC 9112 §6.1: a coding (or a parameter) we do not implement


def _begins(data: bytes, lenient: bool) -> tuple[int, type[Exception] | None]:
    """How many messages a fresh parser begins in ``data``, and what it raised
    (``lenient``: taking any version in the first head, as RequestParser does
    with a head it feeds again)."""
    counter = _BeginCounter()
    parser = counter.parser = httptools.HttpRequestParser(counter)
    if lenient:
        parser.set_dangerous_leniencies(lenient_version=True)
        counter.lenient = True
    try:
        parser.feed_data(data)
    except Exception as exc:
        return counter.begins, type(exc)
    return counter.begins, None


class _BeginCounter:
    """httptools callbacks that only count message starts."""

    def __init__(self) -> None:
        self.begins = 0
        self.lenient = False
        self.parser: httptools.HttpRequestParser | None = None

    def on_message_begin(self) -> None:
        self.begins += 1

    def on_headers_complete(self) -> None:
        if self.lenient and self.parser is not None:
            self.lenient = False
            self.parser.set_dangerous_leniencies(lenient_version=False)


def _percent_encode_target(line: bytes) -> bytes | None:
    """``line`` (from the method on) with every byte >= 0x80 of its target as %XX."""
    space = line.find(b" ")
    if space <= 0:
        return None
    end = space + 1
    size = len(line)
    while end < size and line[end] not in (0x20, 0x0D, 0x0A):
        end += 1
    raw = line[space + 1:end]
    target = _HIGH_BYTE.sub(lambda m: b"%%%02X" % m.group()[0], raw)
    if target == raw:
        return None   # no byte >= 0x80 in the target: llhttp refused something else
    return line[:space + 1] + target + line[end:]


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
