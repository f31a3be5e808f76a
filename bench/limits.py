"""The CPU a ``limit_req`` adds to a hello request, beside nginx and OpenResty, in one run.

    .venv/bin/python bench/limits.py [--quick] [--duration S] [--rounds N]

Each pair is the same hello server without and with one request-rate limit
keyed by the client address, at a rate no request reaches (so every request
runs the limiter and passes, as most requests do in production):

- nginx ``return 200`` / + ``limit_req`` (``limit_req_zone $binary_remote_addr``);
- nginx + Lua ``content_by_lua`` / + ``access_by_lua`` with OpenResty's
  ``resty.limit.req`` (lua-resty-limit-traffic, installed with luarocks into
  ``bench/.luarocks`` when the nginx Lua module is there);
- pyresty content handler / + ``limit_req`` on an embedded dict / the same with
  ``limit_headers = false`` (the decision alone, without the three RateLimit-*
  fields nginx does not send) / + ``limit_req`` on a ``redis://`` dict (a local
  redis-server on a unix socket);
- with ``--baseline CHECKOUT``, the embedded row again with another checkout's
  build (its ``.venv/bin/pyresty``), so two builds are compared in one run.

As in bench/run.py: one worker pinned to one CPU, wrk (1 thread, 50
connections) pinned to the other, the servers alternating round by round,
server CPU per request from /proc (utime + stime of every server process) and
cycles per request from ``perf stat``. For the Redis row the redis-server's
CPU is counted with the server's, since it does the limiter's work; its share
is shown apart. The table gives what the limit adds per request, in µs and as
a share of the same server's hello, and pyresty's addition against nginx's.
Results go to stdout and bench/results/limits.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import run as bench
import wrk
from servers import Nginx, Process, Pyresty, Server, cpu_seconds

BENCH = Path(__file__).resolve().parent
LUAROCKS_TREE = BENCH / ".luarocks"
RATE = 1_000_000           # r/s: no request is ever refused, every one runs the limiter
BURST = 1000


def log(text: str) -> None:
    print(text, flush=True)


# --- servers -------------------------------------------------------------------

class NginxLimited(Nginx):
    """nginx ``return 200`` behind ``limit_req``."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "nginx limit_req"

    def write(self) -> None:
        super().write()
        conf = self.dir / "nginx.conf"
        text = conf.read_text().replace(
            "    access_log off;",
            f"    access_log off;\n    limit_req_zone $binary_remote_addr zone=api:10m rate={RATE}r/s;")
        text = text.replace("location = /hello { ",
                            f"location = /hello {{ limit_req zone=api burst={BURST} nodelay; ")
        conf.write_text(text)


class NginxLuaLimited(Nginx):
    """nginx + Lua hello behind ``resty.limit.req`` in ``access_by_lua``."""

    def __init__(self, lua_modules: list[str], lua_path: str) -> None:
        super().__init__(lua_modules=lua_modules)
        self.name = "nginx lua resty.limit.req"
        self.lua_path = lua_path

    def handler(self) -> str:
        return ('access_by_lua_block { '
                f'local lim = require("resty.limit.req").new("limits", {RATE}, {BURST}) '
                'local delay, err = lim:incoming(ngx.var.binary_remote_addr, true) '
                'if not delay then return ngx.exit(err == "rejected" and 429 or 500) end } '
                + super().handler())

    def write(self) -> None:
        super().write()
        conf = self.dir / "nginx.conf"
        conf.write_text(conf.read_text().replace(
            "    access_log off;",
            f'    access_log off;\n    lua_shared_dict limits 10m;\n'
            f'    lua_package_path "{self.lua_path};;";'))


class PyrestyLimited(Pyresty):
    """pyresty's hello behind ``limit_req`` on an embedded or a ``redis://`` dict."""

    def __init__(self, backend: str = "", headers: bool = True, venv_bin: Path | None = None) -> None:
        self.backend = backend
        self.headers = headers
        self.name = "pyresty limit_req redis" if backend else "pyresty limit_req"
        super().__init__()
        if venv_bin is not None:
            self.venv_bin = venv_bin

    def write(self) -> None:
        super().write()
        conf = self.dir / "pyresty.toml"
        store = f'{{ backend = "{self.backend}" }}' if self.backend else '"10m"'
        text = conf.read_text().replace("[[server]]", f"""\
[shared]
limits = {store}

[limit_req.api]
dict = "limits"
key = "remote_addr"
rate = "{RATE}r/s"

[[server]]""")
        text += f'limit_req = {{ zone = "api", burst = {BURST}, nodelay = true }}\n'
        if not self.headers:
            text += "limit_headers = false\n"
        conf.write_text(text)


class Redis:
    """A redis-server on a unix socket, pinned like the servers."""

    def __init__(self, cpus: str | None) -> None:
        self.dir = Path(os.path.realpath("/tmp")) / f"bench-redis-{os.getpid()}"
        self.dir.mkdir(exist_ok=True)
        self.sock = self.dir / "redis.sock"
        argv = ["redis-server", "--port", "0", "--unixsocket", str(self.sock),
                "--unixsocketperm", "777", "--save", "", "--appendonly", "no"]
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        self.process = Process(argv, self.dir / "redis.log")
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline or not self.process.running():
                raise RuntimeError("redis-server did not start:\n"
                                   + (self.dir / "redis.log").read_text(errors="replace"))
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int:
        # taskset execs redis-server: same pid
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- tools -----------------------------------------------------------------------

def resty_limit_path(modules: list[str] | None) -> str | None:
    """``lua_package_path`` entry for resty.limit.req, installing it with luarocks
    when needed; None (with the reason logged) when it cannot be had."""
    if modules is None:
        log("  no nginx Lua module: the OpenResty rows are left out")
        return None
    share = LUAROCKS_TREE / "share" / "lua" / "5.1"
    if not (share / "resty" / "limit" / "req.lua").exists():
        if shutil.which("luarocks") is None and os.geteuid() == 0:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "-q", "luarocks"], env=env,
                           capture_output=True, timeout=600)
        if shutil.which("luarocks") is None:
            log("  luarocks is missing: cannot install lua-resty-limit-traffic; OpenResty rows left out")
            return None
        done = subprocess.run(["luarocks", "install", "--tree", str(LUAROCKS_TREE),
                               "lua-resty-limit-traffic"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not (share / "resty" / "limit" / "req.lua").exists():
            log(f"  luarocks install lua-resty-limit-traffic failed; OpenResty rows left out:\n"
                f"{done.stdout[-500:]}{done.stderr[-500:]}")
            return None
    return f"{share}/?.lua"


# --- measuring ---------------------------------------------------------------------

@dataclass
class Row:
    name: str
    base: str = ""                       # the row this one adds a limit to
    cpu: list[float] = field(default_factory=list)
    extra: list[float] = field(default_factory=list)    # redis-server's share
    cycles: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    errors: int = 0

    @staticmethod
    def median(values: list[float]) -> float:
        clean = [v for v in values if v == v]
        return statistics.median(clean) if clean else float("nan")


def measure(make: Callable[[], Server], redis: Redis | None, seconds: float, warmup: float,
            cpus: bench.Cpus) -> tuple[float, float, float, float, int]:
    """(req/s, CPU µs/req, of which redis-server, cycles/req, errors) of one run."""
    server = make()
    try:
        server.start(cpus.server)
        url = f"http://127.0.0.1:{server.port}{server.path}"
        pids = server.pids()
        extra = [redis.pid] if redis is not None else []
        if warmup:
            primer = bench.CycleCount(pids + extra)
            wrk.run(url, warmup, server.dir / "warmup.log", cpus=cpus.load)
            primer.stop()
        counter = bench.CycleCount(pids + extra)
        before, before_extra = cpu_seconds(pids), cpu_seconds(extra) if extra else (0.0, 0.0)
        result = wrk.run(url, seconds, server.dir / "wrk.log", cpus=cpus.load)
        after, after_extra = cpu_seconds(pids), cpu_seconds(extra) if extra else (0.0, 0.0)
        cycles = counter.stop()
        if result.requests == 0:
            raise RuntimeError(f"{server.name}: wrk completed no request:\n{result.output}")
        own = sum(after) - sum(before)
        helper = sum(after_extra) - sum(before_extra)
        per = 1e6 / result.requests
        return (result.rps, (own + helper) * per, helper * per,
                cycles / result.requests if cycles else float("nan"),
                result.socket_errors + result.non2xx)
    finally:
        server.stop()


def table(rows: list[Row], by_name: dict[str, Row]) -> str:
    nginx_added = _added(by_name.get("nginx limit_req"), by_name)
    lines = ["| server (1 worker) | req/s | CPU µs/req | of which redis-server | cycles/req "
             "| added by the limit, µs/req | added, % of its hello | added vs nginx's | added cycles/req |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        cpu, cyc = row.median(row.cpu), row.median(row.cycles)
        base = by_name.get(row.base)
        added = _added(row, by_name)
        share = f"{added / base.median(base.cpu) * 100:+.0f}%" if base else ""
        vs = f"{added / nginx_added:.1f}×" if base and nginx_added and nginx_added > 0 else ""
        added_cyc = f"{cyc - base.median(base.cycles):+,.0f}" if base else ""
        helper = f"{row.median(row.extra):.2f}" if row.extra and any(row.extra) else ""
        lines.append(f"| {row.name} | {row.median(row.rps):,.0f} | **{cpu:.2f}** | {helper} "
                     f"| {cyc:,.0f} | {f'{added:+.2f}' if base else ''} | {share} | {vs} | {added_cyc} |")
    return "\n".join(lines)


def _added(row: Row | None, by_name: dict[str, Row]) -> float:
    if row is None or row.base not in by_name:
        return float("nan")
    return row.median(row.cpu) - by_name[row.base].median(by_name[row.base].cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run the embedded limit_req row with this checkout's .venv/bin/pyresty")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / ".venv" / "bin" / "pyresty").exists():
        parser.error(f"--baseline: no {args.baseline}/.venv/bin/pyresty (run make there first)")
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    modules = bench.ensure_tools()
    if shutil.which("redis-server") is None:
        sys.exit("bench: redis-server is missing (apt-get install -y redis-server)")
    lua_path = resty_limit_path(modules)
    cpus = bench.Cpus.pick()
    redis = Redis(cpus.server)
    try:
        makers: list[tuple[Row, Callable[[], Server], Redis | None]] = [
            (Row("nginx return 200"), Nginx, None),
            (Row("nginx limit_req", "nginx return 200"), NginxLimited, None),
        ]
        if modules is not None and lua_path is not None:
            makers += [(Row("nginx lua content_by_lua"), lambda: Nginx(lua_modules=modules), None),
                       (Row("nginx lua resty.limit.req", "nginx lua content_by_lua"),
                        lambda: NginxLuaLimited(modules, lua_path), None)]
        makers += [
            (Row("pyresty content handler"), Pyresty, None),
            (Row("pyresty limit_req (embedded dict)", "pyresty content handler"), PyrestyLimited, None),
            (Row("pyresty limit_req (embedded), limit_headers = false", "pyresty content handler"),
             lambda: PyrestyLimited(headers=False), None),
            (Row("pyresty limit_req (redis:// dict)", "pyresty content handler"),
             lambda: PyrestyLimited(redis.url), redis),
        ]
        if args.baseline is not None:
            label = bench.baseline_label(args.baseline)
            venv_bin = args.baseline / ".venv" / "bin"
            makers.insert(len(makers) - 1, (Row(f"pyresty limit_req (embedded dict) at {label}",
                                                "pyresty content handler"),
                                            lambda: PyrestyLimited(venv_bin=venv_bin), None))
        started = datetime.datetime.now(datetime.timezone.utc)
        for round_no in range(1, args.rounds + 1):
            for row, make, helper in makers:
                rps, cpu, extra, cycles, errors = measure(make, helper, args.duration, args.warmup, cpus)
                row.rps.append(rps)
                row.cpu.append(cpu)
                row.extra.append(extra)
                row.cycles.append(cycles)
                row.errors += errors
                log(f"  round {round_no} {row.name:<36} {rps:>9.0f} req/s  {cpu:6.2f} µs CPU/req"
                    f"{f' (redis {extra:.2f})' if helper else ''}  {cycles:,.0f} cycles"
                    f"{f'  ({errors} errors)' if errors else ''}")
    finally:
        redis.stop()
    rows = [row for row, _, _ in makers]
    by_name = {row.name: row for row in rows}
    notes = []
    if lua_path is None:
        notes.append("OpenResty's resty.limit.req rows are missing: the nginx Lua module or "
                     "lua-resty-limit-traffic could not be installed (see the log above).")
    errors = sum(row.errors for row in rows)
    if errors:
        notes.append(f"{errors} socket errors or non-2xx answers in total (a limit that refuses "
                     "would show here).")
    text = "\n".join([
        f"## limit_req: the CPU it adds per hello request ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"rate {RATE:,} r/s, burst {BURST}, nodelay, keyed by the client address: every request "
        f"runs the limiter and passes. Medians of {args.rounds} round(s) of {args.duration:g} s, "
        "wrk -t1 -c50 on another CPU.",
        "",
        table(rows, by_name),
        "",
        *notes,
    ])
    print("\n" + text)
    out = BENCH / "results" / "limits.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    log(f"\nwritten to {out.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
