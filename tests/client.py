"""The one HTTP/1.1 client of the test suite: real sockets, bounded reads, strict parsing.

What a test needs from a client, and nothing it does behind a test's back
(no retries, no redirects, no connection reuse it was not asked for):

- ``request(port, method, target, ...)``: one request on a new connection,
  the parsed ``Response`` back.
- ``Connection``: a kept-alive connection; ``request()`` / ``send()`` and
  ``read_response(method)`` one at a time, or several requests sent at once
  and read back in order (pipelining).
- ``exchange(port, data)``: raw bytes in, raw bytes out, read until the server
  closes or the deadline passes (never longer); ``parse_responses(data)``
  splits such bytes into responses.

Parsing is strict (RFC 9112 §4-7): a bad status or field line, two
Content-Length fields, or Content-Length beside Transfer-Encoding fail the
test. The body is framed as a client must frame it: none after a HEAD request
or in a 1xx/204/304 response; else chunked, else Content-Length, else
everything up to the close. Interim (1xx) responses are kept on the final
response's ``interim`` list.

Every read has a deadline: ``timeout`` bounds each wait for bytes (a silent
server fails the test with ``TimeoutError``) and, when ``idle`` is given, a
silence that long raises ``Idle`` instead (a fuzzer's "the server waits for
more bytes", which can be fine).
"""
from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

HOST = "127.0.0.1"


class Idle(Exception):
    """The server sent nothing for ``idle`` seconds."""


class Closed(ConnectionError):
    """The server closed the connection before a complete response."""


class Headers:
    """Response header fields in order, names compared without case (a multi-dict)."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self.fields = list(fields)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.fields if n.lower() == name]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_all(name)
        return values[0] if values else default

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def lowered(self) -> dict[str, str]:
        """{lowercased name: value}; of repeated fields the last one (http.client's view)."""
        return {n.lower(): v for n, v in self.fields}

    def __repr__(self) -> str:
        return f"Headers({self.fields!r})"


@dataclass
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes
    raw: bytes = b""                 # the bytes of this response as they came (interim ones too)
    framing: str = "none"            # none | length | chunked | close
    trailers: list[bytes] = field(default_factory=list)
    interim: list[Response] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def chunked(self) -> bool:
        return self.framing == "chunked"

    @property
    def closes(self) -> bool:
        return (self.headers.get("connection") or "").lower() == "close"

    def __str__(self) -> str:
        return describe(self.raw)


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\x20-\x7e]*)")
FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([\t\x20-\x7e\x80-\xff]*)")
CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})(;[^\r\n]*)?")


def describe(data: bytes, limit: int = 600) -> str:
    """Bytes for a failure message: the start, the length when cut."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} bytes)"


def encode_request(method: str = "GET", target: str = "/",
                   headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
                   body: bytes | str | None = None, version: str = "1.1",
                   host: str | None = HOST) -> bytes:
    """A request as bytes. ``Host`` is added unless given (or ``host`` is None);
    ``Content-Length`` is added for a body unless a framing header is given."""
    fields = list(headers.items() if isinstance(headers, Mapping) else headers or ())
    names = {n.lower() for n, _ in fields}
    data = body.encode() if isinstance(body, str) else body
    if host is not None and "host" not in names:
        fields.insert(0, ("Host", host))
    if data is not None and not names & {"content-length", "transfer-encoding"}:
        fields.append(("Content-Length", str(len(data))))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return head.encode("latin-1") + b"\r\n" + (data or b"")


class Connection:
    """The client side of one connection: a byte buffer and the deadlines."""

    def __init__(self, port: int, timeout: float = 10.0, idle: float | None = None,
                 deadline: float | None = None, host: str = HOST) -> None:
        self.port = port
        self.timeout = timeout
        self.idle = idle
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(idle if idle is not None else timeout)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.deadline = time.monotonic() + deadline if deadline is not None else None
        self.log = bytearray()           # every byte received, for failure messages

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- sending -----------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the server has already closed (that is allowed)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def send_request(self, method: str = "GET", target: str = "/", **kwargs: object) -> None:
        """Send one request; ``Host`` is ``127.0.0.1:<port>`` unless given (as http.client)."""
        kwargs.setdefault("host", f"{HOST}:{self.port}")
        self.sock.sendall(encode_request(method, target, **kwargs))  # type: ignore[arg-type]

    def request(self, method: str = "GET", target: str = "/", **kwargs: object) -> Response:
        """Send one request and read its response."""
        self.send_request(method, target, **kwargs)
        return self.read_response(method)

    def pipeline(self, requests: Sequence[bytes], methods: Sequence[str] | None = None
                 ) -> list[Response]:
        """Send every request in one write, then read their responses in order."""
        self.sock.sendall(b"".join(requests))
        return [self.read_response(m) for m in methods or ["GET"] * len(requests)]

    # -- receiving ---------------------------------------------------------

    def more(self) -> bool:
        """Receive more bytes into ``buf``; False at EOF. Raises Idle or TimeoutError."""
        if self.eof:
            return False
        if self.deadline is not None:
            assert time.monotonic() < self.deadline, f"no end in time: {describe(bytes(self.buf))}"
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            if self.idle is not None:
                raise Idle() from None
            raise TimeoutError(f"nothing from the server for {self.timeout} s; "
                               f"buffered: {describe(bytes(self.buf))}") from None
        except ConnectionResetError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        self.log += data
        return True

    def line(self, what: str) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            assert len(self.buf) < 65536, f"{what} line never ends"
            if not self.more():
                raise Closed(f"closed inside {what}: {describe(bytes(self.buf))}")
        text = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return text

    def take(self, n: int, what: str) -> bytes:
        while len(self.buf) < n:
            if not self.more():
                raise Closed(f"closed inside {what}: {len(self.buf)} of {n} bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_until_close(self, timeout: float | None = None) -> bytes:
        """Everything up to the server's close (or a reset), read for at most ``timeout`` s."""
        limit = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while time.monotonic() < limit:
            self.sock.settimeout(max(0.01, limit - time.monotonic()))
            try:
                if not self.more():
                    break
            except (Idle, TimeoutError):
                break
        self.sock.settimeout(self.idle if self.idle is not None else self.timeout)
        data, self.buf = bytes(self.buf), bytearray()
        return data

    def at_boundary_closed(self) -> bool:
        """True if the server closed here (nothing left); Idle if it is waiting."""
        while not self.buf:
            if not self.more():
                return True
        return False

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes with nothing more to say within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return not self.buf and not self.more()
        except (Idle, TimeoutError):
            return False
        finally:
            self.sock.settimeout(self.idle if self.idle is not None else self.timeout)

    def read_response(self, method: str | None = "GET") -> Response:
        """One complete response, checked for syntax and framing (RFC 9112 §4-7).
        ``method`` is the request's method when known (HEAD responses have no body)."""
        start = len(self.log) - len(self.buf)
        interim: list[Response] = []
        while True:
            if not self.buf and not self.more():
                raise Closed("closed before a response" + (f" (after {len(interim)} interim)"
                                                           if interim else ""))
            first = self.line("status")
            match = STATUS_LINE.fullmatch(first)
            assert match, f"bad status line {first!r}"
            status = int(match.group(1))
            fields = []
            while line := self.line("header"):
                fmatch = FIELD_LINE.fullmatch(line)
                assert fmatch, f"bad header line {line!r}"
                fields.append((fmatch.group(1).decode(), fmatch.group(2).decode("latin-1")))
            resp = Response(status, match.group(2).decode(), Headers(fields), b"")
            if 100 <= status < 200:
                resp.raw = bytes(self.log[start:len(self.log) - len(self.buf)])
                interim.append(resp)     # an interim response: the final one follows
                continue
            break
        resp.interim = interim
        lengths = resp.headers.get_all("content-length")
        codings = resp.headers.get_all("transfer-encoding")
        assert len(lengths) <= 1, f"several Content-Length: {fields}"
        assert not (lengths and codings), f"Content-Length with Transfer-Encoding: {fields}"
        if lengths:
            assert re.fullmatch(r"[0-9]+", lengths[0]), f"bad Content-Length {lengths[0]!r}"
        if codings:
            assert codings == ["chunked"], f"unexpected Transfer-Encoding {codings}"
        if method == "HEAD" or status in (204, 304):
            resp.framing = "chunked" if codings else "length" if lengths else "none"
        elif codings:
            resp.framing = "chunked"
            body = bytearray()
            while True:
                size_line = self.line("chunk size")
                cmatch = CHUNK_SIZE.fullmatch(size_line)
                assert cmatch, f"bad chunk size line {size_line!r}"
                size = int(cmatch.group(1), 16)
                if size == 0:
                    break
                body += self.take(size, "chunk")
                assert self.take(2, "chunk end") == b"\r\n", "chunk data not followed by CRLF"
            while trailer := self.line("trailer"):
                resp.trailers.append(trailer)
            resp.body = bytes(body)
        elif lengths:
            resp.framing = "length"
            resp.body = self.take(int(lengths[0]), "body")
        else:
            # close-delimited (RFC 9112 §6.3 rule 8): the body is whatever comes before EOF
            resp.framing = "close"
            try:
                while self.more():
                    pass
            except Idle:
                raise AssertionError("a close-delimited body that never ended") from None
            resp.body, self.buf = bytes(self.buf), bytearray()
        resp.raw = bytes(self.log[start:len(self.log) - len(self.buf)])
        return resp


# -- one-shot helpers --------------------------------------------------------

def request(port: int, method: str = "GET", target: str = "/",
            headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
            body: bytes | str | None = None, timeout: float = 10.0, version: str = "1.1",
            host: str | None = "") -> Response:
    """One request on a new connection, closed after the response. ``Host`` is
    ``127.0.0.1:<port>`` unless given in ``headers`` or as ``host`` (None: no Host)."""
    host = f"{HOST}:{port}" if host == "" else host
    with Connection(port, timeout=timeout) as conn:
        conn.send_request(method, target, headers=headers, body=body, version=version, host=host)
        return conn.read_response(method)


def exchange(port: int, data: bytes, timeout: float = 10.0, until_close: bool = True) -> bytes:
    """Send raw bytes and read until the server closes (or ``timeout``). With
    ``until_close=False``, return after the first bytes that arrive."""
    with Connection(port, timeout=timeout) as conn:
        conn.sock.sendall(data)
        if until_close:
            return conn.read_until_close(timeout)
        try:
            conn.more()
        except TimeoutError:
            pass
        return bytes(conn.buf)


def parse_responses(data: bytes, methods: Sequence[str] = ()) -> list[Response]:
    """Split bytes a server sent into responses (``methods``: of the requests in
    order, for HEAD; GET when not given). Bytes after the last complete
    response are left out; ``Response.raw`` of each shows what it was."""
    reader = _BytesReader(data)
    responses: list[Response] = []
    while reader.buf:
        method = methods[len(responses)] if len(responses) < len(methods) else "GET"
        try:
            responses.append(reader.read_response(method))
        except Closed:
            break
    return responses


class _BytesReader(Connection):
    """A Connection over bytes already received (the server closed after them)."""

    def __init__(self, data: bytes) -> None:  # noqa: D107 - no socket on purpose
        self.buf = bytearray(data)
        self.log = bytearray(data)
        self.eof = True
        self.reset = False
        self.deadline = None
        self.idle = None
        self.timeout = 0.0

    def more(self) -> bool:
        return False
