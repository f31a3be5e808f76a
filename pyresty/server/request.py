"""The ``Request`` object handlers receive (SPEC §5): the handler API and nothing else.

A ``Request`` is an ``Exchange`` (stream.py) talking to its ``Stream``; it never
writes protocol bytes. Output is buffered: ``say``/``print`` append to a
buffer; when the content phase ends with the response not yet started, the
whole body goes to the stream in one call with its length. ``flush()`` (or a
buffer past ``STREAM_AFTER`` bytes) starts the response instead: the head goes
out and the body streams (the stream chooses the framing). Writes wait while
the stream is above its high-water mark, so a slow client cannot make the
worker buffer without bound.

``exit(status)`` and ``redirect`` raise ``Exit`` (a BaseException), which the
phase runner catches: they end the request from any phase. A plain ``return``
ends only the phase. In ``header_filter``, before the head is sent, ``exit``
with a status of 300 or more replaces the response with that status's page
(no filter runs on the page); in ``body_filter`` it ends the body there: the
chunk being filtered and all later output are dropped and the response ends
(a length-framed response that falls short closes its connection).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NoReturn
from urllib.parse import parse_qs, unquote

from pyresty.errors import Exit, ResponseStarted
from pyresty.http import response
from pyresty.http.headers import Headers
from pyresty.server.body_spool import BodyChunks
from pyresty.server.stream import Exchange, Stream

if TYPE_CHECKING:
    import asyncio

    from pyresty.server.routes import Route, VirtualServer

STREAM_AFTER: Final = 64 * 1024  # buffered body bytes before the response starts streaming


def _as_bytes(part: Any) -> bytes:
    if isinstance(part, str):
        return part.encode("utf-8")
    if isinstance(part, (bytes, bytearray, memoryview)):
        return bytes(part)
    return str(part).encode("utf-8")


class Request(Exchange):
    """One HTTP request and its response, shared by every phase that handles it.

    Most per-request state starts as a class attribute and becomes an instance
    attribute only when a request changes it: the constructor is on the hot
    path and sets just what every request has.
    """

    server: VirtualServer       # set by the connection once the head is parsed,
    route: Route                # with the route, once the path is known
    eof = False
    _headers: Headers | None = None
    _args: dict[str, list[str]] | None = None
    _ctx: dict[str, Any] | None = None
    _out_size = 0
    _authority: str | None = None   # the host of an absolute-form target (RFC 9112 §3.2.2)
    _discarding = False     # exit() in a filter: later output is dropped
    task: asyncio.Task[None] | None = None   # the Task running this request's phases
    upstream_addr: str | None = None            # one entry per try, ", "-separated (nginx)
    upstream_status: str | None = None
    upstream_times: list[float] | None = None   # each try's seconds

    @property
    def upstream_response_time(self) -> str | None:
        """``$upstream_response_time``: each try's seconds, ", "-separated (nginx),
        formatted when read (by the access log: formatting floats costs ~2k
        instructions, wasted when nothing logs)."""
        times = self.upstream_times
        if times is None:
            return None
        if len(times) == 1:
            return "%.3f" % times[0]
        return ", ".join(["%.3f" % t for t in times])

    def __init__(self, stream: Stream, method: str, target: bytes, version: str,
                 fields: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool) -> None:
        self.stream = stream
        self.method = method
        self.uri = uri = target.decode("latin-1")
        mark = uri.find("?")
        if mark < 0:
            raw_path = uri
            self.query = ""
        else:
            raw_path = uri[:mark]
            self.query = uri[mark + 1:]
        if raw_path[:1] != "/":
            raw_path, self._authority = _origin_path(raw_path)
        self.path: str = unquote(raw_path) if "%" in raw_path else raw_path
        self.http_version = version
        self.fields = fields
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self._out: list[bytes] = []

    @property
    def ctx(self) -> dict[str, Any]:
        """A dict for this request, shared by all its phases."""
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = {}
        return ctx

    @property
    def headers_out(self) -> Headers:
        """Response header fields; set before the response starts."""
        headers = self.out_fields()
        if headers is None:
            headers = self.fields_out = Headers()
        return headers

    @headers_out.setter
    def headers_out(self, value: Headers | Mapping[str, Any]) -> None:
        # The explicit check matters compiled: mypyc does not type-check what a
        # property setter receives, and a dict stored as Headers crashed the process.
        self.fields_wire = None
        if isinstance(value, Headers):
            self.fields_out = value
        elif isinstance(value, Mapping):
            headers = Headers()
            for name, field in value.items():
                headers[name] = field   # a list value sets several fields, as with Headers
            self.fields_out = headers
        else:
            raise TypeError(f"headers_out takes a Headers or a mapping, not {type(value).__name__}")

    # request side
    @property
    def headers(self) -> Headers:
        """Request header fields (case-insensitive, multi-valued)."""
        if self._headers is None:
            self._headers = Headers(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in self.fields)
        return self._headers

    @property
    def args(self) -> dict[str, list[str]]:
        """Query arguments: name -> every value, in order."""
        if self._args is None:
            self._args = parse_qs(self.query, keep_blank_values=True)
        return self._args

    @property
    def client_addr(self) -> str:
        """The client's IP address."""
        return self.stream.peer_host

    @property
    def scheme(self) -> str:
        """``"https"`` for a request that came through a TLS listener, else ``"http"``."""
        return self.stream.scheme

    async def read_body(self) -> bytes:
        """The whole request body (b"" when there is none).

        Sends ``100 Continue`` first when the client asked for it. Waits for the
        body at most ``client_body_timeout`` between reads; raises
        ``ClientBodyTimeout`` (the request then ends with 408) when the client
        is slower than that, ``ConnectionResetError`` when it went away.
        """
        if not self._body_done:
            await self.stream.wait_body(self)
        sink = self._sink
        if sink is not None:
            if sink.path is None:
                raise RuntimeError("the request body was consumed by body_chunks()")
            return sink.read()     # spooled: read back (use body_file for a large body)
        return b"".join(self._body) if self._body else b""

    def body_buffer(self) -> tuple[int, str]:
        route = self.route
        return route.client_body_buffer_size, route.client_body_temp_path

    async def spool_body(self) -> str | None:
        """Wait for the whole request body; return ``body_file``.

        A body larger than ``client_body_buffer_size`` is in a temporary file
        (its path is returned; removed when the request ends), so it costs no
        memory; a smaller one is in memory (None is returned; ``read_body()``
        gives it). Raises as ``read_body`` does.
        """
        if not self._body_done:
            await self.stream.wait_body(self)
        return self.body_file

    @property
    def body_file(self) -> str | None:
        """The temporary file holding the request body, when it was larger than
        ``client_body_buffer_size`` (complete once ``spool_body()`` returned)."""
        sink = self._sink
        return sink.path if sink is not None else None

    def body_chunks(self) -> AsyncIterator[bytes]:
        """``async for chunk in r.body_chunks()``: the request body as it arrives,
        never buffered whole (reading pauses while the handler is behind by more
        than ``client_body_buffer_size``). Raises as ``read_body`` does."""
        return BodyChunks(self)

    # response side
    async def say(self, *parts: Any) -> None:
        """Buffer ``parts`` and a newline for the response body."""
        if self._buffer(parts, b"\n") >= STREAM_AFTER:
            await self.flush()

    async def print(self, *parts: Any) -> None:
        """Buffer ``parts`` (str, bytes, or anything else as ``str(part)``) for the body."""
        if self._buffer(parts, b"") >= STREAM_AFTER:
            await self.flush()

    def _buffer(self, parts: tuple[Any, ...], end: bytes) -> int:
        """Append ``parts`` and ``end`` to the body buffer; returns its new size."""
        if self._discarding:
            return 0
        out = self._out
        size = self._out_size
        for part in parts:
            data = part.encode("utf-8") if type(part) is str else _as_bytes(part)
            out.append(data)
            size += len(data)
        if end:
            out.append(end)
            size += len(end)
        self._out_size = size
        return size

    async def flush(self) -> None:
        """Send the buffered body now (starting the response if needed)."""
        if self.finished:
            return
        data = self._take_output(eof=False)
        if self._discarding and self.started:
            self.finish()     # exit() in a filter ended the body
            return
        if not self.started:
            self._send_head(None, data)
        elif data:
            self._write_body(data)
        await self.stream.drain()

    def exit(self, status: int) -> NoReturn:
        """End the request with ``status`` from any phase.

        Raises ``pyresty.Exit``, a BaseException: ``except Exception`` does not
        stop it. Before the response started, a status of 300 or more answers
        with that status's page (the output so far is dropped); a lower one ends
        the request with the output so far and that status. After the response
        started, the request ends as it stands.
        """
        raise Exit(status)

    def redirect(self, url: object, status: int = 302) -> NoReturn:
        """Answer with a redirect to ``url`` (raises; does not return)."""
        if self.started:
            raise ResponseStarted("cannot redirect: the response has started")
        self.headers_out["Location"] = url
        raise Exit(status)

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file`` from ``offset`` as the body (sendfile)."""
        if not self.started:
            if "content-length" not in self.headers_out:
                self.headers_out["Content-Length"] = str(count)
            self._send_head(count)
        if self.method == "HEAD" or count == 0 or self._discarding:
            return
        await self.stream.send_file(self, file, offset, count)

    # internals used by the phase runner
    def _take_output(self, eof: bool) -> bytes:
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        if out:
            self._out = []
            self._out_size = 0
        if self._discarding:
            return b""
        body_filter = self.route.body_filter
        if body_filter is not None:
            self.eof = eof
            try:
                data = _as_bytes(body_filter(self, data) or b"")
            except Exit:
                # exit() in body_filter ends the body here (module docstring)
                self._discarding = True
                fields = self.out_fields()
                if self.started and fields is not None and "content-length" in fields:
                    self.keep_alive = False   # the declared length will not be met
                return b""
        return data

    def _send_head(self, length: int | None, body: bytes = b"") -> None:
        """Send the response head (and ``body`` with it, in one write);
        ``length`` None means the body streams."""
        header_filter = self.route.header_filter
        if header_filter is not None:
            try:
                header_filter(self)
            except Exit as exc:
                page = self._replace_response(exc.status)
                if page is not None:
                    length = len(page)
                    body = page
        # ``started`` only once the stream took the head: a field that cannot
        # be sent (CR/LF) raises first, and the request still gets its 500
        self.stream.send_head(self, length, body)
        self.started = True

    def _replace_response(self, status: int) -> bytes | None:
        """``exit(status)`` in header_filter: the page that replaces the body
        (None: the response goes on with the new status)."""
        if status < 300:
            if status >= 200:
                self.status = status
            return None
        self.status = status
        self._discarding = True    # what the handler writes from now on is dropped
        self._out = []
        self._out_size = 0
        self.fields_wire = None
        headers = self.fields_out = Headers()
        if response.bodiless(status):
            return b""
        headers["Content-Type"] = "text/html"
        return response.error_body(status)

    def _write_body(self, data: bytes) -> None:
        self.stream.send_data(self, data)

    def finish(self) -> None:
        """End the response: the whole body with its length, or the end of a streamed one."""
        if self.finished:
            return
        self.finished = True
        if not self.started:
            if self.route.body_filter is None:
                out = self._out
                body = out[0] if len(out) == 1 else b"".join(out)
            else:
                body = self._take_output(eof=True)
            self._send_head(len(body), body)
            return
        data = self._take_output(eof=True)
        if data:
            self._write_body(data)
        self.stream.end(self)

    def discard_output(self) -> None:
        self._out = []
        self._out_size = 0

    # used by the phase runner (phases.py), not by handlers
    def answer_status(self, status: int, *, drop_fields: bool = False) -> None:
        """Make ``status`` the answer of a response that has not started: for
        300 and above, the output so far is replaced by that status's page."""
        if drop_fields:
            self.fields_out = None
            self.fields_wire = None
        self.status = status
        if status >= 300:
            self.discard_output()
            fields = self.out_fields()
            if fields is not None and "content-length" in fields:
                del fields["content-length"]   # it framed the discarded body (RFC 9112 §6.3)
            if not response.bodiless(status):
                self.headers_out["Content-Type"] = "text/html"
                self._out.append(response.error_body(status))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


def _origin_path(target: str) -> tuple[str, str | None]:
    """The path and host of an absolute-form target (RFC 9112 §3.2.2; the
    parser refuses the other forms): ``http://b.test:8080/p`` -> ``/p``, ``b.test:8080``."""
    scheme, sep, rest = target.partition("://")
    if sep:
        slash = rest.find("/")
        if slash >= 0:
            return rest[slash:], rest[:slash]
        return "/", rest
    return target, None
