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
from typing import Any
from pathlib import Path

import pytest

from pyresty.config.model import (HEALTH_DICT, HEALTH_DICT_SIZE, HealthCheck, Peer, SharedDictSpec,
                                  Upstream)
from pyresty.runtime import shared as registry
from pyresty.upstream import health
from pyresty.upstream.balancer import build
from pyresty.upstream.health import CheckFailed, Record, check_peer, judge

pytestmark = pytest.mark.timeout(30)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_check(serve: Serve, path: str = "/healthz", timeout: float = 1.0,
              **options: Any) -> tuple[int | str, bytes]:
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
                return await check_peer("127.0.0.1", port, path, timeout, **options)
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


def test_valid_statuses_and_host_replace_the_defaults() -> None:
    teapot = answer(b"HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\n\r\n")
    assert run_check(teapot, valid=(200, 418))[0] == 418
    ok = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result, head = run_check(ok, valid=(204,), host_header="api.internal")
    assert result == "status 200"
    assert b"\r\nHost: api.internal\r\n" in head


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


# --- a round of checks, published and read by another worker's balancer ----------------

def test_a_round_of_checks_steers_every_workers_picks(tmp_path: Path) -> None:
    """The checker's verdicts reach a second process's balancer through the shared
    dict, and its picks avoid the down peer (end to end, through proxy_pass:
    tests/system/test_health.py)."""
    async def main() -> None:
        async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        good = await asyncio.start_server(ok, "127.0.0.1", 0)
        bad = await asyncio.start_server(failing, "127.0.0.1", 0)
        ports = [s.sockets[0].getsockname()[1] for s in (good, bad)]
        upstream = Upstream("backend", tuple(Peer("127.0.0.1", p) for p in ports),
                            health_check=HealthCheck(unhealthy=2, healthy=1))
        checker, worker = build(upstream), build(upstream)
        async with good, bad:
            for _ in range(2):
                await health.check_upstream(upstream, checker)
            await health.refresh(upstream, worker)
        good_peer, bad_peer = worker.peers
        assert (good_peer.healthy, bad_peer.healthy) == (True, False)
        assert bad_peer.check_fails == 2
        assert {worker.pick(0.0, set()).addr for _ in range(10)} == {good_peer.addr}  # type: ignore[union-attr]
        stored = await registry.shared[HEALTH_DICT].get(f"backend/{bad_peer.addr}")
        assert Record.loads(stored) == Record(False, 0, 2, "status 500")

    registry.open_all([SharedDictSpec(HEALTH_DICT, HEALTH_DICT_SIZE)], str(tmp_path))
    try:
        asyncio.run(main())
    finally:
        registry.close_all()
