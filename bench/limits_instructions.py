"""Instructions per request of a hello with and without ``limit_req``, by callgrind.

    .venv/bin/python bench/limits_instructions.py

Wall-clock figures on a shared machine move by tens of percent between runs;
instruction counts do not. One process serves the three locations of
bench/limits.py (hello; ``limit_req`` on an embedded dict; the same with
``limit_headers = false``) in-process: a real ``HttpServer`` and
``HttpConnection`` per client, fed whole requests through a transport that
counts what is written, so the figures are user-space instructions without
the socket system calls (the kernel's share is measured by bench/limits.py).
Each location runs under ``valgrind --tool=callgrind`` twice, with 1,000 and
3,000 requests after the same warm-up; the difference over 2,000 is the cost
of one request, start-up and warm-up cancelled out.
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import textwrap
from pathlib import Path

from inprocess import Transport, callgrind

RATE = 1_000_000       # r/s: every request runs the limiter and passes (bench/limits.py)
BURST = 1000
CLIENTS = 50
LOCATIONS = ("hello", "limit", "nohdr")

CONFIG = f"""
workers = 1
[shared]
limits = "10m"
[limit_req.api]
dict = "limits"
key = "remote_addr"
rate = "{RATE}r/s"
[[server]]
listen = "127.0.0.1:1"
access_log = "off"
keepalive_requests = 100000000
[[server.location]]
path = "= /hello"
content = "bench_app:hello"
[[server.location]]
path = "= /limit"
content = "bench_app:hello"
limit_req = {{ zone = "api", burst = {BURST}, nodelay = true }}
[[server.location]]
path = "= /nohdr"
content = "bench_app:hello"
limit_req = {{ zone = "api", burst = {BURST}, nodelay = true }}
limit_headers = false
"""


def serve(location: str, requests: int) -> None:
    """The child: serve ``requests`` requests for ``location`` after a warm-up."""
    import uvloop

    import pyresty.config
    from pyresty.runtime import loader, shared
    from pyresty.server.connection import HttpConnection
    from pyresty.server.server import HttpServer

    work = Path(tempfile.mkdtemp())
    (work / "bench_app.py").write_text("async def hello(r):\n    await r.say('hello')\n")
    sys.path.insert(0, str(work))
    (work / "pyresty.toml").write_text(textwrap.dedent(CONFIG))
    config = pyresty.config.load(str(work / "pyresty.toml"))
    shared.open_all(config.shared, str(work / "shm"))
    request = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n" % location.encode()

    async def main() -> None:
        server = HttpServer(config, asyncio.get_running_loop(), loader.resolve, {})
        conns = []
        for _ in range(CLIENTS):
            conn = HttpConnection(server, config.servers[0].listen[0])
            transport = Transport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            conns.append((conn, transport))

        async def run(count: int) -> None:
            for _ in range(count // CLIENTS):
                for conn, _ in conns:
                    conn.data_received(request)
                await asyncio.sleep(0)       # let every request's task finish
                await asyncio.sleep(0)

        await run(1000)
        await run(requests)
        written = sum(t.writes for _, t in conns)
        if written != 1000 + requests:
            raise SystemExit(f"{written} responses for {1000 + requests} requests")

    uvloop.run(main())


def instructions(location: str, requests: int) -> int:
    return callgrind(__file__, ["--child", location, str(requests)])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    per: dict[str, int] = {}
    for location in LOCATIONS:
        per[location] = (instructions(location, 3000) - instructions(location, 1000)) // 2000
    hello = per["hello"]
    import pyresty.server.limits
    compiled = "compiled" if pyresty.server.limits.__file__.endswith(".so") else "interpreted"
    print(f"instructions per request (callgrind, in-process, {compiled} build):")
    print(f"  hello                             {hello:>7,}")
    print(f"  + limit_req (embedded)            {per['limit']:>7,}   added {per['limit'] - hello:>+7,}")
    print(f"  + limit_req, limit_headers=false  {per['nohdr']:>7,}   added {per['nohdr'] - hello:>+7,}")


if __name__ == "__main__":
    main()
