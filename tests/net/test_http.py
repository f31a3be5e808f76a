"""HTTP/1.1 behaviour of a real single-process pyresty over real sockets."""
from __future__ import annotations

import http.client
import re
import socket
import time

import pytest

from harness import Pyresty, raw_exchange, http_get, wait_for
from pyresty import purepython

pytestmark = pytest.mark.timeout(60)

APP = '''
import asyncio
import pyresty

async def hello(r):
    r.headers_out["Content-Type"] = "text/plain"
    await r.say("hello")

async def echo(r):
    body = await r.read_body()
    r.headers_out["X-Method"] = r.method
    await r.print(body)

async def info(r):
    await r.say(r.method, " ", r.path, " ", r.query, " ", r.http_version)
    await r.say("args=", sorted(r.args.items()))
    await r.say("host=", r.headers.get("host"), " multi=", r.headers.get_all("x-multi"))
    await r.say("client=", r.client_addr)

async def stream(r):
    for i in range(3):
        await r.say("part ", i)
        await r.flush()
        await asyncio.sleep(0.01)

async def big(r):
    n = int(r.args.get("n", ["1000000"])[0])
    chunk = b"x" * 65536
    while n > 0:
        await r.print(chunk[:n])
        n -= 65536

async def boom(r):
    raise RuntimeError("handler exploded")

async def typo(r):
    r.stauts = 404          # a misspelt attribute
    await r.say("typo kept")

async def sleepy(r):
    await asyncio.sleep(float(r.args["t"][0]))
    await r.say("slept")

'''

CONFIG = '''
workers = 0
[[server]]
listen = "127.0.0.1:{port}"
access_log = "logs/access.log"
keepalive_timeout = "2s"
keepalive_requests = 5
client_max_body_size = "64k"
client_header_timeout = "1s"
client_body_timeout = "1s"

[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /echo"
content = "app:echo"
[[server.location]]
path = "/info"
content = "app:info"
[[server.location]]
path = "= /stream"
content = "app:stream"
[[server.location]]
path = "= /big"
content = "app:big"
[[server.location]]
path = "= /boom"
content = "app:boom"
[[server.location]]
path = "= /typo"
content = "app:typo"
[[server.location]]
path = "= /sleepy"
content = "app:sleepy"
'''


@pytest.fixture(scope="module", params=["compiled", "interpreted"])
def server(request, tmp_path_factory):
    """Every test here runs twice: on the request path as installed (compiled
    with mypyc, see setup.py) and on its plain Python source."""
    prefix = tmp_path_factory.mktemp("http")
    srv = Pyresty(prefix, CONFIG, {"app.py": APP},
                  expect_log=())
    pure = request.param == "interpreted"
    srv.start(env={"PYRESTY_PURE_PYTHON": "1" if pure else ""})
    if pure:
        srv.wait_log(r"\[notice\] .*: request path interpreted")
    yield srv
    srv.stop()


def test_hello_has_length_date_server(server):
    status, headers, body = http_get(server.port, "/hello")
    assert status == 200 and body == b"hello\n"
    assert headers["content-length"] == "6"
    assert headers["server"].startswith("pyresty/")
    assert "date" in headers and headers["content-type"] == "text/plain"


def test_request_attributes(server):
    status, _, body = http_get(server.port, "/info/a%20b?x=1&x=2&y=",
                               headers={"Host": "example.com", "X-Multi": "a"})
    text = body.decode()
    assert "GET /info/a b x=1&x=2&y= 1.1" in text
    assert "args=[('x', ['1', '2']), ('y', [''])]" in text
    assert "host=example.com" in text
    assert "client=127.0.0.1" in text


def test_multi_valued_request_headers(server):
    raw = (b"GET /info HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nx-multi: b\r\n"
           b"Connection: close\r\n\r\n")
    assert b"multi=['a', 'b']" in raw_exchange(server.port, raw)


def test_not_found_and_head(server):
    status, _, body = http_get(server.port, "/nowhere")
    assert status == 404 and b"404 Not Found" in body
    status, headers, body = http_get(server.port, "/hello", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "6"


def test_post_content_length_and_chunked(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/echo", body=b"payload")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"payload"
    conn.request("POST", "/echo", body=iter([b"chu", b"nked"]),
                 headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"chunked"
    conn.close()


def test_expect_100_continue(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim = s.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        final = s.recv(4096)
        assert final.startswith(b"HTTP/1.1 200") and final.endswith(b"data")


def test_streamed_response_is_chunked(server):
    reply = raw_exchange(server.port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"7\r\npart 0\n\r\n7\r\npart 1\n\r\n7\r\npart 2\n\r\n0\r\n\r\n"


def test_http10_stream_is_close_delimited(server):
    reply = raw_exchange(server.port, b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"chunked" not in head and b"Connection: close" in head
    assert body == b"part 0\npart 1\npart 2\n"


def test_pipelining_three_requests_in_one_packet(server):
    raw = (b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /info/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = raw_exchange(server.port, raw)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    first = reply.index(b"hello\n")
    second = reply.index(b"\r\n\r\nabc")
    third = reply.index(b"GET /info/p")
    assert first < second < third


def test_keepalive_requests_limit(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    answers = []
    for _ in range(5):
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        resp.read()
        answers.append(resp.getheader("connection"))
    conn.close()
    assert answers == ["keep-alive"] * 4 + ["close"]


def test_keepalive_timeout_closes_idle_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert s.recv(1) == b""  # closed by the server after keepalive_timeout (2 s)
        assert 1.5 < time.monotonic() - start < 4


def test_access_log_combined_format(server):
    http_get(server.port, "/hello", headers={"User-Agent": "tester/1", "Referer": "http://r/"})
    line = wait_for(lambda: [l for l in (server.prefix / "logs" / "access.log").read_text()
                             .splitlines() if "tester/1" in l], 5, "access log line")[-1]
    assert re.match(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                    r'"GET /hello HTTP/1\.1" 200 6 "http://r/" "tester/1" \d+\.\d{3} - - -$', line)


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
     + b"\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", 413),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
])
def test_bad_input_table(server, raw, status):
    reply = raw_exchange(server.port, raw)
    assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:200]
    assert b"Connection: close" in reply
    assert http_get(server.port, "/hello")[0] == 200


def test_chunked_body_over_limit_is_413(server):
    chunk = b"%x\r\n%s\r\n" % (40000, b"a" * 40000)
    reply = raw_exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413")


def test_slow_header_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHo")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")


def test_slow_body_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")


def test_concurrent_slow_handlers_do_not_block_others(server):
    import threading
    results = []
    t = threading.Thread(target=lambda: results.append(http_get(server.port, "/sleepy?t=1")))
    t.start()
    start = time.monotonic()
    assert http_get(server.port, "/hello")[0] == 200
    assert time.monotonic() - start < 0.5
    t.join(10)
    assert results and results[0][2] == b"slept\n"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_does_not_grow_memory(server):
    """A client that never reads a 200 MB response must not make the server buffer it."""
    before = _rss_kb(server.pid)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big?n=200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # Watch the server for a second while the handler keeps producing:
        # a runaway buffer would grow by hundreds of MB in that time.
        grown = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            grown = max(grown, _rss_kb(server.pid) - before)
            time.sleep(0.05)
    assert grown < 20 * 1024, f"server RSS grew by {grown} KiB"
    assert http_get(server.port, "/hello")[0] == 200


def test_access_log_escapes_quotes_in_the_request_line(server):
    raw_exchange(server.port, b'GET /hello?x="forged"\\ HTTP/1.1\r\nHost: x\r\n'
                 b'User-Agent: escaper\r\nConnection: close\r\n\r\n')
    line = wait_for(lambda: [l for l in (server.prefix / "logs" / "access.log").read_text()
                             .splitlines() if "escaper" in l], 5, "access log line")[-1]
    assert '"GET /hello?x=\\x22forged\\x22\\x5C HTTP/1.1"' in line


def test_refused_requests_are_in_the_access_log(server):
    reply = raw_exchange(server.port, b"GARBAGE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    line = wait_for(lambda: [l for l in (server.prefix / "logs" / "access.log").read_text()
                             .splitlines() if '"-" 400 ' in l], 5, "the refused request's line")[-1]
    assert re.match(r'127\.0\.0\.1 - - \[.+\] "-" 400 \d+ "-" "-" 0\.000 - - -$', line)


def test_misspelt_request_attribute_is_a_500_when_compiled(server, request):
    """Compiled, Request is a closed object: a typo is an AttributeError (500,
    logged), not a silently ignored attribute. Interpreted, Python lets it pass."""
    compiled = request.node.callspec.params["server"] == "compiled" and purepython.compiled()
    status, _, body = http_get(server.port, "/typo")
    if compiled:
        assert status == 500
        server.wait_log(r"\[error\] .*handler failed on GET /typo")
        assert "AttributeError" in server.log_text()
    else:
        assert (status, body) == (200, b"typo kept\n")
