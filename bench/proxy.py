"""Reverse proxying with keepalive upstream connections: pyresty beside nginx and aiohttp, in one run.

    .venv/bin/python bench/proxy.py [--quick] [--duration S] [--rounds N]

One upstream, an nginx answering ``return 200 "hello\\n"`` (pinned with wrk
to the load CPU, so its work is not counted), and three proxies in front of
it, each one worker pinned to the server CPU:

- nginx ``proxy_pass`` to ``upstream { keepalive 64; }`` with
  ``proxy_http_version 1.1`` and ``Connection ""``;
- pyresty ``proxy_pass`` to ``[upstream.u]`` with ``keepalive = 64``;
- aiohttp: an ``aiohttp.web`` server whose handler forwards through one
  ``ClientSession`` (a keepalive connector of 64), on uvloop: the Python peer.

As in bench/run.py: wrk (1 thread, 50 connections) on the other CPU, the
proxies alternating round by round, server CPU per request from /proc (utime
+ stime of every proxy process) and cycles per request from ``perf stat``.
New upstream connections per request come from the upstream's
``stub_status`` (accepted connections over the run / requests). Results go to
stdout and bench/results/proxy.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import run as bench
import wrk
from servers import Nginx, Pyresty, Server, cpu_seconds, http_get

BENCH = Path(__file__).resolve().parent


def log(text: str) -> None:
    print(text, flush=True)


class Upstream(Nginx):
    """The upstream every proxy forwards to: hello, plus stub_status for its accept count."""

    name = "upstream nginx"

    def __init__(self) -> None:
        super().__init__()
        self.name = "upstream nginx"

    def write(self) -> None:
        super().write()
        conf = self.dir / "nginx.conf"
        conf.write_text(conf.read_text().replace(
            "location = /hello {",
            "location = /stub { stub_status; }\n        location = /hello {"))

    def accepts(self) -> int:
        _, body = http_get(self.port, "/stub")
        # "Active connections: 1 \nserver accepts handled requests\n 5 5 9 \n..."
        return int(body.split(b"\n")[2].split()[0])


class NginxProxy(Nginx):
    def __init__(self, upstream: int) -> None:
        super().__init__()
        self.name = "nginx proxy_pass"
        self.upstream = upstream

    def write(self) -> None:
        super().write()
        conf = self.dir / "nginx.conf"
        text = conf.read_text().replace(
            "    server {",
            f"    upstream u {{ server 127.0.0.1:{self.upstream}; keepalive 64; }}\n    server {{")
        text = text.replace(f"location = /hello {{ {self.handler()} }}",
                            "location = /hello { proxy_pass http://u; proxy_http_version 1.1; "
                            'proxy_set_header Connection ""; }')
        conf.write_text(text)


class PyrestyProxy(Pyresty):
    def __init__(self, upstream: int) -> None:
        super().__init__()
        self.name = "pyresty proxy_pass"
        self.upstream = upstream

    def write(self) -> None:
        super().write()
        conf = self.dir / "pyresty.toml"
        text = conf.read_text().replace("[[server]]", f"""\
[upstream.u]
servers = ["127.0.0.1:{self.upstream}"]
keepalive = 64

[[server]]""")
        text = text.replace(f'content = "{self.module()}:hello"', 'proxy_pass = "http://u"')
        conf.write_text(text)


class AiohttpProxy(Server):
    name = "aiohttp"

    def __init__(self, upstream: int) -> None:
        super().__init__()
        self.name = "aiohttp ClientSession proxy"
        self.upstream = upstream

    def write(self) -> None:
        (self.dir / "proxy.py").write_text(f'''\
import sys
import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = "http://127.0.0.1:{self.upstream}"
HOP = {{"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}}


async def forward(request):
    session = request.app["session"]
    async with session.request(request.method, UPSTREAM + request.path_qs,
                               headers={{"X-Forwarded-For": request.remote or ""}},
                               data=await request.read() if request.can_read_body else None) as up:
        body = await up.read()
        headers = {{k: v for k, v in up.headers.items() if k.lower() not in HOP}}
        return web.Response(status=up.status, body=body, headers=headers)


async def session(app):
    app["session"] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60), auto_decompress=False)
    yield
    await app["session"].close()


app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_route("*", "/{{tail:.*}}", forward)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
''')

    def command(self) -> list[str]:
        return [sys.executable, str(self.dir / "proxy.py"), str(self.port)]


@dataclass
class Row:
    name: str
    samples: list[bench.Sample] = field(default_factory=list)
    new_conns: list[float] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


def once(make: Callable[[], Server], upstream: Upstream, seconds: float, warmup: float,
         cpus: bench.Cpus) -> tuple[bench.Sample, float]:
    server = make()
    try:
        server.start(cpus.server)
        url = f"http://127.0.0.1:{server.port}{server.path}"
        pids = server.pids()
        if warmup:
            primer = bench.CycleCount(pids)
            wrk.run(url, warmup, server.dir / "warmup.log", cpus=cpus.load)
            primer.stop()
        accepts = upstream.accepts()
        counter = bench.CycleCount(pids)
        before = cpu_seconds(pids)
        result = wrk.run(url, seconds, server.dir / "wrk.log", cpus=cpus.load)
        after = cpu_seconds(pids)
        cycles = counter.stop()
        new = upstream.accepts() - accepts - 1     # the /stub request itself is one
        if result.requests == 0:
            raise RuntimeError(f"{server.name}: wrk completed no request:\n{result.output}")
        sample = bench.Sample(
            rps=result.rps, p50=result.latency_ms.get(50, float("nan")),
            p99=result.latency_ms.get(99, float("nan")),
            cpu_us=(sum(after) - sum(before)) / result.requests * 1e6,
            user_us=(after[0] - before[0]) / result.requests * 1e6,
            sys_us=(after[1] - before[1]) / result.requests * 1e6,
            requests=result.requests, errors=result.socket_errors + result.non2xx,
            cycles=cycles / result.requests if cycles else float("nan"))
        return sample, max(0, new) / result.requests
    finally:
        server.stop()


def table(rows: list[Row]) -> str:
    nginx = rows[0]
    base, base_cycles = nginx.median("cpu_us"), nginx.median("cycles")
    lines = ["| proxy (1 worker) | req/s | p50 ms | p99 ms | CPU µs/req | user + sys "
             "| CPU µs/req, each round | efficiency vs nginx | cycles/req (perf) "
             "| efficiency by cycles | new upstream conns/req | errors |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        cpu, cycles = row.median("cpu_us"), row.median("cycles")
        each = " / ".join(f"{s.cpu_us:.1f}" for s in row.samples)
        by_cycles = (f"{cycles:,.0f} | {base_cycles / cycles:.2f}" if cycles == cycles
                     else "- | -")
        lines.append(f"| {row.name} | {row.median('rps'):,.0f} | {row.median('p50'):.2f} "
                     f"| {row.median('p99'):.2f} | **{cpu:.2f}** "
                     f"| {row.median('user_us'):.1f} + {row.median('sys_us'):.1f} | {each} "
                     f"| {base / cpu:.2f} | {by_cycles} "
                     f"| {statistics.median(row.new_conns):.4f} "
                     f"| {sum(s.errors for s in row.samples)} |")
    py = next(r for r in rows if r.name.startswith("pyresty"))
    aio = next(r for r in rows if r.name.startswith("aiohttp"))
    lines += ["", f"pyresty vs aiohttp: {aio.median('cpu_us') / py.median('cpu_us'):.2f}x "
              f"the efficiency by /proc CPU"
              + (f", {aio.median('cycles') / py.median('cycles'):.2f}x by cycles"
                 if py.median("cycles") == py.median("cycles") else "") + "."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, 2 rounds (noisier)")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "proxy.md")
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (2 if args.quick else 3)
    bench.ensure_tools()
    cpus = bench.Cpus.pick()
    upstream = Upstream()
    try:
        upstream.start(cpus.load)
        makers: list[tuple[str, Callable[[], Server]]] = [
            ("nginx proxy_pass (keepalive 64)", lambda: NginxProxy(upstream.port)),
            ("pyresty proxy_pass (keepalive 64)", lambda: PyrestyProxy(upstream.port)),
            ("aiohttp ClientSession proxy (uvloop)", lambda: AiohttpProxy(upstream.port)),
        ]
        rows = [Row(name) for name, _ in makers]
        for round_no in range(1, rounds + 1):
            for row, (name, make) in zip(rows, makers):
                sample, new = once(make, upstream, duration, args.warmup, cpus)
                row.samples.append(sample)
                row.new_conns.append(new)
                log(f"  round {round_no} {name:<38} {sample.rps:>9.0f} req/s  "
                    f"p99 {sample.p99:6.2f} ms  {sample.cpu_us:6.2f} µs CPU/req  "
                    f"{sample.cycles:,.0f} cycles  {new:.4f} new upstream conns/req")
    finally:
        upstream.stop()
        bench.servers.stop_all()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = (f"# Reverse proxy, keepalive upstream ({stamp}; {rounds} rounds of {duration:g} s; "
              f"load average after {load})\n\n{table(rows)}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    log("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
