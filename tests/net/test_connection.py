"""The HTTP/1.1 connection in-process: bytes in through a transport double, bytes out.

No subprocess and no socket: an ``HttpServer`` is built from a config in the
test's own uvloop, each test feeds request bytes to an ``HttpConnection``
(whole, in 1-byte and in 10-byte slices) and reads what it wrote. The
transport double records writes and closes; everything above it (parser,
Stream, phases, Request) is the real code, compiled or interpreted as built.
"""
from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from pyresty.config import load
from pyresty.runtime import loader
from pyresty.server import connection
from pyresty.server.connection import HttpConnection
from pyresty.server.server import HttpServer

pytestmark = pytest.mark.timeout(30)

APP = '''
import asyncio

async def hello(r):
    await r.say("hello")

async def echo(r):
    body = await r.read_body()
    await r.print(len(body), ":", body)

async def ignore_body(r):
    await r.say("not read")

async def slow(r):
    await asyncio.sleep(0.01)
    await r.say("slow ", r.path)

async def stream(r):
    await r.say("one")
    await r.flush()
    await r.say("two")

async def close_me(r):
    r.headers_out["Connection"] = "close"
    await r.say("bye")

async def boom(r):
    raise RuntimeError("boom")
'''

CONFIG = '''
workers = 1
code_path = ["{code}"]
[[server]]
listen = "127.0.0.1:1"
access_log = "off"
[[server.location]]
path = "= /hello"
content = "conn_app:hello"
[[server.location]]
path = "= /echo"
content = "conn_app:echo"
[[server.location]]
path = "= /ignore"
content = "conn_app:ignore_body"
[[server.location]]
path = "/slow/"
content = "conn_app:slow"
[[server.location]]
path = "= /stream"
content = "conn_app:stream"
[[server.location]]
path = "= /close"
content = "conn_app:close_me"
[[server.location]]
path = "= /boom"
content = "conn_app:boom"
'''


class Transport:
    """What HttpConnection uses of an asyncio transport, recording what it gets."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.eof_sent = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.eof_sent = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Client:
    """One connection to the in-process server."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport = Transport()
        self.conn = HttpConnection(server, server.config.servers[0].listen[0])
        self.conn.connection_made(self.transport)

    def send(self, data: bytes, slice_size: int = 0) -> None:
        step = slice_size or len(data)
        for i in range(0, len(data), step):
            self.conn.data_received(data[i:i + step])

    def run_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not condition():
                await asyncio.sleep(0.001)
        self.loop.run_until_complete(asyncio.wait_for(wait(), timeout))

    def responses(self, count: int, timeout: float = 5.0) -> list[tuple[int, dict[str, str], bytes]]:
        """Wait for ``count`` complete responses and parse them."""
        self.run_until(lambda: len(parse(bytes(self.transport.out))) >= count, timeout)
        return parse(bytes(self.transport.out))

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.connection_lost(None)


def parse(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Complete responses in ``data`` (Content-Length or chunked; 100 Continue kept)."""
    found = []
    while data:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            break
        lines = data[:head_end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        rest = data[head_end + 4:]
        if status == 100:
            found.append((status, fields, b""))
            data = rest
            continue
        if fields.get("transfer-encoding") == "chunked":
            body, pos = b"", 0
            while True:
                line_end = rest.find(b"\r\n", pos)
                if line_end < 0:
                    return found
                size = int(rest[pos:line_end], 16)
                if len(rest) < line_end + 2 + size + 2:
                    return found
                body += rest[line_end + 2:line_end + 2 + size]
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
            found.append((status, fields, body))
            data = rest[pos:]
        else:
            length = int(fields.get("content-length", "0"))
            if len(rest) < length:
                break
            found.append((status, fields, rest[:length]))
            data = rest[length:]
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpServer, Any]]:
    code = tmp_path_factory.mktemp("conn_app")
    (code / "conn_app.py").write_text(textwrap.dedent(APP))
    config_path = Path(code) / "pyresty.toml"
    config_path.write_text(textwrap.dedent(CONFIG).replace("{code}", str(code)))
    config = load(str(config_path))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loader.install(config.code_path)
    try:
        yield HttpServer(config, loop, loader.resolve, {}), loop
    finally:
        sys.modules.pop("conn_app", None)
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def client(served: tuple[HttpServer, Any]) -> Iterator[Client]:
    server, loop = served
    c = Client(server, loop)
    yield c
    c.close()


SLICES = pytest.mark.parametrize("slice_size", [0, 1, 10], ids=["whole", "1-byte", "10-byte"])


@SLICES
def test_keepalive_answers_each_request_on_one_connection(client: Client, slice_size: int) -> None:
    for n in range(1, 4):
        client.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n", slice_size)
        got = client.responses(n)
        assert got[-1][:3:2] == (200, b"hello\n")
        assert got[-1][1]["connection"] == "keep-alive"
    assert not client.transport.closed


@SLICES
def test_pipelined_requests_are_answered_in_order(client: Client, slice_size: int) -> None:
    client.send(b"GET /slow/a HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /slow/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", slice_size)
    got = client.responses(4)
    assert [body for _, _, body in got] == [b"slow /slow/a\n", b"hello\n", b"3:abc", b"slow /slow/b\n"]
    client.run_until(lambda: client.transport.closed)
    assert got[-1][1]["connection"] == "close"


@SLICES
def test_chunked_request_body(client: Client, slice_size: int) -> None:
    client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", slice_size)
    assert client.responses(1)[0][2] == b"5:abcde"


def test_100_continue_is_sent_when_the_handler_reads_the_body(client: Client) -> None:
    client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\n\r\n")
    client.run_until(lambda: b"100 Continue" in client.transport.out)
    assert client.transport.out == b"HTTP/1.1 100 Continue\r\n\r\n"   # nothing else yet
    client.send(b"wxyz")
    got = client.responses(2)
    assert [g[0] for g in got] == [100, 200] and got[1][2] == b"4:wxyz"


def test_a_streamed_response_is_chunked_and_keeps_the_connection(client: Client) -> None:
    client.send(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    first, second = client.responses(2)
    assert first[1]["transfer-encoding"] == "chunked" and first[2] == b"one\ntwo\n"
    assert second[2] == b"hello\n"


def test_http10_streams_until_close(client: Client) -> None:
    client.send(b"GET /stream HTTP/1.0\r\n\r\n")
    client.run_until(lambda: client.transport.closed)
    head, _, body = bytes(client.transport.out).partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body == b"one\ntwo\n"


def test_a_handlers_connection_close_is_honoured_and_sent_once(client: Client) -> None:
    client.send(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
    client.run_until(lambda: client.transport.closed)
    head = bytes(client.transport.out).partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"connection:") == 1 and b"connection: close" in head


def test_a_handler_error_is_a_500_and_the_connection_serves_on(client: Client) -> None:
    client.send(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    first, second = client.responses(2)
    assert first[0] == 500 and b"500" in first[2]
    assert second[:3:2] == (200, b"hello\n")


@pytest.mark.parametrize("raw, status", [
    (b"GET /hello HTTP/1.1\r\n\r\n", 400),                                  # no Host
    (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),           # two Hosts
    (b"BROKEN\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),                           # smuggling
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET /hello HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 431),
])
def test_bad_requests_are_refused_and_the_connection_closed(client: Client, raw: bytes,
                                                             status: int) -> None:
    client.send(raw)
    client.run_until(lambda: client.transport.closed)
    got = parse(bytes(client.transport.out))
    assert [g[0] for g in got] == [status]
    assert got[0][1]["connection"] == "close"


def test_a_bad_request_after_good_ones_is_refused_after_their_answers(client: Client) -> None:
    client.send(b"GET /slow/x HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
                b"BROKEN\r\n\r\n")
    client.run_until(lambda: client.transport.closed)
    assert [g[0] for g in parse(bytes(client.transport.out))] == [200, 200, 400]


def test_a_body_over_the_limit_declared_up_front_is_413(served: tuple[HttpServer, Any]) -> None:
    server, loop = served
    c = Client(server, loop)
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n")
        c.run_until(lambda: c.transport.eof_sent)
        assert parse(bytes(c.transport.out))[0][0] == 413
        # a lingering close: the body that follows is read and dropped, not reset
        assert not c.transport.closed
        answered = bytes(c.transport.out)
        c.send(b"x" * 100_000)
        assert bytes(c.transport.out) == answered
        c.conn.eof_received()                     # the client is done: now close
        assert c.transport.closed and not c.transport.aborted
    finally:
        c.close()


def test_head_gets_the_length_but_no_body(client: Client) -> None:
    client.send(b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    client.run_until(lambda: client.transport.out.count(b"HTTP/1.1 200") == 2)
    first, _, rest = bytes(client.transport.out).partition(b"\r\n\r\n")
    assert b"Content-Length: 6" in first and rest.startswith(b"HTTP/1.1 200")


# --- the parser of an idle connection (connection.py: PARSER_POOL, PARSER_REST) -----------

def rest(client: Client) -> None:
    """What the sweep does once the connection has been idle for PARSER_REST."""
    assert client.conn.deadline_kind is connection.Deadline.REST
    client.conn.expire()
    assert client.conn.parser is connection._NO_PARSER
    assert client.conn.deadline_kind is connection.Deadline.IDLE


@SLICES
def test_an_idle_connection_gives_its_parser_back_and_serves_the_next_request(
        client: Client, slice_size: int) -> None:
    client.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n", slice_size)
    assert client.responses(1)[0][:3:2] == (200, b"hello\n")
    parser = client.conn.parser
    rest(client)
    assert parser in connection._PARSERS
    client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", slice_size)
    got = client.responses(2)
    assert got[1][:3:2] == (200, b"3:abc")
    assert client.conn.parser is not connection._NO_PARSER
    assert not client.transport.closed


@SLICES
def test_pipelined_requests_across_parser_hand_overs(client: Client, slice_size: int) -> None:
    requests = (b"GET /slow/a HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
                b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    for rounds in range(1, 4):
        client.send(requests, slice_size)
        got = client.responses(3 * rounds)
        assert [body for _, _, body in got[-3:]] == [b"slow /slow/a\n", b"3:abc", b"hello\n"]
        rest(client)
    assert not client.transport.closed


def test_above_the_pool_size_a_connection_gives_its_parser_back_at_once(
        served: tuple[HttpServer, Any]) -> None:
    server, loop = served
    crowd = [Client(server, loop) for _ in range(connection.PARSER_POOL + 1)]
    try:
        for c in crowd[:3]:
            c.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.responses(1)[0][:3:2] == (200, b"hello\n")
            assert c.conn.parser is connection._NO_PARSER      # no PARSER_REST wait
            assert c.conn.deadline_kind is connection.Deadline.IDLE
            c.send(b"GET /hel", 1)
            c.send(b"lo HTTP/1.1\r\nHost: a\r\n\r\n", 1)
            assert c.responses(2)[1][:3:2] == (200, b"hello\n")
    finally:
        for c in crowd:
            c.close()


def test_the_parser_of_a_closed_connection_is_not_pooled(client: Client) -> None:
    # llhttp refuses every byte after a message that did not keep alive
    client.send(b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    client.responses(1)
    client.run_until(lambda: client.transport.closed)
    parser = client.conn.parser
    client.conn.connection_lost(None)
    assert parser not in connection._PARSERS
    assert all(p.at_rest for p in connection._PARSERS)
