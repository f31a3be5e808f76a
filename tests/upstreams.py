"""Real upstream servers for proxy tests: asyncio socket servers on a thread of their own.

``Upstream(behave)`` listens on 127.0.0.1 (an ephemeral port) and, for each
request it reads (head, then a body by Content-Length or chunked), calls
``behave(req)`` where ``req`` is an ``UpstreamRequest`` (method, target,
headers, body, the connection's and the server's counts). ``behave`` returns
the response bytes, ``None`` to close the connection without answering, or
an async iterator of bytes / ``CLOSE`` markers for streamed answers.
Everything it saw is counted: ``connections``, ``requests``.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLOSE = object()


@dataclass
class UpstreamRequest:
    method: str
    target: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes
    conn_index: int          # 1 for the first connection
    conn_requests: int       # 1 for the first request on this connection
    index: int               # 1 for the first request the server saw
    writer: Any = field(repr=False, default=None)


def response(status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None,
             close: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Upstream:
    def __init__(self, behave: Callable[[UpstreamRequest], Any] | None = None) -> None:
        self.behave = behave or (lambda req: response(body=f"{req.method} {req.target}".encode()))
        self.connections = 0
        self.requests = 0
        self.seen: list[UpstreamRequest] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the upstream did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_index = self.connections
        self._writers.add(writer)
        count = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                raw = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
                headers = {k.lower(): v for k, v in raw}
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        data = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += data[:-2]
                count += 1
                self.requests += 1
                req = UpstreamRequest(method, target, headers, raw, body, conn_index, count,
                                      self.requests, writer)
                self.seen.append(req)
                answer = self.behave(req)
                if asyncio.iscoroutine(answer):
                    answer = await answer
                if answer is None:
                    return
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                    continue
                async for piece in answer:
                    if piece is CLOSE:
                        return
                    writer.write(piece)
                    await writer.drain()
        except ConnectionError:
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self.loop.stop()
        self.loop.call_soon_threadsafe(stop)
        self._thread.join(10)


class RawUpstream:
    """A bare TCP server: ``handle(reader, writer, index)`` gets every connection."""

    def __init__(self, handle: Callable[..., Any]) -> None:
        self.handle = handle
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the upstream did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def open_count(self) -> int:
        """Connections the peer has not seen closed yet."""
        return len(self._writers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.handle(reader, writer, self.connections)
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def close(self) -> None:
        def stop() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self.loop.stop()
        self.loop.call_soon_threadsafe(stop)
        self._thread.join(10)
