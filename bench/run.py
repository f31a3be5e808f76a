"""pyresty beside nginx, nginx+Lua and uvicorn on this machine, in one run.

    .venv/bin/python bench/run.py [--quick] [--duration S] [--rounds N]
                                  [--only hello,reload,micro] [--profile]

1. hello: each server with 1 worker pinned to one CPU, wrk (1 thread, 50
   connections) pinned to another, servers alternating A/B/C/D for
   ``--rounds`` rounds. Figures: req/s, p50/p99 latency and server CPU
   microseconds per request (utime+stime of master and workers from /proc,
   over the wrk run, divided by the requests wrk completed) and, where perf
   can count, CPU cycles per request (``perf stat -e cycles`` on the same
   processes). wrk saturates before nginx does, so CPU per request is the
   fair comparison; the medians of the rounds are reported, with ratios
   against nginx ``return 200``.
2. reload: nginx and pyresty with 2 workers under ``wrk -t2 -c50`` while the
   master gets a HUP every ``--interval`` s with a new response body. wrk's
   socket errors, non-2xx and p99; the time from HUP until a fresh connection
   gets the new body; the time from HUP until the old workers are gone (under
   load, then on the idle server).
3. micro: bench/timers.py, bench/shared_dict.py and bench/websocket.py when present.

The summary is one Markdown document, printed and written to
bench/results/latest.md. Every server and load generator runs in its own
process group and is stopped on exit, Ctrl-C or error.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import servers
import wrk
from servers import Nginx, Process, Pyresty, Server, Uvicorn, alive, cpu_seconds, http_get

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APT_PACKAGES = ["nginx", "libnginx-mod-http-lua", "wrk"]
MODULE_DIRS = ["/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/lib64/nginx/modules"]
PROBE_INTERVAL = 0.002     # s between polls for a new body / old pids after a HUP
RELOAD_DEADLINE = 10.0     # s a reload may take to serve the new body before it counts as missed
EXIT_DEADLINE = 30.0       # s old workers may take to exit before they count as stuck
IDLE_RELOADS = 3           # reloads of the idle server after the load stops
SCRIPT_TIMEOUT = 900.0     # s for bench/timers.py and friends


def log(text: str) -> None:
    print(text, flush=True)


# --- tools -------------------------------------------------------------------

def lua_modules() -> list[str] | None:
    """Paths of the NDK and Lua nginx modules, or None when not installed."""
    for folder in MODULE_DIRS:
        ndk = Path(folder, "ndk_http_module.so")
        lua = Path(folder, "ngx_http_lua_module.so")
        if ndk.exists() and lua.exists():
            return [str(ndk), str(lua)]
    return None


def ensure_tools() -> list[str] | None:
    """Install nginx, its Lua module and wrk with apt when one is missing."""
    missing = [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]
    if missing or lua_modules() is None:
        if os.geteuid() != 0:
            sys.exit(f"bench: missing {', '.join(missing) or 'the nginx Lua module'}; run as root "
                     f"or: apt-get install -y {' '.join(APT_PACKAGES)}")
        log(f"installing {' '.join(APT_PACKAGES)} (missing: {', '.join(missing) or 'lua module'})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *APT_PACKAGES,
                        *(["util-linux"] if "taskset" in missing else [])], check=True, env=env)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is still missing after apt-get install")
    modules = lua_modules()
    if modules is None:
        log("warning: the nginx Lua module is not installed; skipping nginx lua")
    return modules


@dataclass(frozen=True)
class Cpus:
    server: str | None
    load: str | None

    @classmethod
    def pick(cls) -> Cpus:
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2 or shutil.which("taskset") is None:
            log("warning: fewer than 2 CPUs usable; server and wrk are not pinned")
            return cls(None, None)
        return cls(str(usable[0]), str(usable[1]))


# --- 1. hello ----------------------------------------------------------------

@dataclass
class Sample:
    rps: float
    p50: float
    p99: float
    cpu_us: float
    user_us: float
    sys_us: float
    requests: int
    errors: int
    cycles: float = float("nan")   # per request, from perf; nan without perf


class CycleCount:
    """``perf stat -e cycles`` over a server's processes, user and kernel.

    A second measure of CPU per request beside /proc: this VM's kernel charges
    CPU time by sampling at each 4 ms tick, which moves single rounds by tens of
    percent; the cycle counter counts exactly what ran. perf attaches within
    milliseconds of its start, before wrk's first request of a 10 s run.
    """

    def __init__(self, pids: list[int]) -> None:
        self.proc: subprocess.Popen[str] | None = None
        if shutil.which("perf") is not None:
            self.proc = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", "cycles", "-p", ",".join(map(str, pids))],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self) -> float | None:
        """Cycles counted since the start (None without perf or a counter)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("cycles") and fields[0].isdigit():
                return float(fields[0])
        return None


@dataclass
class Hello:
    name: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


def hello_once(make: Callable[[], Server], seconds: float, warmup: float, cpus: Cpus) -> Sample:
    server = make()
    try:
        server.start(cpus.server)
        url = f"http://127.0.0.1:{server.port}{server.path}"
        pids = server.pids()
        if warmup:
            # The first cycle counter on a process stalls it for ~0.1 s on this VM
            # (its p99 showed it): let the warm-up take that stall, not the run.
            primer = CycleCount(pids)
            wrk.run(url, warmup, server.dir / "warmup.log", cpus=cpus.load)
            primer.stop()
        counter = CycleCount(pids)
        before = cpu_seconds(pids)
        result = wrk.run(url, seconds, server.dir / "wrk.log", cpus=cpus.load)
        after = cpu_seconds(pids)
        cycles = counter.stop()
        if sorted(pids) != sorted(server.pids()):
            log(f"  warning: {server.name} changed processes during the run; CPU undercounted")
        if result.requests == 0:
            raise RuntimeError(f"{server.name}: wrk completed no request:\n{result.output}")
        return Sample(rps=result.rps, p50=result.latency_ms.get(50, float("nan")),
                      p99=result.latency_ms.get(99, float("nan")),
                      cpu_us=(sum(after) - sum(before)) / result.requests * 1e6,
                      user_us=(after[0] - before[0]) / result.requests * 1e6,
                      sys_us=(after[1] - before[1]) / result.requests * 1e6,
                      requests=result.requests,
                      errors=result.socket_errors + result.non2xx,
                      cycles=cycles / result.requests if cycles else float("nan"))
    finally:
        server.stop()


def bench_hello(args: argparse.Namespace, modules: list[str] | None, cpus: Cpus) -> list[Hello]:
    makers: list[tuple[str, Callable[[], Server]]] = [("nginx return 200", lambda: Nginx())]
    if modules is not None:
        makers.append(("nginx + Lua content_by_lua", lambda: Nginx(lua_modules=modules)))
    makers += [("uvicorn raw ASGI", Uvicorn), ("pyresty content handler", Pyresty)]
    if args.baseline is not None:
        makers.append((f"pyresty at {baseline_label(args.baseline)}",
                       lambda: baseline_pyresty(args.baseline)))
    rows = [Hello(name) for name, _ in makers]
    for round_no in range(1, args.rounds + 1):
        for row, (name, make) in zip(rows, makers):
            sample = hello_once(make, args.duration, args.warmup, cpus)
            row.samples.append(sample)
            errors = f"  ({sample.errors} errors)" if sample.errors else ""
            log(f"  round {round_no} {name:<28} {sample.rps:>10.0f} req/s  "
                f"p50 {sample.p50:6.2f} ms  p99 {sample.p99:6.2f} ms  "
                f"{sample.cpu_us:6.2f} µs CPU/req ({sample.user_us:.1f} user + "
                f"{sample.sys_us:.1f} sys, {sample.cycles:,.0f} cycles){errors}")
    return rows


def baseline_label(checkout: Path) -> str:
    """The commit of another checkout, for the row that compares builds."""
    done = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h"],
                          capture_output=True, text=True)
    return done.stdout.strip() or str(checkout)


def baseline_pyresty(checkout: Path) -> Pyresty:
    server = Pyresty()
    server.venv_bin = checkout / ".venv" / "bin"
    return server


def hello_table(rows: list[Hello]) -> str:
    base = rows[0].median("cpu_us")
    base_cycles = rows[0].median("cycles")
    lines = ["| server (1 worker) | req/s | p50 ms | p99 ms | CPU µs/req | user + sys "
             "| CPU µs/req, each round | CPU/req vs nginx | efficiency vs nginx "
             "| cycles/req (perf) | efficiency by cycles |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        cpu = row.median("cpu_us")
        cycles = row.median("cycles")
        each = " / ".join(f"{s.cpu_us:.1f}" for s in row.samples)
        by_cycles = (f"{cycles:,.0f} | {base_cycles / cycles:.2f}" if cycles == cycles
                     else "- | -")   # nan: perf could not count
        lines.append(f"| {row.name} | {row.median('rps'):,.0f} | {row.median('p50'):.2f} "
                     f"| {row.median('p99'):.2f} | **{cpu:.2f}** "
                     f"| {row.median('user_us'):.1f} + {row.median('sys_us'):.1f} | {each} "
                     f"| {cpu / base:.2f}× | {base / cpu:.2f} | {by_cycles} |")
    return "\n".join(lines)


# --- 2. reload under load ----------------------------------------------------

class ExitWatch(threading.Thread):
    """Times how long after ``since`` every pid in ``pids`` is gone."""

    def __init__(self, pids: list[int], since: float) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.since = since
        self.ms: float | None = None

    def run(self) -> None:
        deadline = self.since + EXIT_DEADLINE
        while time.monotonic() < deadline:
            if not any(alive(pid) for pid in self.pids):
                self.ms = (time.monotonic() - self.since) * 1e3
                return
            time.sleep(PROBE_INTERVAL)


@dataclass
class Reload:
    name: str
    reloads: int = 0
    served_ms: list[float] = field(default_factory=list)
    missed: int = 0                      # reloads whose new body never showed up
    probe_failures: int = 0              # fresh-connection probes that failed
    exit_ms: list[float | None] = field(default_factory=list)
    idle_exit_ms: list[float | None] = field(default_factory=list)
    idle_served_ms: list[float] = field(default_factory=list)
    unloaded: int = 0                    # reloads that slipped past the end of the load
    load: wrk.Result | None = None
    final_workers: int = 0


def reload_once(server: Server, generation: int, report: Reload,
                served: list[float], exits: list[ExitWatch]) -> float:
    """One reload with a new body: HUP, then poll until a fresh connection sees it.

    Returns the moment of the HUP.
    """
    old = server.serving_workers()
    server.reconfigure(generation)
    since = time.monotonic()
    server.hup()
    watch = ExitWatch(old, since)
    watch.start()
    exits.append(watch)
    deadline = since + RELOAD_DEADLINE
    while True:
        try:
            status, body = http_get(server.port, server.path)
            if status == 200 and body == server.body:
                served.append((time.monotonic() - since) * 1e3)
                return since
        except OSError:
            report.probe_failures += 1
        if time.monotonic() > deadline:
            report.missed += 1
            return since
        time.sleep(PROBE_INTERVAL)


def sleep_until(moment: float) -> None:
    """Pacing between reloads (the only sleep that is not a bounded poll)."""
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def wait_workers(server: Server, count: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        workers = len(server.serving_workers())
        if workers == count or time.monotonic() > deadline:
            return workers
        time.sleep(0.01)


def reload_under_load(server: Server, args: argparse.Namespace) -> Reload:
    report = Reload(server.name)
    try:
        server.start(None)
        if wait_workers(server, server.workers) != server.workers:
            raise RuntimeError(f"{server.name}: expected {server.workers} workers:\n"
                               f"{server.log_tail()}")
        url = f"http://127.0.0.1:{server.port}{server.path}"
        warm, tail = 1.0, 1.0
        seconds = warm + args.reloads * args.interval + tail
        load = wrk.Load(url, seconds, server.dir / "wrk.log", threads=2, connections=50)
        start = time.monotonic()
        exits: list[ExitWatch] = []
        for n in range(1, args.reloads + 1):
            sleep_until(start + warm + (n - 1) * args.interval)
            if reload_once(server, n, report, report.served_ms, exits) > start + seconds:
                report.unloaded += 1
        report.load = load.wait()
        report.reloads = args.reloads
        for watch in exits:
            watch.join(EXIT_DEADLINE)
        report.exit_ms = [watch.ms for watch in exits]
        # the idle server: no keepalive connection holds an old worker back
        idle: list[ExitWatch] = []
        for n in range(args.reloads + 1, args.reloads + 1 + IDLE_RELOADS):
            if idle:
                idle[-1].join(EXIT_DEADLINE)
            reload_once(server, n, report, report.idle_served_ms, idle)
        for watch in idle:
            watch.join(EXIT_DEADLINE)
        report.idle_exit_ms = [watch.ms for watch in idle]
        report.final_workers = wait_workers(server, server.workers)
    finally:
        server.stop()
    return report


def bench_reload(args: argparse.Namespace) -> list[Reload]:
    reports = []
    for make in (Nginx, Pyresty):
        server = make(workers=2)
        log(f"  {server.name}: {args.reloads} reloads every {args.interval:g} s "
            f"under wrk -t2 -c50")
        report = reload_under_load(server, args)
        assert report.load is not None
        log(f"    {report.load.requests} requests, socket errors {report.load.errors}, "
            f"non-2xx {report.load.non2xx}, p99 {report.load.latency_ms.get(99, 0):.2f} ms, "
            f"new body after {fmt_ms(report.served_ms)} ms (idle "
            f"{fmt_ms(report.idle_served_ms)} ms), old workers gone after "
            f"{fmt_ms(report.exit_ms)} ms (idle {fmt_ms(report.idle_exit_ms)} ms)")
        reports.append(report)
    return reports


def bench_spread(args: argparse.Namespace) -> str:
    """How evenly the kernel hands connections of one shared listening socket
    to 2 workers (README: "Load spread"), under wrk -t2 -c50."""
    server = Pyresty(workers=2)
    server.status_port = servers.free_port()
    try:
        server.start()
        wait_workers(server, 2)
        result = wrk.run(f"http://127.0.0.1:{server.port}{server.path}", args.duration,
                         server.dir / "wrk-spread.log", threads=2, connections=50)
        _, body = servers.http_get(server.status_port, "/status", timeout=2.0)
        rows = [p for p in json.loads(body)["processes"] if p["role"] == "worker"]
    finally:
        server.stop()
    counts = sorted((p["requests"] for p in rows), reverse=True)
    total = sum(counts) or 1
    conns = [p["connections"] for p in sorted(rows, key=lambda p: -p["requests"])]
    lines = ["| worker | requests | share | open connections |", "|---|--:|--:|--:|"]
    for i, (count, conn) in enumerate(zip(counts, conns)):
        lines.append(f"| {i} | {count:,} | {100 * count / total:.0f}% | {conn} |")
    lines.append(f"\nwrk: {result.requests:,} requests, {result.socket_errors} socket errors; "
                 f"busiest/quietest worker: {counts[0] / max(counts[-1], 1):.2f}×")
    return "\n".join(lines)


def fmt_ms(values: list[float | None] | list[float]) -> str:
    """``median (max)``; stuck entries (None) are counted separately."""
    done = [v for v in values if v is not None]
    if not done:
        return "–"
    text = f"{statistics.median(done):.0f} (max {max(done):.0f})"
    stuck = len(values) - len(done)
    return text + (f", {stuck} stuck" if stuck else "")


def reload_table(reports: list[Reload]) -> str:
    lines = ["| server (2 workers) | reloads | requests "
             "| socket errors (connect/read/write/timeout) | non-2xx | p99 ms "
             "| new config served, ms | old workers gone under load, ms "
             "| old workers gone idle, ms |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in reports:
        assert r.load is not None
        e = r.load.errors
        missed = f", {r.missed} never" if r.missed else ""
        lines.append(f"| {r.name} | {r.reloads} | {r.load.requests:,} "
                     f"| **{r.load.socket_errors}** ({e['connect']}/{e['read']}/{e['write']}/"
                     f"{e['timeout']}) | {r.load.non2xx} | {r.load.latency_ms.get(99, 0):.2f} "
                     f"| {fmt_ms(r.served_ms)}{missed} | {fmt_ms(r.exit_ms)} "
                     f"| {fmt_ms(r.idle_exit_ms)} |")
    notes = [f"{r.name}: {r.probe_failures} fresh-connection probes failed during reloads"
             for r in reports if r.probe_failures]
    notes += [f"{r.name}: {r.unloaded} reloads came after wrk had stopped (slow reloads)"
              for r in reports if r.unloaded]
    notes += [f"{r.name}: {r.final_workers} workers serving at the end (expected 2)"
              for r in reports if r.final_workers != 2]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


# --- 3. micro benchmarks -----------------------------------------------------

def run_script(path: Path, quick: bool, out: Path) -> str:
    """Run a sibling benchmark script; ``--quick`` only when it takes it."""
    usage = subprocess.run([sys.executable, str(path), "--help"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    argv = [sys.executable, str(path)]
    if quick and "--quick" in usage.stdout:
        argv.append("--quick")
    process = Process(argv, out, cwd=ROOT)
    try:
        process.popen.wait(SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        process.stop()
    text = out.read_text(errors="replace").rstrip()
    if process.popen.returncode != 0:
        text += f"\n(exit status {process.popen.returncode})"
    return text


def bench_micro(args: argparse.Namespace, scratch: Path) -> list[tuple[str, str]]:
    found = []
    for name in ("timers.py", "shared_dict.py", "websocket.py"):
        path = BENCH / name
        if path.exists():
            log(f"  bench/{name}")
            found.append((name, run_script(path, args.quick, scratch / f"{name}.log")))
    return found


# --- profile -----------------------------------------------------------------

def profile_pyresty(args: argparse.Namespace, cpus: Cpus, scratch: Path) -> str:
    """``perf record`` on the pyresty worker under wrk: its CPU by component
    (kernel, CPython, the compiled request path, httptools, uvloop), then the
    busiest symbols. perf sees C and kernel frames, which a Python sampler
    (py-spy) cannot: most of a compiled request is in them."""
    if shutil.which("perf") is None:
        return "(perf is not installed: apt-get install linux-perf)"
    server = Pyresty()
    data = scratch / "perf.data"
    try:
        server.start(cpus.server)
        worker = server.serving_workers()[0]
        url = f"http://127.0.0.1:{server.port}{server.path}"
        load = wrk.Load(url, args.duration, scratch / "profile-wrk.log", cpus=cpus.load)
        argv = ["perf", "record", "-q", "-F", "2000", "-o", str(data), "-p", str(worker),
                "--", "sleep", str(max(1, round(args.duration) - 1))]
        if cpus.load is not None:
            argv = ["taskset", "-c", cpus.load, *argv]   # off the server's CPU
        recorded = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 30)
        load.wait()
    finally:
        server.stop()
    if recorded.returncode != 0 or not data.exists():
        return f"(perf record failed: {recorded.stderr.strip()[-300:]})"
    by_dso = perf_report(data, "dso")
    by_symbol = perf_report(data, "dso,sym")
    lines = ["| share | component |", "|--:|---|"]
    lines += [f"| {share:5.1f}% | {component(dso)} |" for share, dso in by_dso[:8]]
    lines += ["", "| share | symbol |", "|--:|---|"]
    lines += [f"| {share:5.1f}% | `{symbol}` |" for share, symbol in by_symbol[:20]]
    return "\n".join(lines)


def perf_report(data: Path, sort: str) -> list[tuple[float, str]]:
    """(percent, key) rows of ``perf report --sort <sort>``, largest first."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort,
                          "--stdio", "-q"], capture_output=True, text=True, timeout=120).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
        if match:
            rows.append((float(match[1]), re.sub(r"\s+", " ", match[2])))
    return rows


COMPONENTS = [
    (r"kernel", "kernel: TCP over loopback, epoll, the read and write system calls"),
    (r"libpython", "CPython: objects, calls, the handler's own bytecode"),
    (r"__mypyc", "pyresty's request path (compiled with mypyc)"),
    (r"^parser\.", "httptools (llhttp)"),
    (r"^loop\.", "uvloop (libuv)"),
    (r"^libc", "libc"),
]


def component(dso: str) -> str:
    for pattern, name in COMPONENTS:
        if re.search(pattern, dso):
            return f"{name} (`{dso}`)"
    return f"`{dso}`"


# --- report ------------------------------------------------------------------

def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def environment(args: argparse.Namespace, sections: set[str], cpus: Cpus,
                load_before: tuple[float, ...]) -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    rev = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    nginx = re.sub(r"^nginx version: ", "", version(["nginx", "-v"]))
    wrk_version = version(["wrk", "--version"]).split(" [")[0]
    uvicorn = version([sys.executable, "-c", "import uvicorn; print(uvicorn.__version__)"])
    pin = (f"server on CPU {cpus.server}, wrk on CPU {cpus.load}" if cpus.server is not None
           else "not pinned")
    text = [f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {model}, "
            f"{os.cpu_count()} CPUs · load average before the run "
            f"{' '.join(f'{x:.2f}' for x in load_before)} · pyresty {rev}"
            f"{' (uncommitted changes)' if dirty else ''} · {nginx} · {wrk_version} · "
            f"uvicorn {uvicorn} · Python {platform.python_version()}"]
    if "hello" in sections:
        text.append(f"Hello world: {pin}; wrk -t1 -c50 -d{args.duration:g}s after a "
                    f"{args.warmup:g} s warm-up, {args.rounds} rounds alternating the servers, "
                    f"medians of the rounds. CPU µs/req: utime+stime of every server process "
                    f"(master and workers, /proc) over the wrk run, divided by the requests wrk "
                    f"completed; efficiency = nginx's CPU/req divided by the server's. "
                    f"cycles/req: the same processes' CPU cycles, user and kernel, counted by "
                    f"`perf stat` over the same run (this kernel charges /proc CPU time by "
                    f"sampling at each tick, which moves single rounds; the counter does not).")
    if "reload" in sections:
        text.append(f"Reload: wrk -t2 -c50 while the master gets {args.reloads} HUPs, one every "
                    f"{args.interval:g} s, each with a new response body; then {IDLE_RELOADS} "
                    f"on the idle server. Times are from the HUP, median (max).")
    return "\n\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs (noisier)")
    parser.add_argument("--duration", type=float,
                        help="seconds per hello run (default 10, quick 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before each run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between reloads")
    parser.add_argument("--only", default="hello,reload,spread,micro,proxy",
                        help="comma-separated sections: hello, reload, spread, micro, proxy, "
                             "profile")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the pyresty worker under load with perf")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.md")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run the pyresty of another checkout (its .venv) in the hello "
                             "rounds: before/after figures of a change, back to back in one run")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / ".venv" / "bin" / "pyresty").exists():
        parser.error(f"--baseline: no {args.baseline}/.venv/bin/pyresty (run make there first)")
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.profile:
        sections.add("profile")
    unknown = sections - {"hello", "reload", "spread", "micro", "proxy", "profile"}
    if unknown:
        parser.error(f"--only: unknown section {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.reloads < 1 or args.duration < 1:
        parser.error("--rounds and --reloads must be >= 1, --duration >= 1 s")

    # TERM (e.g. from a CI runner) unwinds like Ctrl-C, through the finally below
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    began = time.monotonic()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="bench-run-"))
    parts: list[str] = []
    try:
        modules = ensure_tools()
        cpus = Cpus.pick()
        parts += ["# pyresty benchmark", "", environment(args, sections, cpus, load_before)]
        if "hello" in sections:
            log("hello world")
            parts += ["", "## Hello world", "", hello_table(bench_hello(args, modules, cpus))]
        if "reload" in sections:
            log("reload under load")
            parts += ["", "## Reload under load", "", reload_table(bench_reload(args))]
        if "spread" in sections:
            log("load spread across 2 workers")
            parts += ["", "## Load spread (2 workers, one shared socket)", "", bench_spread(args)]
        if "micro" in sections:
            log("micro benchmarks")
            for name, text in bench_micro(args, scratch):
                parts += ["", f"## bench/{name}", "", "```", text, "```"]
        if "proxy" in sections:
            log("reverse proxy (bench/proxy.py)")
            parts += ["", "## Reverse proxy (bench/proxy.py)", "",
                      run_script(BENCH / "proxy.py", args.quick, scratch / "proxy.log")]
        if "profile" in sections:
            log("profiling the pyresty worker")
            parts += ["", "## Where the pyresty worker spends CPU (perf)", "",
                      profile_pyresty(args, cpus, scratch)]
    except KeyboardInterrupt:
        log("interrupted; stopping every server")
        return 130
    finally:
        servers.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
    parts += ["", f"Run time {time.monotonic() - began:.0f} s; load average after "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}."]
    report = "\n".join(parts) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    log("\n" + report)
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
