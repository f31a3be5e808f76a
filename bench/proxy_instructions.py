"""Instructions per proxied request, by callgrind.

    .venv/bin/python bench/proxy_instructions.py [--filter] [--keep DIR]

Wall-clock figures on a shared machine move by tens of percent between runs;
instruction counts do not. One process serves a ``proxy_pass`` location
in-process: a real ``HttpServer`` and ``HttpConnection`` per client, fed whole
requests (wrk's head) through a transport that counts what is written, and a
real keepalive pool of upstream sockets to a small upstream in another
process (not measured) that answers every request with nginx's head for
``return 200 "hello\\n"``, with the collector set as a worker sets it. So
the figure is the proxy's user-space instructions per request, without the
client side's socket system calls.
The process runs under ``valgrind --tool=callgrind`` twice, with 1,000 and
3,000 requests after the same warm-up; the difference over 2,000 is the
cost of one request, start-up and warm-up cancelled out.

``--filter`` adds a ``header_filter`` that reads the response fields (the
parsed path); ``--keep DIR`` keeps the two callgrind files there, for
``callgrind_annotate --inclusive=yes``.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from inprocess import Transport, callgrind

CLIENTS = 50
REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"     # wrk's
UPSTREAM_ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
                   b"Date: Tue, 01 Dec 2026 04:00:00 GMT\r\nContent-Type: text/plain\r\n"
                   b"Content-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n")

CONFIG = """
workers = 1
[upstream.u]
servers = ["127.0.0.1:{port}"]
keepalive = 64
[[server]]
listen = "127.0.0.1:1"
access_log = "off"
keepalive_requests = 100000000
[[server.location]]
path = "/"
proxy_pass = "http://u"
"""


class Counter:
    """Responses written; wakes the driver when a batch is answered."""

    def __init__(self) -> None:
        self.writes = 0
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None

    def wrote(self) -> None:
        self.writes += 1
        if self.writes >= self.want and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def upstream() -> None:
    """The upstream child: one fixed answer per request head."""
    import uvloop

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            heads = self.buffer.count(b"\r\n\r\n")
            if heads:
                self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4:]
                self.transport.write(UPSTREAM_ANSWER * heads)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve(port: int, requests: int, with_filter: bool) -> None:
    """The measured child: ``requests`` proxied requests after a warm-up."""
    import uvloop

    import pyresty.config
    from pyresty.runtime import loader
    from pyresty.server.connection import HttpConnection
    from pyresty.server.server import HttpServer
    from pyresty.supervisor.worker import _settle_collector

    work = Path(tempfile.mkdtemp())
    (work / "bench_filter.py").write_text("def header_filter(r):\n    r.headers_out.get('x')\n")
    sys.path.insert(0, str(work))
    config_text = textwrap.dedent(CONFIG.format(port=port))
    if with_filter:
        config_text += 'header_filter = "bench_filter:header_filter"\n'
    (work / "pyresty.toml").write_text(config_text)
    config = pyresty.config.load(str(work / "pyresty.toml"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = HttpServer(config, loop, loader.resolve, {})
        counter = Counter()
        conns = []
        for _ in range(CLIENTS):
            conn = HttpConnection(server, config.servers[0].listen[0])
            conn.connection_made(Transport(counter.wrote))  # type: ignore[arg-type]
            conns.append(conn)
        _settle_collector()      # the collector as a worker sets it after boot

        async def run(count: int) -> None:
            for _ in range(count // CLIENTS):
                counter.waiter = loop.create_future()
                counter.want = counter.writes + CLIENTS
                for conn in conns:
                    conn.data_received(REQUEST)
                await asyncio.wait_for(counter.waiter, 10)

        await run(1000)
        await run(requests)
        if counter.writes != 1000 + requests:
            raise SystemExit(f"{counter.writes} responses for {1000 + requests} requests")

    uvloop.run(main())


def instructions(port: int, requests: int, with_filter: bool, keep: Path | None) -> int:
    args = ["--child", str(port), str(requests)] + (["--filter"] if with_filter else [])
    return callgrind(__file__, args, keep / f"callgrind.{requests}" if keep else None)


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--upstream":
        upstream()
        return
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        serve(int(sys.argv[2]), int(sys.argv[3]), "--filter" in sys.argv)
        return
    with_filter = "--filter" in sys.argv
    keep = Path(sys.argv[sys.argv.index("--keep") + 1]) if "--keep" in sys.argv else None
    child = subprocess.Popen([sys.executable, __file__, "--upstream"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()      # the upstream's port, once it listens
        if not line.strip():
            raise SystemExit("the upstream did not start")
        port = int(line)
        per = (instructions(port, 3000, with_filter, keep)
               - instructions(port, 1000, with_filter, keep)) // 2000
    finally:
        child.terminate()
        child.wait(10)
    import pyresty.upstream.proxy
    compiled = "compiled" if pyresty.upstream.proxy.__file__.endswith(".so") else "interpreted"
    print(f"instructions per proxied request (callgrind, in-process, {compiled} build"
          f"{', header_filter reading the fields' if with_filter else ''}): {per:,}")


if __name__ == "__main__":
    main()
