"""Property tests against one running pyresty (``workers = 0``).

(a) Random bytes, token soup and mutated valid requests, each on a new
    connection: whatever the server sends back must be a sequence of complete,
    well-framed HTTP/1.1 responses, followed by a clean close or by silence
    (the server waiting for more bytes, which is fine: we then close).
(b) Random but valid request sequences (1-5 on one connection, sent one by one
    or pipelined): each gets exactly the expected answer.
After every example the server must still answer ``/hello`` on a fresh
connection and its error log must have no [crit]/[alert]/[emerg] line.

Runtime is bounded by ``max_examples``; a connection waits at most ``IDLE`` s
for the next byte and ``DEADLINE`` s in all.
"""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from client import Connection, Idle, Response
from harness import Pyresty, http_get

APP = '''
import asyncio

async def hello(r):
    await r.say("hello")

async def echo(r):
    await r.print(await r.read_body())

async def stream(r):
    for i in range(3):
        await r.say("part ", i)
        await r.flush()
        await asyncio.sleep(0.005)
'''

CONFIG = '''
workers = 0
[[server]]
listen = "127.0.0.1:{port}"
access_log = "off"
keepalive_timeout = "10s"
keepalive_requests = 1000
client_max_body_size = "1m"
client_header_timeout = "10s"
client_body_timeout = "10s"

[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /echo"
content = "app:echo"
[[server.location]]
path = "= /stream"
content = "app:stream"
'''

IDLE = 0.25       # no byte for this long: the server is waiting for us
DEADLINE = 5.0    # a connection's whole exchange must end within this
STREAM_BODY = b"part 0\npart 1\npart 2\n"
EXPECTED_BODY = {"/hello": b"hello\n", "/stream": STREAM_BODY}   # /echo: the request body

COMMON = dict(deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Pyresty(tmp_path_factory.mktemp("fuzz"), CONFIG, {"app.py": APP})
    srv.start()
    yield srv
    srv.stop()


class LogWatch:
    """Fails on any [crit]/[alert]/[emerg] line written since the last check."""

    def __init__(self, server: Pyresty) -> None:
        self.server = server
        self.offset = len(server.log_text())

    def check(self) -> None:
        text = self.server.log_text()
        new, self.offset = text[self.offset:], len(text)
        bad = [line for line in new.splitlines() if re.search(r"\[(crit|alert|emerg)\]", line)]
        assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def watch(server):
    return LogWatch(server)


def still_serving(server: Pyresty, watch: LogWatch) -> None:
    assert server.proc is not None and server.proc.poll() is None, "pyresty died"
    status, _, body = http_get(server.port, "/hello", timeout=DEADLINE)
    assert (status, body) == (200, b"hello\n")
    watch.check()


# --------------------------------------------------------------------------
# reading responses strictly (tests/client.py), with this file's deadlines

def Wire(port: int) -> Connection:
    """One connection that waits at most IDLE s for a byte and DEADLINE s in all."""
    return Connection(port, timeout=DEADLINE, idle=IDLE, deadline=DEADLINE)


def read_response(wire: Connection, method: str | None) -> Response:
    """One complete, well-framed response; a close-delimited body must be announced."""
    resp = wire.read_response(method)
    assert resp.framing != "close" or resp.closes, "close-delimited body without Connection: close"
    return resp


def read_whatever_comes(wire: Connection) -> list[Response]:
    """For input we cannot predict: read responses until a clean close or silence."""
    responses: list[Response] = []
    try:
        while not wire.at_boundary_closed():
            resp = read_response(wire, None)
            responses.append(resp)
            if resp.closes:
                # the server said it closes: nothing may follow, and it must close
                assert wire.at_boundary_closed(), f"bytes after Connection: close: {wire.buf!r}"
                break
    except Idle:
        assert not wire.buf, f"server stalled inside a response: {bytes(wire.buf)!r}"
        assert not any(r.closes for r in responses), "Connection: close, but no close"
    return responses


def throw(server: Pyresty, data: bytes) -> list[Response]:
    wire = Wire(server.port)
    try:
        wire.send(data)
        return read_whatever_comes(wire)
    finally:
        wire.close()


# --------------------------------------------------------------------------
# (a) random bytes and mutated requests

SOUP = [b"GET", b"POST", b"PUT", b"OPTIONS", b"CONNECT", b"PRI", b" ", b"  ", b"\t", b"/",
        b"/hello", b"/echo", b"/stream", b"*", b"?", b"%", b"%00", b"%2e", b"http://",
        b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"\r\n", b"\r", b"\n", b"\x00",
        b":", b": ", b";", b",", b"Host", b"Content-Length", b"Transfer-Encoding", b"chunked",
        b"identity", b"gzip", b"Connection", b"close", b"keep-alive", b"Upgrade", b"Expect",
        b"100-continue", b"0", b"1", b"5", b"a", b"ff", b"-1", b"99999999999999999999",
        b"18446744073709551615", b"ffffffffffffffffff", b"\xff", b"\x7f"]

BASES = [
    b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hello?a=%20b&c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
    b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n",
]

HUGE = [b"99999999999999999999", b"18446744073709551615", b"18446744073709551616",
        b"9223372036854775807", b"4294967296", b"ffffffffffffffff", b"fffffffffffffffff",
        b"1048577", b"-1", b"0x10", b"1e3", b"", b" 5", b"5 5"]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate",
                                     "huge-length", "huge-chunk"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[pos:]
        elif kind == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b" ", b":",
                                                  b"\t", b"\r\n\r\n", b"\xff"]))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 40))]
        elif kind == "huge-length":
            data = bytearray(re.sub(rb"Content-Length: [0-9]+",
                                    b"Content-Length: " + draw(st.sampled_from(HUGE)),
                                    bytes(data)))
        elif kind == "huge-chunk":
            data = bytearray(re.sub(rb"\r\n\r\n5", b"\r\n\r\n" + draw(st.sampled_from(HUGE)),
                                    bytes(data)))
    return bytes(data)


@pytest.mark.timeout(60)
@settings(max_examples=200, **COMMON)
@given(data=st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(SOUP), max_size=40).map(b"".join),
))
@example(data=b"GARBAGE\r\n\r\n")
@example(data=b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")   # TLS on a plain port
@example(data=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
@example(data=b"\r\n" * 100)
def test_random_bytes_get_a_valid_answer_or_a_clean_close(server, watch, data):
    throw(server, data)
    still_serving(server, watch)


@pytest.mark.timeout(60)
@settings(max_examples=120, **COMMON)
@given(data=mutated())
@example(data=b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nx")
@example(data=b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx")
@example(data=b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\n")
def test_mutated_requests_get_a_valid_answer_or_a_clean_close(server, watch, data):
    throw(server, data)
    still_serving(server, watch)


# --------------------------------------------------------------------------
# (b) random but valid requests

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING_FIELDS = {"content-length", "transfer-encoding", "connection", "expect", "upgrade",
                  "te", "trailer", "keep-alive", "host"}
UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"


@dataclass
class Req:
    method: str
    path: str
    raw: bytes
    body: bytes
    version: str
    wants_close: bool

    @property
    def expected_body(self) -> bytes:
        return EXPECTED_BODY.get(self.path, self.body)

    @property
    def server_may_close(self) -> bool:
        # HTTP/1.0 cannot be chunked: a streamed answer ends with the connection
        return self.wants_close or (self.version == "1.0" and self.path == "/stream")


def percent(draw, text: str) -> str:
    """``text`` with some characters percent-encoded (either hex case)."""
    out = []
    for ch in text:
        if ch.isalpha() and draw(st.booleans()):
            code = "%%%02X" % ord(ch)
            out.append(code if draw(st.booleans()) else code.lower())
        else:
            out.append(ch)
    return "".join(out)


query_part = st.one_of(
    st.text(UNRESERVED, max_size=8),
    st.binary(max_size=6).map(lambda b: "".join("%%%02X" % c for c in b)),
)
field_name = st.text(TOKEN, min_size=1, max_size=20).filter(
    lambda n: n.lower() not in FRAMING_FIELDS)
field_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff,
                                    exclude_categories=("Cc",)),
                      max_size=40).map(lambda v: v.strip(" "))


@st.composite
def valid_request(draw) -> Req:
    path = draw(st.sampled_from(["/hello", "/echo", "/stream"]))
    method = draw(st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                   "HEAD"]))
    target = percent(draw, path)
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(query_part, query_part), max_size=4))
        target += "?" + "&".join(k + ("=" + v if v else "") for k, v in pairs)
    if draw(st.integers(0, 9)) == 0:
        target = "http://example.com" + target           # absolute-form
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    connection = draw(st.sampled_from([None, None, "keep-alive", "close"]))
    fields = [f"Host: {draw(st.sampled_from(['x', 'example.com', '127.0.0.1:1']))}"]
    fields += [f"{n}: {v}" for n, v in draw(st.lists(st.tuples(field_name, field_value),
                                                     max_size=8))]
    if connection:
        fields.append(f"Connection: {connection}")
    wants_close = connection == "close" or (version == "1.0" and connection != "keep-alive")

    body = draw(st.binary(max_size=3000)) if draw(st.booleans()) else b""
    framing = draw(st.sampled_from(["length", "chunked"] if body else
                                   ["none", "length", "chunked"]))
    if version == "1.0" and framing == "chunked":
        framing = "length"        # chunked request bodies are HTTP/1.1 (RFC 9112 §6.1)
    wire_body = b""
    if framing == "length":
        fields.append(f"Content-Length: {len(body)}")
        wire_body = body
    elif framing == "chunked":
        fields.append("Transfer-Encoding: chunked")
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=5))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if body[a:b]]
        for piece in pieces:
            size = "%x" % len(piece)
            size = size.upper() if draw(st.booleans()) else size
            ext = draw(st.sampled_from(["", "", ";a=b", ";flag", ';q="x y"']))
            wire_body += f"{size}{ext}\r\n".encode() + piece + b"\r\n"
        wire_body += b"0\r\n"
        for n, v in draw(st.lists(st.tuples(field_name, field_value), max_size=2)):
            wire_body += f"{n}: {v}\r\n".encode("latin-1")
        wire_body += b"\r\n"
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n"
    return Req(method, path, head.encode("latin-1") + wire_body, body, version, wants_close)


@st.composite
def conversation(draw) -> tuple[list[Req], str]:
    reqs = draw(st.lists(valid_request(), min_size=1, max_size=5))
    for i, req in enumerate(reqs):          # nothing can follow a request that may close
        if req.server_may_close:
            reqs = reqs[:i + 1]
            break
    mode = draw(st.sampled_from(["one-by-one", "pipelined", "pipelined-then-half-close"]))
    return reqs, mode


def check_answer(req: Req, resp: Response, may_close: bool) -> None:
    assert resp.status == 200, (req.raw[:200], resp)
    if req.method == "HEAD":
        assert resp.body == b""
        length = resp.get("content-length")
        assert length is None or int(length) == len(req.expected_body)
    else:
        assert resp.body == req.expected_body
    if req.version == "1.0":
        assert not resp.chunked, "chunked response to an HTTP/1.0 request (RFC 9112 §7.1)"
    if req.wants_close:
        assert resp.closes, "the client asked for close"
    if resp.closes:
        # RFC 9112 §9.6: the response carrying "close" is the last one on the connection
        assert may_close, "Connection: close on a response that is not the last"


@pytest.mark.timeout(60)
@settings(max_examples=150, **COMMON)
@given(conv=conversation())
def test_valid_requests_get_the_expected_answers(server, watch, conv):
    reqs, mode = conv
    wire = Wire(server.port)
    try:
        if mode != "one-by-one":
            assert wire.send(b"".join(r.raw for r in reqs))
            if mode == "pipelined-then-half-close":
                wire.sock.shutdown(socket.SHUT_WR)
        for i, req in enumerate(reqs):
            if mode == "one-by-one":
                assert wire.send(req.raw)
            try:
                resp = read_response(wire, req.method)
            except Idle:
                raise AssertionError(f"no answer to {req.raw[:300]!r}") from None
            # after a half-close the last answer may announce the close
            last_after_eof = mode == "pipelined-then-half-close" and i == len(reqs) - 1
            check_answer(req, resp, req.server_may_close or last_after_eof)
        last = reqs[-1]
        try:
            if mode == "pipelined-then-half-close" or wire.buf or last.server_may_close:
                assert wire.at_boundary_closed(), f"unexpected bytes: {bytes(wire.buf)[:300]!r}"
        except Idle:
            assert not last.wants_close and mode != "pipelined-then-half-close", \
                "the server did not close when it should have"
    finally:
        wire.close()
    still_serving(server, watch)


# --------------------------------------------------------------------------
# cases the properties found, kept as plain examples

def test_head_of_a_streamed_response_has_no_body(server, watch):
    """RFC 9110 §9.3.2: a HEAD response has no body, not even the last chunk;
    the bytes would be read as the start of the next response on keep-alive."""
    wire = Wire(server.port)
    try:
        wire.send(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(wire, "HEAD")
        assert head.status == 200 and head.body == b""
        nxt = read_response(wire, "GET")
        assert (nxt.status, nxt.body) == (200, b"hello\n")
    finally:
        wire.close()
    still_serving(server, watch)


@pytest.mark.parametrize("first_request, first_body", [
    (b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", b"hello\n"),
    (b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", STREAM_BODY),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", b"hi"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
     b"hi"),
], ids=["hello", "stream", "echo-length", "echo-chunked"])
def test_half_closed_client_gets_every_answer(server, watch, first_request, first_body):
    """A client may shut down its sending side after its last request (RFC 9112
    §9.6, ``nc -N``): the server answers everything it received, then closes."""
    wire = Wire(server.port)
    try:
        wire.send(first_request + b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        wire.sock.shutdown(socket.SHUT_WR)
        first = read_response(wire, "GET")
        assert first.body == first_body
        # RFC 9112 §9.6: "close" goes on the last response only, since a client
        # stops reading after the response that carries it.
        assert not first.closes, "Connection: close on a response that is not the last"
        second = read_response(wire, "GET")
        assert second.body == b"hello\n"
        assert wire.at_boundary_closed()
    finally:
        wire.close()
    still_serving(server, watch)


@pytest.mark.parametrize("bad", [
    b"GARBAGE\r\n\r\n",
    b"Host: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["garbage", "stray-field", "bad-chunk-size"])
def test_bad_pipelined_request_does_not_cut_the_answers_before_it(server, watch, bad):
    """Requests before a malformed one get their whole answers, in order; then the
    400 and the close (RFC 9112 §9.3.2: responses in the order of the requests)."""
    wire = Wire(server.port)
    try:
        wire.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok" + bad)
        try:
            answers = [read_response(wire, "GET") for _ in range(3)]
        except Idle:
            raise AssertionError(f"an answer is missing: {bytes(wire.buf)!r}") from None
        assert [(a.status, a.body) for a in answers[:2]] == [(200, STREAM_BODY), (200, b"ok")]
        assert answers[2].status == 400 and answers[2].closes
        assert wire.at_boundary_closed()
    finally:
        wire.close()
    still_serving(server, watch)


@pytest.mark.parametrize("upgrade", [
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
], ids=["websocket", "h2c"])
def test_ignored_upgrade_does_not_swallow_the_next_request(server, watch, upgrade):
    """No location accepts an upgrade, so the server answers over HTTP/1.1 and the
    pipelined request behind it must be answered too (RFC 9110 §7.8 lets a server
    ignore Upgrade), however the bytes were split."""
    first = b"GET /hello HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n"
    second = b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    for pieces in ([first + second], [first, second]):
        wire = Wire(server.port)
        try:
            for piece in pieces:
                wire.send(piece)
                time.sleep(0.05)   # pacing: lets the pieces arrive as separate reads (not a sync)
            try:
                answers = [read_response(wire, "GET").body, read_response(wire, "GET").body]
            except Idle:
                raise AssertionError(f"no answer to the request after the upgrade "
                                     f"(sent in {len(pieces)} piece(s))") from None
            assert answers == [b"hello\n", b"abc"]
        finally:
            wire.close()
    still_serving(server, watch)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_of_an_upgrade_request_is_not_a_second_request(server, watch, framing):
    """The body of an Upgrade request nobody takes is that request's body (or the
    request is refused): it is never answered as a request of its own, which a
    front proxy would not have seen (request smuggling through ``Upgrade: h2c``)."""
    smuggled = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    if framing == "length":
        body = b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
    else:
        body = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(smuggled), smuggled)
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n" + body)
    answers = throw(server, raw)
    assert answers, "no answer at all"
    assert b"hello\n" not in [a.body for a in answers], "the body was answered as a request"
    assert len(answers) == 1
    assert (answers[0].status, answers[0].body) in [(200, smuggled), (400, answers[0].body)]
    still_serving(server, watch)
