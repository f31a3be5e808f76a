"""One active health check against real sockets, and the verdict rules (health.py rules 2-4).

Each peer is an asyncio server on 127.0.0.1:0 in the test's own loop that
answers (or misbehaves) the way a case needs. The verdict logic is plain
data in, data out.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from pyresty.upstream.health import CheckFailed, Record, check_peer, judge

pytestmark = pytest.mark.timeout(30)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_check(serve: Serve, path: str = "/healthz", timeout: float = 1.0) -> tuple[int | str, bytes]:
    """Check a peer that runs ``serve`` per connection: (status or failure reason, request head)."""
    seen: list[bytes] = []

    async def main() -> int | str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                await serve(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                return await check_peer("127.0.0.1", port, path, timeout)
            except CheckFailed as exc:
                return str(exc)

    result = asyncio.run(main())
    return result, seen[0] if seen else b""


def answer(raw: bytes) -> Serve:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
    return serve


@pytest.mark.parametrize("raw, outcome", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204),
    (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n", 302),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200),
    (b"HTTP/1.0 200 OK\r\n\r\nbody until close", 200),
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "status 503"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "status 404"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "invalid response: invalid response head"),
    (b"HTTP/1.1 200 OK\r\nContent-", "invalid response: the upstream closed the connection mid-head"),
    (b"", "connection closed before a response"),
])
def test_a_check_passes_on_2xx_and_3xx_only(raw: bytes, outcome: int | str) -> None:
    result, _ = run_check(answer(raw))
    if isinstance(outcome, str) and outcome.endswith("invalid response head"):
        assert isinstance(result, str) and result.startswith(outcome)   # + httptools' words
    else:
        assert result == outcome


def test_the_check_is_a_get_of_the_path_with_the_peer_as_host() -> None:
    _, head = run_check(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), path="/up?deep=1")
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /up?deep=1 HTTP/1.1"
    assert any(line.startswith("Host: 127.0.0.1:") for line in lines)


def test_a_peer_that_never_answers_times_out_within_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()         # until the checker gives up and closes

    start = time.monotonic()
    result, _ = run_check(silent, timeout=0.3)
    elapsed = time.monotonic() - start
    assert result == "timed out"
    assert 0.3 <= elapsed < 2.0


def test_a_refused_connection_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # bound, not listening: refused

        async def main() -> str:
            try:
                await check_peer("127.0.0.1", port, "/", 1.0)
            except CheckFailed as exc:
                return str(exc)
            return "passed"
        assert asyncio.run(main()) == "connection refused"


# --- verdicts ----------------------------------------------------------------------

def test_unhealthy_consecutive_failures_mark_down_and_healthy_passes_mark_up() -> None:
    record = Record()
    flips = [judge(record, passed, "status 503", healthy=2, unhealthy=3)
             for passed in (False, False, True, False, False, False, False)]
    assert flips == [False, False, False, False, False, True, False]   # a pass resets the count
    assert (record.up, record.fails, record.reason) == (False, 4, "status 503")
    flips = [judge(record, passed, "", healthy=2, unhealthy=3) for passed in (True, False, True, True)]
    assert flips == [False, False, False, True]
    assert (record.up, record.passes, record.fails, record.reason) == (True, 2, 0, "")


@pytest.mark.parametrize("text", [None, "", "up", "[]", '{"up": true}', '{"up": 1, "passes": "x"}'])
def test_an_unreadable_record_is_a_fresh_one(text: str | None) -> None:
    assert Record.loads(text) == Record()


def test_a_record_round_trips() -> None:
    record = Record(up=False, passes=0, fails=3, reason="connection refused")
    assert Record.loads(record.dumps()) == record
