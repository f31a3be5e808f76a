"""WebSocket echo: round trips per second and server CPU per message, in one run.

    .venv/bin/python bench/websocket.py [--quick] [--duration S] [--rounds N]
                                        [--connections C] [--size BYTES]

Servers, each with 1 worker pinned to one CPU, the load pinned to the other:

- pyresty: ``pyresty.websocket.accept`` and an ``async for`` echo loop;
- nginx proxying ``/echo`` (``proxy_http_version 1.1``, ``Upgrade``) to that
  same pyresty echo: the row counts nginx's own CPU, i.e. what a proxy hop
  costs, and the pyresty behind it is pinned beside the load;
- pyresty's ``proxy_pass`` to that same echo (a tunnel, upstream/tunnel.py),
  counted the same way;
- uvicorn + websockets (a raw ASGI echo app, uvloop), the Python peer.

The load is ``C`` connections, each sending one masked text message of
``BYTES`` and waiting for its echo before the next (a round trip), for
``--duration`` seconds; frames are built once and the replies only counted,
so the client costs little. Server CPU per message is utime + stime of every
server process (from /proc) over the run, divided by the round trips; the
rounds alternate the servers and the medians are reported. Results go to
stdout and bench/results/websocket.md.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import run as bench
from servers import Nginx, Process, Pyresty, Server, Uvicorn, cpu_seconds

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "websocket.md"

ECHO = '''
import pyresty

async def hello(r):
    await r.say("hello")

async def echo(r):
    ws = await pyresty.websocket.accept(r)
    async for message in ws:
        await ws.send(message)
'''

ASGI_ECHO = '''
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"6")]})
        await send({"type": "http.response.body", "body": b"hello\\n"})
        return
    await receive()                                    # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return
        if event.get("text") is not None:
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            await send({"type": "websocket.send", "bytes": event["bytes"]})
'''


class PyrestyEcho(Pyresty):
    name = "pyresty"

    def write(self) -> None:
        (self.dir / "echo.py").write_text(ECHO)
        (self.dir / "pyresty.toml").write_text(f"""\
workers = {self.workers}
error_log = "logs/error.log"
pid = "logs/pyresty.pid"

[[server]]
listen = "127.0.0.1:{self.port}"
access_log = "off"

[[server.location]]
path = "= /hello"
content = "echo:hello"

[[server.location]]
path = "= /echo"
content = "echo:echo"
""")


class NginxProxy(Nginx):
    """nginx proxying WebSockets to ``backend`` (its CPU alone is counted)."""

    def __init__(self, backend: Server) -> None:
        super().__init__(1)
        self.name = "nginx proxy -> pyresty"
        self.backend = backend

    def handler(self) -> str:
        return 'return 200 "hello\\n";'

    def write(self) -> None:
        super().write()
        conf = self.dir / "nginx.conf"
        conf.write_text(conf.read_text().replace(
            "        location = /hello", f"""\
        location = /echo {{
            proxy_pass http://127.0.0.1:{self.backend.port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
        location = /hello"""))


class PyrestyProxy(Pyresty):
    """pyresty proxying WebSockets to ``backend`` (a tunnel; its CPU alone is counted)."""

    name = "pyresty proxy"

    def __init__(self, backend: Server) -> None:
        super().__init__(1)
        self.backend = backend

    def write(self) -> None:
        (self.dir / "hello.py").write_text("async def hello(r):\n    await r.say('hello')\n")
        (self.dir / "pyresty.toml").write_text(f"""\
workers = 1
error_log = "logs/error.log"
pid = "logs/pyresty.pid"

[[server]]
listen = "127.0.0.1:{self.port}"
access_log = "off"

[[server.location]]
path = "= /hello"
content = "hello:hello"

[[server.location]]
path = "= /echo"
proxy_pass = "http://127.0.0.1:{self.backend.port}"
proxy_read_timeout = "1h"
""")


class UvicornEcho(Uvicorn):
    name = "uvicorn + websockets"

    def write(self) -> None:
        (self.dir / "app.py").write_text(ASGI_ECHO)

    def command(self) -> list[str]:
        return [*super().command(), "--ws", "websockets"]


# --- the load --------------------------------------------------------------------

def client_frame(size: int) -> bytes:
    payload = b"m" * size
    mask = os.urandom(4)
    head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126
                            else bytes([0x80 | 126]) + size.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def one_connection(port: int, frame: bytes, reply: int, until: float,
                         counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:60]!r}")
    n = 0
    while time.monotonic() < until:
        writer.write(frame)
        await reader.readexactly(reply)
        n += 1
    counts.append(n)
    writer.write(b"\x88\x82" + os.urandom(4) + b"\x00\x00")   # a masked close, unanswered
    writer.close()


def load(port: int, connections: int, size: int, seconds: float) -> int:
    """Round trips completed (runs in the pinned child: ``--client``)."""
    async def main() -> int:
        frame = client_frame(size)
        reply = 2 + size if size < 126 else 4 + size
        counts: list[int] = []
        until = time.monotonic() + seconds
        await asyncio.gather(*(one_connection(port, frame, reply, until, counts)
                               for _ in range(connections)))
        return sum(counts)
    try:
        import uvloop
        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


@dataclass
class Row:
    name: str
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def measure(server: Server, cpus: bench.Cpus, args: argparse.Namespace, scratch: Path,
            pids: list[int] | None = None) -> tuple[float, float]:
    pids = pids or server.pids()
    out = scratch / "client.out"
    pin = ["taskset", "-c", cpus.load] if cpus.load is not None else []
    argv = [*pin, sys.executable, __file__, "--client", str(server.port),
            "--connections", str(args.connections), "--size", str(args.size),
            "--duration", str(args.duration)]
    before = sum(cpu_seconds(pids))
    started = time.monotonic()
    client = Process(argv, out, cwd=BENCH)
    client.popen.wait(args.duration + 60)
    elapsed = time.monotonic() - started
    used = sum(cpu_seconds(pids)) - before
    client.stop()
    trips = int(out.read_text().split()[-1])
    return trips / min(elapsed, args.duration + 1), used / max(trips, 1) * 1e6


def run_round(rows: dict[str, Row], cpus: bench.Cpus, args: argparse.Namespace,
              scratch: Path) -> None:
    echo = PyrestyEcho(1)
    echo.start(cpus.server)
    try:
        rate, cpu = measure(echo, cpus, args, scratch)
        rows["pyresty"].rates.append(rate)
        rows["pyresty"].cpu_us.append(cpu)
        # the backend moves beside the load: the server CPU holds the proxy's alone
        for pid in echo.pids() if cpus.load is not None else []:
            subprocess.run(["taskset", "-a", "-p", "-c", cpus.load, str(pid)], capture_output=True)
        for key, proxy in (("nginx", NginxProxy(echo)), ("tunnel", PyrestyProxy(echo))):
            proxy.start(cpus.server)
            try:
                rate, cpu = measure(proxy, cpus, args, scratch)
                rows[key].rates.append(rate)
                rows[key].cpu_us.append(cpu)
            finally:
                proxy.stop()
    finally:
        echo.stop()
    uvi = UvicornEcho(1)
    uvi.start(cpus.server)
    try:
        rate, cpu = measure(uvi, cpus, args, scratch)
        rows["uvicorn"].rates.append(rate)
        rows["uvicorn"].cpu_us.append(cpu)
    finally:
        uvi.stop()


def table(rows: dict[str, Row], args: argparse.Namespace) -> str:
    base = statistics.median(rows["pyresty"].cpu_us)
    lines = [f"WebSocket echo: {args.connections} connections, {args.size}-byte text messages, "
             f"one round trip at a time per connection, {args.duration:.0f} s x {args.rounds} "
             f"rounds (medians); server: 1 worker on one CPU, load on the other.",
             "",
             "| server | round trips/s | server CPU µs/message | vs pyresty |",
             "|---|---:|---:|---:|"]
    labels = {"pyresty": "pyresty (`pyresty.websocket`)",
              "nginx": "nginx proxy -> pyresty echo (nginx's CPU only)",
              "tunnel": "pyresty proxy_pass -> pyresty echo (the tunnel's CPU only)",
              "uvicorn": "uvicorn + websockets (ASGI echo)"}
    for key, row in rows.items():
        cpu = statistics.median(row.cpu_us)
        lines.append(f"| {labels[key]} | {statistics.median(row.rates):,.0f} | {cpu:.1f} | "
                     f"{cpu / base:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s x 1 round")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(load(args.client, args.connections, args.size, args.duration), flush=True)
        return 0
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    cpus = bench.Cpus.pick()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-ws-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    rows = {key: Row(key) for key in ("pyresty", "nginx", "tunnel", "uvicorn")}
    try:
        for n in range(args.rounds):
            print(f"round {n + 1}/{args.rounds}", flush=True)
            run_round(rows, cpus, args, scratch)
    finally:
        import servers
        servers.stop_all()
    text = (f"## WebSocket echo ({datetime.date.today().isoformat()})\n\n" + table(rows, args) + "\n")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
