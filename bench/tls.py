"""HTTPS beside nginx, with the same certificate, in one run.

    .venv/bin/python bench/tls.py [--quick] [--duration S] [--rounds N]

Each server has 1 worker pinned to CPU 0; h2load (nghttp2-client) runs on
CPU 1. The servers alternate for ``--rounds`` rounds and the medians are
reported:

1. HTTPS hello, HTTP/1.1: ``h2load --h1 -c50`` over kept-alive TLS connections.
2. HTTPS hello, HTTP/2: ``h2load -c10 -m10`` (ten streams in flight per connection).
3. TLS handshakes: rounds of ``h2load --h1 -c100 -n100`` (one request per new
   connection, TLS 1.3, full handshakes: neither client resumes).

Figures: requests (or handshakes) per second and server CPU µs per request
(utime+stime of master and workers from /proc over the run, divided by what
h2load completed), and the ratio to nginx's CPU per request. nginx serves
``return 200 "hello\\n"`` with ``http2 on``; pyresty a content handler that
says hello. Both use one ECDSA P-256 certificate made by trustme.

The Markdown table is printed and written to bench/results/tls.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trustme

import servers
from servers import Nginx, Process, Pyresty, cpu_seconds

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "tls.md"
H2LOAD = "h2load"


class TlsNginx(Nginx):
    """nginx ``return 200`` on an ssl + http2 address."""

    name = "nginx return 200"

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        super().__init__(1)
        self.name = "nginx return 200"

    def write(self) -> None:
        super().write()
        conf = self.dir / "nginx.conf"
        text = conf.read_text().replace(
            f"listen 127.0.0.1:{self.port};",
            f"listen 127.0.0.1:{self.port} ssl http2;\n"
            f"        ssl_certificate {self.cert};\n        ssl_certificate_key {self.key};\n"
            f"        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_tickets off;")
        conf.write_text(text)


class TlsPyresty(Pyresty):
    """pyresty's hello handler on an ssl address with http2."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        super().__init__(1)

    def write(self) -> None:
        super().write()
        conf = self.dir / "pyresty.toml"
        text = conf.read_text().replace(
            f'listen = "127.0.0.1:{self.port}"',
            f'listen = "127.0.0.1:{self.port} ssl"\nssl_certificate = "{self.cert}"\n'
            f'ssl_certificate_key = "{self.key}"\nhttp2 = true')
        conf.write_text(text)


def wait_tls(server: servers.Server, timeout: float = 30.0) -> None:
    """Ready when h2load gets one 200 over TLS."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([H2LOAD, "-n1", "-c1", url(server)], capture_output=True, text=True,
                             timeout=10).stdout
        if "1 succeeded" in out:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not answer over TLS:\n{server.log_tail()}")


def url(server: servers.Server) -> str:
    return f"https://127.0.0.1:{server.port}/hello"


def start(server: servers.Server) -> None:
    server.write()
    server.process = Process(["taskset", "-c", "0", *server.command()],
                             server.dir / "stdout.log", cwd=server.dir)
    wait_tls(server)


def h2load(argv: list[str]) -> tuple[int, float]:
    """Run h2load on CPU 1: (requests succeeded, seconds it took)."""
    done_run = subprocess.run(["taskset", "-c", "1", H2LOAD, *argv], capture_output=True,
                              text=True, timeout=600)
    out = done_run.stdout + done_run.stderr
    done = re.search(r"(\d+) succeeded", out)
    took = re.search(r"finished in ([\d.]+)(ms|s)", out)
    if done is None or took is None:
        raise RuntimeError(f"h2load said:\n{out}")
    seconds = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    return int(done.group(1)), seconds


def measure(server: servers.Server, kind: str, duration: float) -> tuple[float, float]:
    """(per second, server CPU µs per request) of one run of ``kind``."""
    pids = server.pids()
    before = sum(cpu_seconds(pids))
    if kind == "h1":
        done, took = h2load(["--h1", "-c50", "-D", str(int(duration)), "--warm-up-time=1", url(server)])
    elif kind == "h2":
        done, took = h2load(["-c10", "-m10", "-D", str(int(duration)), "--warm-up-time=1", url(server)])
    else:   # handshakes: 100 new connections, one request each, until the time is up
        done, took, end = 0, 0.0, time.monotonic() + duration
        while time.monotonic() < end:
            n, t = h2load(["--h1", "-c100", "-n100", url(server)])
            done, took = done + n, took + t
    cpu = sum(cpu_seconds(pids)) - before
    return done / took, cpu / max(done, 1) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 round")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    for tool in (H2LOAD, "nginx", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/tls.py: {tool} is not installed (apt-get install nghttp2-client nginx)")
            return 1
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-tls-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o755)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    names = {}
    try:
        for round_no in range(args.rounds):
            for make in (lambda: TlsNginx(cert, key), lambda: TlsPyresty(cert, key)):
                server = make()
                names[server.name] = server.name
                try:
                    start(server)
                    for kind in ("h1", "h2", "handshake"):
                        print(f"round {round_no + 1}: {server.name} {kind}", flush=True)
                        results.setdefault((server.name, kind), []).append(
                            measure(server, kind, args.duration))
                finally:
                    server.stop()
    finally:
        servers.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(results, args)
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text + "\n")
    return 0


LABELS = {"h1": "HTTPS hello, HTTP/1.1 (h2load --h1 -c50)",
          "h2": "HTTPS hello, HTTP/2 (h2load -c10 -m10)",
          "handshake": "TLS 1.3 handshakes (a new connection per request)"}


def report(results: dict[tuple[str, str], list[tuple[float, float]]],
           args: argparse.Namespace) -> str:
    nginx = "nginx return 200"
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    commit = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# pyresty HTTPS benchmark", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} · {platform.machine()}, "
        f"{os.cpu_count()} CPUs · pyresty {commit} · {version.replace('nginx version: ', '')} · "
        f"Python {platform.python_version()} · {args.rounds} rounds of {args.duration:.0f} s, "
        "medians · server on CPU 0, h2load on CPU 1 · one trustme ECDSA certificate for both", "",
        "| run | server (1 worker) | per second | CPU µs/req | CPU/req vs nginx |",
        "|---|---|--:|--:|--:|",
    ]
    for kind in ("h1", "h2", "handshake"):
        base = statistics.median(cpu for _, cpu in results.get((nginx, kind), [(0, 0)]))
        for name in (nginx, "pyresty"):
            runs = results.get((name, kind))
            if not runs:
                continue
            rate = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            ratio = f"{cpu / base:.2f}×" if base else "-"
            lines.append(f"| {LABELS[kind]} | {name} | {rate:,.0f} | **{cpu:.1f}** | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
