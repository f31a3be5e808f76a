"""How a connection ends, or carries on, over real sockets: a client that stops
reading (send_timeout) or resets (both logged 499), keepalive off, a request
without a valid Host (RFC 9112 §3.2: 400), a body nobody reads (discarded, the
next request answered). (The error page after exit() is a case in
tests/system/cases/test_phases.py.)"""
from __future__ import annotations

import re
import socket
import struct

import pytest

from harness import Pyresty, raw_exchange, wait_for

pytestmark = pytest.mark.timeout(30)

APP = '''
import asyncio
import logging

log = logging.getLogger("pyresty.app")

async def hello(r):
    await r.say("hello")

async def echo(r):
    await r.print(await r.read_body())

async def ignore(r):
    await r.say("ignored")

async def parked(r):
    log.warning("parked handler running for %s", r.query)
    await asyncio.sleep(3)
    await r.say("too late")

async def big(r):
    n = int(r.args["n"][0])
    chunk = b"x" * 65536
    while n > 0:
        await r.print(chunk[:n])
        n -= 65536
'''

CONFIG = '''
workers = 0
[[server]]
listen = "127.0.0.1:{port}"
access_log = "logs/access.log"
keepalive_timeout = "5s"
client_max_body_size = "8k"
client_header_timeout = "2s"
client_body_timeout = "2s"
send_timeout = "1s"
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /echo"
content = "app:echo"
[[server.location]]
path = "= /ignore"
content = "app:ignore"
[[server.location]]
path = "= /parked"
content = "app:parked"
[[server.location]]
path = "= /big"
content = "app:big"

[[server]]
listen = "127.0.0.1:{port2}"
keepalive_timeout = "0"
[[server.location]]
path = "/"
content = "app:hello"
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Pyresty(tmp_path_factory.mktemp("connection_end"), CONFIG, {"app.py": APP})
    srv.start()
    yield srv
    srv.stop()


def access_line(server: Pyresty, needle: str, timeout: float = 10.0) -> str:
    path = server.prefix / "logs" / "access.log"

    def find() -> str | None:
        lines = [l for l in path.read_text().splitlines() if needle in l] if path.exists() else []
        return lines[-1] if lines else None

    return wait_for(find, timeout, f"access log line with {needle!r}")


def recv_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# 1. send_timeout: expire() calls transport.close(), which waits for the write
#    buffer to drain -- for a client that stopped reading, forever. The
#    connection and the handler (parked in drain) are held indefinitely.
def test_send_timeout_cuts_a_client_that_stopped_reading(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big?n=500000000&tag=stalled HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # send_timeout is 1 s: the request must end (and be logged) while the
        # client still reads nothing.
        line = access_line(server, "tag=stalled", timeout=8)
    assert '" 499 ' in line, line


# 2. A client that resets the connection while the handler runs: the response
#    was never sent, yet the access log said 200 (nginx logs 499).
def test_client_reset_mid_handler_is_logged_499(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /parked?reset1 HTTP/1.1\r\nHost: x\r\n\r\n")
    server.wait_log(r"parked handler running for reset1")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()   # RST
    line = access_line(server, "/parked?reset1")
    assert re.search(r'"GET /parked\?reset1 HTTP/1\.1" 499 0 ', line), line
    assert raw_exchange(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        ).startswith(b"HTTP/1.1 200")


# 3. keepalive_timeout = 0 turns keepalive off (schema comment, as in nginx),
#    but responses still said "Connection: keep-alive" and the connection was
#    then closed under the client at the next sweep.
def test_keepalive_timeout_zero_answers_connection_close(server):
    reply = raw_exchange(server.ports[1], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = reply.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in head, head


# 4. RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
#    to any HTTP/1.1 request message that lacks a Host header field and to any
#    request message that contains more than one Host header field line".
@pytest.mark.parametrize("raw", [
    b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    b"GET /hello HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
], ids=["http11-no-host", "two-hosts", "http10-two-hosts"])
def test_missing_or_duplicate_host_is_400(server, raw):
    assert raw_exchange(server.port, raw).startswith(b"HTTP/1.1 400")
    # HTTP/1.0 without Host stays valid
    assert raw_exchange(server.port, b"GET /hello HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")


# 5. A handler answers without reading a chunked body; the body then grows past
#    client_max_body_size. The server sent a second, unsolicited 413 response
#    on the connection (RFC 9112 §9.3: one response per request) and closed it,
#    instead of discarding the rest of a body nobody will read (nginx does).
def test_unread_body_after_the_answer_gets_no_second_response(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = recv_until(s, b"ignored\n")
        assert first.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in first
        s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (10000, b"a" * 10000)
                  + b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"hello\n"), rest[:200]


