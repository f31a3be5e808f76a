"""HTTP/1.1 conformance over real sockets (issue 16, items 9-11 and 13): framing
that must never reach a handler, request-target forms, methods and versions,
and request bodies a handler does not read. nginx 1.22's answers, checked on
the same requests, are given with each case.

Runs on the compiled request path and on its plain Python source.
"""
from __future__ import annotations

import re
import socket
import time

import pytest

from harness import Pyresty, raw_exchange, wait_for

pytestmark = pytest.mark.timeout(60)

APP = '''
import logging

log = logging.getLogger("pyresty.app")

async def who(r):
    log.warning("handler ran for %s %s", r.method, r.uri)
    await r.say(r.ctx.get("server", "?"), " ", r.method, " ", r.path, " ", r.uri, " ",
                r.http_version, " host=", r.headers.get("host"))

def server_a(r):
    r.ctx["server"] = "a"

def server_b(r):
    r.ctx["server"] = "b"

async def a(r):
    server_a(r)
    await who(r)

async def b(r):
    server_b(r)
    await who(r)

async def echo(r):
    body = await r.read_body()
    await r.say("got ", len(body))
'''

CONFIG = '''
workers = 0
[[server]]
listen = "127.0.0.1:{port}"
server_name = ["a.test"]
access_log = "logs/access.log"
client_max_body_size = "4m"
client_header_timeout = "5s"
client_body_timeout = "5s"
[[server.location]]
path = "/"
content = "app:a"
[[server.location]]
path = "= /echo"
content = "app:echo"

[[server]]
listen = "127.0.0.1:{port}"
server_name = ["b.test"]
client_max_body_size = "4m"
[[server.location]]
path = "/"
content = "app:b"
'''

DISCARD_MAX = 1024 * 1024   # pyresty.http.persistence.DISCARD_MAX


@pytest.fixture(scope="module", params=["compiled", "interpreted"])
def server(request, tmp_path_factory):
    srv = Pyresty(tmp_path_factory.mktemp("conformance"), CONFIG, {"app.py": APP})
    pure = request.param == "interpreted"
    srv.start(env={"PYRESTY_PURE_PYTHON": "1" if pure else ""})
    if pure:
        srv.wait_log(r"\[notice\] .*: request path interpreted")
    yield srv
    srv.stop()


def read_responses(s: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """Read ``count`` complete responses framed by Content-Length (or until EOF)."""
    data = b""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    s.settimeout(timeout)
    while len(out) < count and time.monotonic() < deadline:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            match = re.search(rb"\r\nContent-Length: (\d+)", head)
            size = head_end + 4 + (int(match.group(1)) if match else 0)
            if len(data) >= size:
                out.append(data[:size])
                data = data[size:]
                continue
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    if data:
        out.append(data)
    return out


def status_of(response: bytes) -> int:
    return int(response[9:12])


# ---------------------------------------------------------------------------
# item 9: Transfer-Encoding other than exactly "chunked"

@pytest.mark.parametrize("coding, status", [
    (b"gzip", 400),            # nginx 501; RFC 9112 §6.3: no chunked last, no framing: 400
    (b"gzip, chunked", 501),   # nginx 501
    (b"chunked;x=1", 501),     # nginx 501
    (b"chunked, gzip", 400),   # nginx 501; RFC 9112 §6.3
], ids=["gzip", "gzip-chunked", "chunked-parameter", "chunked-gzip"])
def test_unsupported_transfer_coding_is_refused_before_any_handler(server, coding, status):
    """The handler answered 200, then the server wrote a 400 on the same
    connection and logged a 499: two responses to one request. Now: one
    response, before any handler runs, and the connection closed."""
    tag = f"te-{status}-{coding.decode()}".replace(" ", "").replace(",", "+").replace(";", "_")
    reply = raw_exchange(server.port, b"POST /%s HTTP/1.1\r\nHost: a.test\r\n"
                         b"Transfer-Encoding: %s\r\n\r\n0\r\n\r\n"
                         b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n" % (tag.encode(), coding))
    assert reply.count(b"HTTP/1.1 ") == 1, reply
    assert reply.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in reply
    log = (server.prefix / "logs" / "access.log")
    wait_for(lambda: log.exists() and f'"-" {status} ' in log.read_text(), 5, "the refusal's line")
    assert tag not in log.read_text() and f"handler ran for POST /{tag}" not in server.log_text()


def test_bad_chunk_after_the_response_gets_no_second_response(server):
    """A handler answered without reading its chunked body; the body then turns
    out malformed. Nothing more may be written for that request (nginx closes)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /unread HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = read_responses(s, 1)
        assert status_of(first[0]) == 200 and first[0].endswith(b"/unread 1.1 host=a.test\n")
        s.sendall(b"zz\r\nabc\r\n")
        assert read_responses(s, 1) == []   # closed, with nothing written


# ---------------------------------------------------------------------------
# item 10: absolute-form routes by its authority (RFC 9112 §3.2.2)

@pytest.mark.parametrize("target, host, expect", [
    (b"http://b.test/x?q=1", b"a.test", b"b GET /x http://b.test/x?q=1"),   # nginx: server b
    (b"http://B.TEST:8080", b"a.test", b"b GET / http://B.TEST:8080"),     # port, case, no path
    (b"https://a.test/y", b"b.test", b"a GET /y https://a.test/y"),
    (b"/z", b"b.test", b"b GET /z /z"),                                     # origin-form: Host
])
def test_absolute_form_target_chooses_the_server(server, target, host, expect):
    """r.uri stays the target as sent; r.path is its path; the server is the
    one the target's host names, whatever Host says."""
    reply = raw_exchange(server.port, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                         % (target, host))
    assert reply.startswith(b"HTTP/1.1 200"), reply
    body = reply.partition(b"\r\n\r\n")[2]
    assert body.startswith(expect), body


# ---------------------------------------------------------------------------
# item 11: target forms, methods, versions, raw UTF-8

@pytest.mark.parametrize("line, status", [
    (b"OPTIONS * HTTP/1.1", 400),                 # nginx 400 (was 404)
    (b"GET * HTTP/1.1", 400),                     # nginx 400
    (b"CONNECT b.test:443 HTTP/1.1", 400),        # nginx 400
    (b"CONNECT / HTTP/1.1", 400),                 # nginx 405
    (b"FOO / HTTP/1.1", 501),                     # RFC 9110 §9.1; nginx routes it (return: 200)
    (b"get / HTTP/1.1", 400),                     # nginx 400 (not an upper-case method)
    (b"GET / HTTP/2.0", 505),                     # nginx 505
    (b"GET / HTTP/3.1", 505),                     # nginx 505
])
def test_request_line_refusals(server, line, status):
    reply = raw_exchange(server.port, line + b"\r\nHost: a.test\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:100]
    assert b"Connection: close" in reply


def test_http_1_2_is_served_as_1_1(server):
    """nginx serves HTTP/1.2 as HTTP/1.1 (keep-alive by default); was 400."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v HTTP/1.2\r\nHost: a.test\r\n\r\nGET /w HTTP/1.2\r\nHost: a.test\r\n"
                  b"Connection: close\r\n\r\n")
        first, second = read_responses(s, 2)
    assert b"Connection: keep-alive" in first and first.endswith(b"a GET /v /v 1.1 host=a.test\n")
    assert status_of(second) == 200


def test_raw_utf8_in_the_path_is_accepted(server):
    """nginx accepts raw bytes >= 0x80 in the target (curl sends UTF-8 as typed);
    llhttp refused it (400). r.path decodes it like its percent-encoded form."""
    reply = raw_exchange(server.port, b"GET /caf\xc3\xa9?x=\xc3\xbc HTTP/1.1\r\nHost: b.test\r\n"
                         b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply
    body = reply.partition(b"\r\n\r\n")[2].decode()
    assert body.startswith("b GET /caf\u00e9 /caf%C3%A9?x=%C3%BC 1.1"), body


# ---------------------------------------------------------------------------
# item 13: a body the handler does not read

def test_expect_100_continue_unread_body_keeps_the_connection(server):
    """nginx sends 100 Continue, reads and drops the body, and answers the next
    pipelined request. pyresty answered with Connection: close, so the next
    request went unanswered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim, final = read_responses(s, 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert status_of(final) == 200 and b"Connection: keep-alive" in final
        s.sendall(b"hello" + b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        [after] = read_responses(s, 1)
    assert after.endswith(b"a GET /after /after 1.1 host=a.test\n"), after


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_unread_body_is_dropped_and_the_next_request_answered(server, framing):
    """Without Expect: the body the handler ignored is read and dropped (nginx's
    discard), not taken for the next request, and the connection stays."""
    body = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n" * 100
    if framing == "length":
        head = b"Content-Length: %d\r\n\r\n" % len(body)
        framed = body
    else:
        head = b"Transfer-Encoding: chunked\r\n\r\n"
        framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /ignored HTTP/1.1\r\nHost: a.test\r\n" + head + framed[:10])
        [first] = read_responses(s, 1)
        assert status_of(first) == 200 and b"Connection: keep-alive" in first
        s.sendall(framed[10:] + b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n")
        [second] = read_responses(s, 1)
    assert second.endswith(b"a GET /next /next 1.1 host=a.test\n"), second
    assert "/smuggled" not in server.log_text()


def test_unread_body_over_the_bound_closes_instead(server):
    """More than DISCARD_MAX left to read: not worth reading; a client that
    asked for 100 Continue gets none, and the response says Connection: close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /big HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % (DISCARD_MAX + 1))
        responses = read_responses(s, 3)
    assert len(responses) == 1 and status_of(responses[0]) == 200, responses
    assert b"Connection: close" in responses[0]


def test_chunked_unread_body_past_the_bound_closes_after_the_response(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /bigchunks HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        [first] = read_responses(s, 1)
        assert status_of(first) == 200 and b"Connection: keep-alive" in first
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        sent = 0
        try:
            while sent <= 2 * DISCARD_MAX:
                s.sendall(chunk)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass   # closed once past the bound
        s.settimeout(10)
        try:
            assert s.recv(65536) == b""
        except ConnectionResetError:
            pass   # closed with unread bytes: the kernel resets


def test_read_body_still_works_with_expect(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        [interim] = read_responses(s, 1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abc")
        [final] = read_responses(s, 1)
    assert final.endswith(b"got 3\n")
