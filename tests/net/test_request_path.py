"""The optimised request path, compiled and interpreted (PYRESTY_PURE_PYTHON=1):
how handler coroutines are stepped (suspending, raising, exiting, returning
values, cancelled at shutdown), the HTTP version known without asking llhttp,
keepalive settings of the Host-selected server, the cached plain-200 heads and
Date line, and what the compiled Request enforces on handlers.

Written as a review of the mypyc build; five of its findings were bugs, each a
test here: a dict assigned to ``headers_out`` crashed the compiled process,
``headers.get(name, 0)`` was a TypeError compiled, keepalive settings came from
the listen's default server instead of the Host's, a CR/LF header value cut the
connection instead of answering 500, and a worker forked after a reload sent a
stale Date.
"""
from __future__ import annotations

import re
import signal
import socket
import time
from email.utils import parsedate_to_datetime

import pytest

from client import Connection
from harness import Pyresty, http_get, raw_exchange, wait_for

pytestmark = pytest.mark.timeout(60)

APP = '''
import asyncio
import logging

log = logging.getLogger("pyresty.app")

async def hello(r):
    await r.say("hello")

async def echo(r):
    await r.print(await r.read_body())

async def sized(r):
    await r.print("x" * int(r.args["n"][0]))

async def parked(r):
    log.warning("parked handler running")
    try:
        await asyncio.sleep(30)
    finally:
        log.warning("parked handler finally ran")

async def access_sleep(r):
    await asyncio.sleep(0)

async def phased(r):
    await asyncio.sleep(0)
    await r.say("phased")

async def header_default(r):
    count = int(r.headers.get("x-count", 0))     # the Mapping idiom: any default
    await r.say("count ", count)

async def headers_dict(r):
    r.headers_out = {"X-A": "1", "Set-Cookie": ["a=1", "b=2"]}
    await r.say("dict")

async def headers_list(r):
    r.headers_out = [("X-A", "1")]
    await r.say("list")

async def crlf_header(r):
    r.headers_out["X-Bad"] = "a\\r\\nSet-Cookie: forged=1"
    await r.say("split")
'''

LOCATIONS = "".join(f'''
[[server.location]]
path = "= /{name}"
content = "app:{name}"
''' for name in ("hello", "echo", "sized", "parked", "header_default", "headers_dict",
                 "headers_list", "crlf_header"))

CONFIG = '''
workers = 0
worker_shutdown_timeout = "1s"
[[server]]
listen = "127.0.0.1:{port}"
access_log = "logs/access.log"
keepalive_timeout = "5s"
''' + LOCATIONS + '''
[[server.location]]
path = "= /phased"
access = "app:access_sleep"
content = "app:phased"

# one listen, two servers: the default one has keepalive off
[[server]]
listen = "127.0.0.1:{port2}"
server_name = ["off.test"]
keepalive_timeout = "0"
[[server.location]]
path = "/"
content = "app:hello"
[[server]]
listen = "127.0.0.1:{port2}"
server_name = ["on.test"]
keepalive_timeout = "5s"
keepalive_requests = 2
[[server.location]]
path = "/"
content = "app:hello"

# one listen, two servers: the default one keeps alive
[[server]]
listen = "127.0.0.1:{port3}"
server_name = ["on.test"]
keepalive_timeout = "5s"
[[server.location]]
path = "/"
content = "app:hello"
[[server]]
listen = "127.0.0.1:{port3}"
server_name = ["off.test"]
keepalive_timeout = "0"
[[server.location]]
path = "/"
content = "app:hello"
'''


@pytest.fixture(scope="module", params=["compiled", "interpreted"])
def server(request, tmp_path_factory):
    srv = Pyresty(tmp_path_factory.mktemp("review_hotpath"), CONFIG, {"app.py": APP})
    pure = request.param == "interpreted"
    srv.start(env={"PYRESTY_PURE_PYTHON": "1" if pure else ""})
    yield srv
    srv.stop()


class Conn(Connection):
    """A kept-alive connection (tests/client.py) whose responses have no repeated field."""

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        resp = self.read_response("HEAD" if head_only else "GET")
        names = [name.lower() for name, _ in resp.headers]
        assert len(names) == len(set(names)), f"duplicate field in {resp.raw!r}"
        return resp.status, resp.headers.lowered(), resp.body


# -- 1. handler coroutines stepped with __await__ ----------------------------

# -- 2. version inference and the Host rule --------------------------------

def test_http10_keepalive_without_host_stays_http10(server):
    """llhttp keeps an HTTP/1.0 request alive only with Connection: keep-alive;
    the inference of "1.1" must not turn such a request into one that needs Host."""
    c = Conn(server.port)
    try:
        c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = c.response()
        assert (status, headers["connection"], body) == (200, "keep-alive", b"hello\n")
        c.send(b"GET /hello HTTP/1.0\r\nCONNECTION: Keep-Alive\r\n\r\n"
               b"GET /hello HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n"
               b"GET /hello HTTP/1.0\r\n\r\n")
        for last in (False, False, True):
            status, headers, body = c.response()
            assert status == 200, body
            assert headers["connection"] == ("close" if last else "keep-alive")
        assert c.closed_by_server()
    finally:
        c.close()


@pytest.mark.parametrize("raw, status", [
    (b"GET /hello HTTP/1.1\r\nHOST: a\r\n\r\n", 200),
    (b"GET /hello HTTP/1.1\r\nhOsT: a\r\n\r\n", 200),
    (b"GET /hello HTTP/1.1\r\nHOST: a\r\nhost: b\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\n", 400),
    (b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\nHOST: b\r\n\r\n", 400),
])
def test_host_rule_with_unusual_field_case(server, raw, status):
    assert raw_exchange(server.port, raw + b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                        ).startswith(b"HTTP/1.1 %d" % status)


def test_content_length_in_unusual_case_and_connection_close_in_capitals(server):
    reply = raw_exchange(server.port, b"POST /echo HTTP/1.1\r\nhost: a\r\nContent-LENGTH: 5\r\n\r\nhello"
                         b"GET /hello HTTP/1.1\r\nHost: a\r\nCONNECTION: CLOSE\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert b"\r\n\r\nhello" in reply
    assert reply.endswith(b"Connection: close\r\n\r\nhello\n")


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
def test_request_line_that_is_not_http1_is_a_505(server, version, connection):
    """llhttp accepts "HTTP/2.0" and "HTTP/0.9" request lines; like nginx,
    pyresty answers 505 and closes instead of serving them as HTTP/1.x."""
    reply = raw_exchange(server.port, b"GET /hello HTTP/" + version + b"\r\nHost: a\r\n"
                         + connection + b"\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), reply
    assert b"Connection: close\r\n" in reply


def test_keepalive_upgrade_requests_then_plain_ones(server):
    """Each Upgrade request makes a fresh parser (bound methods re-bound)."""
    upgrade = (b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
               b"Upgrade: websocket\r\n\r\n")
    plain = b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"   # no Host: must stay 1.0
    c = Conn(server.port)
    try:
        c.send(upgrade + upgrade + plain + upgrade + plain)
        for _ in range(5):
            status, headers, body = c.response()
            assert (status, body, headers["connection"]) == (200, b"hello\n", "keep-alive")
        for data in (upgrade, plain, upgrade, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"):
            c.send(data)
            assert c.response()[0] == 200
    finally:
        c.close()


def test_connect_request_gets_an_answer_and_a_close(server):
    reply = raw_exchange(server.port, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 \d{3} ", reply), reply


# -- 3. cached plain 200 heads ----------------------------------------------

def test_head_on_the_plain_200_path_has_length_and_no_body(server):
    c = Conn(server.port)
    try:
        for method, n in (("HEAD", 7), ("GET", 7), ("HEAD", 7), ("GET", 0), ("HEAD", 0),
                          ("HEAD", 12), ("GET", 12)):
            c.send(f"{method} /sized?n={n} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            status, headers, body = c.response(head_only=method == "HEAD")
            assert status == 200
            assert headers["content-length"] == str(n)
            assert body == (b"x" * n if method == "GET" else b"")
        # nothing stray followed the HEAD answers
        c.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = c.response()
        assert (status, body) == (200, b"hello\n")
    finally:
        c.close()


def test_many_lengths_within_one_second_keep_their_own_head(server):
    c = Conn(server.port)
    try:
        lengths = list(range(0, 600, 2)) + [7, 7, 300]
        c.send(b"".join(f"GET /sized?n={n} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for n in lengths[:16]))
        for n in lengths[:16]:
            status, headers, body = c.response()
            assert headers["content-length"] == str(n) and body == b"x" * n
        for n in lengths[16:]:
            c.send(f"GET /sized?n={n} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            status, headers, body = c.response()
            assert headers["content-length"] == str(n) and body == b"x" * n
    finally:
        c.close()


def test_date_of_cached_heads_follows_the_clock(server):
    """Across second boundaries the cached heads carry the new Date, and a
    head cached in one second is never served with another second's length."""
    dates = set()
    requests = 0
    deadline = time.monotonic() + 4
    c = Conn(server.port)
    try:
        while len(dates) < 3 and time.monotonic() < deadline:
            n = 5 + requests % 3
            c.send(f"GET /sized?n={n} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            before = time.time()
            status, headers, body = c.response()
            after = time.time()
            requests += 1
            assert (status, headers["content-length"], body) == (200, str(n), b"x" * n)
            stamp = parsedate_to_datetime(headers["date"]).timestamp()
            # one-second resolution, refreshed by a 0.25 s sweeper
            assert before - 1.5 <= stamp <= after + 0.5, (headers["date"], before)
            dates.add(headers["date"])
            if headers["connection"] == "close":     # keepalive_requests reached
                c.close()
                c = Conn(server.port)
        assert len(dates) >= 3, dates
    finally:
        c.close()


# -- 4. keepalive settings with several servers on one listen --------------

def _keepalive_answer(port: int, host: str) -> str:
    c = Conn(port)
    try:
        c.send(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return c.response()[1]["connection"]
    finally:
        c.close()


def test_keepalive_follows_the_host_selected_server(server):
    """nginx takes keepalive_timeout / keepalive_requests from the location of
    the Host-selected server (ngx_http_update_location_config), not from the
    default server of the listen."""
    assert _keepalive_answer(server.ports[1], "off.test") == "close"
    assert _keepalive_answer(server.ports[2], "on.test") == "keep-alive"
    got = {"on.test on a listen whose default has keepalive off":
           _keepalive_answer(server.ports[1], "on.test"),
           "off.test on a listen whose default keeps alive":
           _keepalive_answer(server.ports[2], "off.test")}
    assert got == {"on.test on a listen whose default has keepalive off": "keep-alive",
                   "off.test on a listen whose default keeps alive": "close"}


# -- 5. cancellation at shutdown -------------------------------------------

@pytest.mark.parametrize("mode", ["compiled", "interpreted"])
def test_parked_handler_is_cancelled_at_shutdown_and_logged_499(mode, tmp_path):
    srv = Pyresty(tmp_path, CONFIG, {"app.py": APP})
    srv.start(env={"PYRESTY_PURE_PYTHON": "1" if mode == "interpreted" else ""})
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /parked HTTP/1.1\r\nHost: a\r\n\r\n")
            srv.wait_log(r"parked handler running")
            srv.signal(signal.SIGQUIT)
            srv.wait_log(r"parked handler finally ran", timeout=10)
            s.settimeout(10)
            try:
                rest = s.recv(4096)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
        assert srv.proc.wait(10) == 0
        log = (tmp_path / "logs" / "access.log").read_text()
        assert re.search(r'"GET /parked HTTP/1\.1" 499 ', log), log
    finally:
        srv.stop()


# -- 6. what compiling enforces on the public API ----------------------------

def test_headers_get_accepts_a_default_of_any_type(server):
    """Headers is a Mapping: ``get(name, 0)`` returns 0 when absent. Compiled,
    ``default: str | None`` turns this idiom into a TypeError (500)."""
    status, _, body = http_get(server.port, "/header_default")
    assert (status, body) == (200, b"count 0\n")
    assert http_get(server.port, "/header_default", {"X-Count": "3"})[2] == b"count 3\n"


def test_assigning_a_mapping_to_headers_out_sets_those_headers(server):
    """Compiled, mypyc does not type-check what a property setter receives: a
    dict stored unchecked as ``headers_out`` once crashed the process. A mapping
    is now taken as headers (a list value sets several fields)."""
    status, headers, body = http_get(server.port, "/headers_dict")
    assert (status, headers["x-a"], body) == (200, "1", b"dict\n")
    reply = raw_exchange(server.port, b"GET /headers_dict HTTP/1.1\r\nHost: a\r\n"
                         b"Connection: close\r\n\r\n", timeout=5)
    assert b"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n" in reply


def test_assigning_anything_else_to_headers_out_is_a_500(server):
    """SPEC §5: a handler error is a 500 and a worker that keeps serving."""
    status, _, _ = http_get(server.port, "/headers_list")
    assert status == 500
    server.wait_log(r"TypeError: headers_out takes a Headers or a mapping, not list")
    assert http_get(server.port, "/hello")[2] == b"hello\n"


def test_header_that_would_split_the_response_is_a_500(server):
    """phases._complete means to answer 500 when a header value would split the
    response; _start marks the response started before encoding the head, so the
    connection is cut with no answer at all (before and after the review range)."""
    reply = raw_exchange(server.port, b"GET /crlf_header HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 500"), reply
    assert b"forged" not in reply


# -- 7. the Date of a fresh worker ---------------------------------------------

RELOAD_CONFIG = '''
workers = 1
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "/"
content = "app:sized"
'''


@pytest.mark.parametrize("mode", ["compiled", "interpreted"])
def test_date_is_current_in_a_worker_forked_after_a_reload(mode, tmp_path):
    """The Date cache is filled when the master imports the module and refreshed
    only by a worker's 0.25 s sweeper: a worker forked later answers its first
    requests with the master's start-up time (plain 200 heads included)."""
    srv = Pyresty(tmp_path, RELOAD_CONFIG, {"app.py": APP})
    srv.start(env={"PYRESTY_PURE_PYTHON": "1" if mode == "interpreted" else ""})
    try:
        started = time.time()
        wait_for(lambda: time.time() > started + 3, 10, "the clock to move 3 s past start-up")
        srv.signal(signal.SIGHUP)
        worst = 0.0
        answered = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                status, headers, _ = http_get(srv.port, "/?n=3", timeout=5)
            except OSError:
                continue
            answered += 1
            lag = time.time() - parsedate_to_datetime(headers["date"]).timestamp()
            worst = max(worst, lag)
        assert answered > 0
        assert worst < 1.5, f"a response carried a Date {worst:.1f} s old"
    finally:
        srv.stop()


def test_connection_close_in_a_trailer_closes_after_the_answer(server):
    """llhttp turns keep-alive off when a chunked body's trailer says
    ``Connection: close``, and then refuses any further byte: the answer says
    close and the connection ends, instead of a 400 for the pipelined request."""
    body = (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nConnection: close\r\n\r\n")
    reply = raw_exchange(server.port, body + b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
    assert b"\r\nConnection: close\r\n" in reply and reply.endswith(b"\r\n\r\nhello")
    assert b"400" not in reply
    # without the trailer, the same pipeline is answered twice
    plain = body.replace(b"Connection: close\r\n", b"")
    reply = raw_exchange(server.port, plain + b"GET /hello HTTP/1.1\r\nHost: a\r\n"
                         b"Connection: close\r\n\r\n", timeout=5)
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == 2, reply
