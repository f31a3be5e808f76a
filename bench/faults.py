"""pyresty beside nginx under load and faults, in one run (issue 17's table).

    .venv/bin/python bench/faults.py [--quick] [--only NAME ...]

Each measurement starts one server of each kind (1 worker, pinned to CPU 0;
clients on CPU 1 where they are processes), does the same thing to both, and
reads the worker's memory from /proc:

- ``idle``: RSS per idle keepalive connection (10,000 clients, each sent one
  request and keeps its connection), and what is left after they close; also
  for a bare uvloop server (one answer per read, a protocol holding nothing
  but its transport, accepting as pyresty does): the floor under pyresty's
  figure that uvloop itself sets.
- ``slow_readers``: RSS per client that asks for a 10 MiB static file and
  reads nothing (200 clients).
- ``upload``: peak RSS added by one 100 MiB upload that the handler reads
  (pyresty ``spool_body``; nginx + Lua ``ngx.req.read_body``), VmHWM reset
  before it.
- ``slowloris``: p99 of normal clients (wrk, 10 connections) while 1,000
  connections that sent half a request head expire together
  (``client_header_timeout`` 5 s), against the p99 without them.
- ``respawn``: ms from SIGKILL of the worker to the first answer (median of 5),
  pyresty without and with ``worker_spare`` (a booted spare promoted in its place).
- ``reload``: wall time of ``pyresty -s reload`` / ``nginx -s reload`` (median of 5),
  and for pyresty the check's own time (config parsed, handlers imported in a
  child of the master: its "reload checked in N ms" log line). pyresty's
  sources are byte-compiled first, as an installed package's are.

Results go to stdout and bench/results/faults.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import run as bench
import wrk
from servers import Nginx, Pyresty, Server, alive, http_get, stop_all, title

BENCH = Path(__file__).resolve().parent
MIB = 1024 * 1024


def log(text: str) -> None:
    print(text, flush=True)


# --- servers -------------------------------------------------------------------

PY_APP = '''\
import os

async def hello(r):
    await r.say("hello")

async def upload(r):
    path = await r.spool_body()
    await r.say(r.body_size, " ", path)
'''


class PyrestyFaults(Pyresty):
    """pyresty with /hello, /upload and /static/ (a 10 MiB file)."""

    def write(self) -> None:
        d = self.dir
        (d / "app.py").write_text(PY_APP)
        (d / "public" / "static").mkdir(parents=True, exist_ok=True)
        (d / "public" / "static" / "big.bin").write_bytes(os.urandom(10 * MIB))
        (d / "pyresty.toml").write_text(f"""\
workers = 1
worker_connections = 20000
error_log = "logs/error.log"
pid = "logs/pyresty.pid"

[[server]]
listen = "127.0.0.1:{self.port}"
access_log = "off"
keepalive_timeout = "300s"
keepalive_requests = 10000000
client_header_timeout = "5s"
client_max_body_size = 0

[[server.location]]
path = "= /hello"
content = "app:hello"

[[server.location]]
path = "= /upload"
content = "app:upload"

[[server.location]]
path = "/static/"
root = "public"
""")


class PyrestySpare(PyrestyFaults):
    """The same with ``worker_spare = true`` (respawn only)."""

    def write(self) -> None:
        super().write()
        path = self.dir / "pyresty.toml"
        path.write_text("worker_spare = true\n" + path.read_text())


class NginxFaults(Nginx):
    """nginx with the same three locations (the upload through Lua when installed)."""

    def write(self) -> None:
        d = self.dir
        (d / "public" / "static").mkdir(parents=True, exist_ok=True)
        (d / "public" / "static" / "big.bin").write_bytes(os.urandom(10 * MIB))
        (d / "temp").mkdir(exist_ok=True)
        modules = "".join(f"load_module {m};\n" for m in self.lua_modules or [])
        upload = ('content_by_lua_block { ngx.req.read_body() '
                  'ngx.say(ngx.var.content_length, " ", ngx.req.get_body_file()) }'
                  if self.lua_modules else 'return 200 "no lua\\n";')
        temp = "".join(f"    {kind}_temp_path {d}/temp/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (d / "nginx.conf").write_text(f"""{modules}
worker_processes 1;
worker_rlimit_nofile 30000;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_header_timeout 5s;
    client_max_body_size 0;
    default_type application/octet-stream;
{temp}
    server {{
        listen 127.0.0.1:{self.port};
        location = /hello {{ return 200 "hello\\n"; }}
        location = /upload {{ {upload} }}
        location /static/ {{ root {d}/public; }}
    }}
}}
""")


BARE_UVLOOP = '''
import asyncio, socket, sys, uvloop
HELLO = b"HTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n"
class Bare:
    __slots__ = ("transport",)
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data): self.transport.write(HELLO)
    def eof_received(self): return False
    def connection_lost(self, exc): self.transport = None
async def main():
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1]))); sock.listen(4096); sock.setblocking(False)
    def accept():   # as pyresty's acceptor.py: accept, then connect_accepted_socket
        for _ in range(32):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return
            loop.create_task(loop.connect_accepted_socket(Bare, conn))
    loop.add_reader(sock.fileno(), accept)
    await asyncio.Event().wait()
uvloop.run(main())
'''


class BareUvloop(Server):
    """The floor: uvloop holding connections with a protocol that keeps nothing."""

    name = "uvloop"

    def write(self) -> None:
        (self.dir / "bare.py").write_text(BARE_UVLOOP)

    def command(self) -> list[str]:
        return [sys.executable, str(self.dir / "bare.py"), str(self.port)]

    def serving_workers(self) -> list[int]:
        return self.pids()[-1:]     # the python process (under taskset's exec)


def worker_of(server: Server) -> int:
    workers = server.serving_workers()
    assert workers, f"{server.name}: no worker"
    return workers[0]


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def settle(pid: int, seconds: float = 1.0) -> int:
    """The worker's RSS once it stopped moving (or after ``seconds``), KiB."""
    deadline = time.monotonic() + seconds
    last = status_kib(pid, "VmRSS")
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = status_kib(pid, "VmRSS")
        if now == last:
            return now
        last = now
    return last


# --- measurements -------------------------------------------------------------------

def idle(server: Server, count: int) -> dict[str, float]:
    pid = worker_of(server)
    before = settle(pid)
    conns = []
    request = f"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(request)
        data = b""
        while not data.endswith(b"hello\n"):
            data += sock.recv(4096)
        conns.append(sock)
    held = settle(pid, 2.0)
    for sock in conns:
        sock.close()
    time.sleep(1.5)      # the worker sees the closes
    after = settle(pid, 2.0)
    # a second wave as large: is the memory of the first one reused?
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(request)
        data = b""
        while not data.endswith(b"hello\n"):
            data += sock.recv(4096)
        conns.append(sock)
    again = settle(pid, 2.0)
    for sock in conns:
        sock.close()
    return {"per_conn_kib": (held - before) / count, "left_after_close_kib": after - before,
            "second_wave_kib": again - held,
            "rss_before_mib": before / 1024, "rss_held_mib": held / 1024}


def slow_readers(server: Server, count: int) -> dict[str, float]:
    pid = worker_of(server)
    before = settle(pid)
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(sock)
    time.sleep(2.0)      # the worker fills what it will fill
    held = settle(pid, 2.0)
    for sock in conns:
        sock.close()
    return {"per_client_kib": (held - before) / count}


def upload(server: Server, size: int) -> dict[str, float]:
    pid = worker_of(server)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = status_kib(pid, "VmRSS")
    piece = os.urandom(MIB)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        for _ in range(size // MIB):
            sock.sendall(piece)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert b" 200 " in reply.split(b"\r\n")[0], reply[:200]
    peak = status_kib(pid, "VmHWM")
    return {"peak_added_mib": (peak - before) / 1024, "body_mib": size / MIB}


def slowloris(server: Server, count: int, seconds: float, cpus: bench.Cpus) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.port}/hello"
    quiet = wrk.run(url, seconds, server.dir / "wrk-quiet.log", connections=10, cpus=cpus.load)
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /hello HTTP/1.1\r\n")
        conns.append(sock)
    # all of them expire together 5 s after they connected; wrk runs across that
    loaded = wrk.run(url, seconds, server.dir / "wrk-slowloris.log", connections=10,
                     cpus=cpus.load)
    for sock in conns:
        sock.close()
    return {"p99_quiet_ms": quiet.latency_ms.get(99, 0.0), "p99_slowloris_ms":
            loaded.latency_ms.get(99, 0.0), "requests": loaded.requests}


SPARE_TITLE = "pyresty: spare process"


def respawn(server: Server, rounds: int) -> dict[str, float]:
    times = []
    spare = isinstance(server, PyrestySpare)
    for _ in range(rounds):
        if spare:   # a spare loaded and waiting (it reports ready within ~50 ms of its title)
            deadline = time.monotonic() + 10
            while not any(title(pid) == SPARE_TITLE for pid in server.pids()) and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)
        old = next(pid for pid in server.serving_workers() if title(pid) != SPARE_TITLE)
        start = time.monotonic()
        os.kill(old, signal.SIGKILL)
        while True:
            try:
                status, _ = http_get(server.port, "/hello", timeout=1.0)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.001)
        times.append((time.monotonic() - start) * 1000)
        deadline = time.monotonic() + 5
        while alive(old) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
    return {"median_ms": statistics.median(times), "max_ms": max(times)}


def reload_time(server: Server, rounds: int) -> dict[str, float]:
    times = []
    if isinstance(server, Pyresty):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(BENCH.parent / "pyresty")],
                       check=True, capture_output=True)
    for generation in range(1, rounds + 1):
        if isinstance(server, Pyresty):
            argv = [str(Pyresty.venv_bin / "pyresty"), "-s", "reload", "-c",
                    str(server.dir / "pyresty.toml")]
        else:
            argv = ["nginx", "-p", str(server.dir), "-c", str(server.dir / "nginx.conf"),
                    "-s", "reload"]
        start = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, cwd=server.dir)
        times.append((time.monotonic() - start) * 1000)
        time.sleep(1.0)
    result = {"median_ms": statistics.median(times), "max_ms": max(times)}
    if isinstance(server, Pyresty):
        checks = [float(ms) for ms in re.findall(r"reload checked in ([\d.]+) ms",
                                                 (server.dir / "logs" / "error.log").read_text())]
        if checks:
            result["check_ms"] = statistics.median(checks)
    return result


# --- the run ---------------------------------------------------------------------

MEASURES = ("idle", "slow_readers", "upload", "slowloris", "respawn", "reload")


def measure(name: str, make: Callable[[], Server], args: argparse.Namespace,
            cpus: bench.Cpus) -> dict[str, float]:
    server = make()
    server.start(cpus.server)
    try:
        if name == "idle":
            return idle(server, args.idle)
        if name == "slow_readers":
            return slow_readers(server, 200)
        if name == "upload":
            return upload(server, 100 * MIB)
        if name == "slowloris":
            return slowloris(server, 1000, args.duration, cpus)
        if name == "respawn":
            return respawn(server, 5)
        return reload_time(server, 5)
    finally:
        server.stop()


def table(results: dict[str, dict[str, dict[str, float]]], idle_count: int) -> str:
    rows = ["| measured | pyresty | nginx |", "|---|--:|--:|"]

    def row(label: str, name: str, fmt: Callable[[dict[str, float]], str]) -> None:
        if name in results:
            rows.append(f"| {label} | {fmt(results[name]['pyresty'])} | "
                        f"{fmt(results[name]['nginx'])} |")

    row(f"RSS per idle keepalive connection ({idle_count:,} connections, 1 worker)", "idle",
        lambda r: f"{r['per_conn_kib']:+.2f} KiB; after close {r['left_after_close_kib'] / 1024:+.1f} "
                  f"MiB kept, a second wave adds {r['second_wave_kib'] / 1024:+.1f} MiB")
    row("RSS per client not reading a 10 MiB static file (200 clients)", "slow_readers",
        lambda r: f"{r['per_client_kib']:.1f} KiB")
    row("100 MiB upload the handler reads: peak RSS added", "upload",
        lambda r: f"{r['peak_added_mib']:.1f} MiB")
    row("normal clients' p99 while 1,000 slowloris connections expire (without)", "slowloris",
        lambda r: f"{r['p99_slowloris_ms']:.2f} ms ({r['p99_quiet_ms']:.2f} ms)")
    row("worker SIGKILL to the first answer, median of 5 (max)", "respawn",
        lambda r: f"{r['median_ms']:.0f} ms ({r['max_ms']:.0f})")
    if "pyresty_spare" in results.get("respawn", {}):
        spare = results["respawn"]["pyresty_spare"]
        rows.append(f"| the same with `worker_spare = true` | {spare['median_ms']:.1f} ms "
                    f"({spare['max_ms']:.1f}) | |")
    row("`-s reload` command, median of 5 (max)", "reload",
        lambda r: f"{r['median_ms']:.0f} ms ({r['max_ms']:.0f})"
                  + (f"; its check {r['check_ms']:.0f} ms" if "check_ms" in r else ""))
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 idle connections, 6 s wrk")
    parser.add_argument("--only", nargs="*", choices=MEASURES, default=list(MEASURES))
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=12.0)
    args = parser.parse_args()
    if args.quick:
        args.idle, args.duration = 1000, 6.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    modules = bench.ensure_tools()
    cpus = bench.Cpus.pick()
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name in args.only:
            results[name] = {}
            kinds: list[tuple[str, Callable[[], Server]]] = [
                ("pyresty", PyrestyFaults), ("nginx", lambda: NginxFaults(1, modules))]
            if name == "respawn":
                kinds.insert(1, ("pyresty_spare", PyrestySpare))
            if name == "idle":
                kinds.append(("uvloop", BareUvloop))
            for label, make in kinds:
                log(f"{name}: {label}")
                results[name][label] = measure(name, make, args, cpus)
                log(f"  {results[name][label]}")
    finally:
        stop_all()
    text = (f"# Under load and faults ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
            f"`bench/faults.py{' --quick' if args.quick else ''}`)\n\n{table(results, args.idle)}\n")
    if "uvloop" in results.get("idle", {}):
        bare = results["idle"]["uvloop"]
        text += (f"\nThe floor uvloop sets: a bare uvloop server (a protocol that keeps only its "
                 f"transport) holding the same connections, {bare['per_conn_kib']:+.2f} KiB each; "
                 f"after close {bare['left_after_close_kib'] / 1024:+.1f} MiB kept.\n")
    log(text)
    (BENCH / "results" / "faults.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
