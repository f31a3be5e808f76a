"""Active health checks in real pyresty servers, against upstreams the test runs.

Each upstream is a small asyncio HTTP server in a thread of the test process
whose health endpoint the test toggles (200 / 503) and which counts the
checks it receives. What the workers believe is read where an operator reads
it: ``pyresty status`` (the control socket), ``/status`` and ``/metrics``.
Proxied traffic follows the verdicts (``/proxied/`` passes to the upstream).
"""
from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from harness import Pyresty, free_port, http_get, wait_for

pytestmark = pytest.mark.timeout(120)

INTERVAL = 0.2
DEADLINE = 10.0


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1: ``GET /healthz`` gets ``status`` (and is counted),
    anything else 200 with the server's port as its body."""

    def __init__(self) -> None:
        self.status = 200
        self.checks = 0
        self.served = 0              # requests other than checks
        self.times: list[float] = []
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "upstream did not start"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /healthz "):
                self.checks += 1
                self.times.append(time.monotonic())
                status, body = self.status, b"ok"
            else:                    # proxied traffic: who answered
                self.served += 1
                status, body = 200, b"%d" % self.port
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    made = [Upstream(), Upstream()]
    yield made
    for upstream in made:
        upstream.close()


CONFIG = '''
workers = 2
worker_shutdown_timeout = "5s"
error_log_level = "info"
{agent}
[status]
listen = "127.0.0.1:{{port2}}"
[upstream.backend]
servers = [{servers}]
health_check = {{{{ path = "/healthz", interval = "{interval}s", timeout = "0.5s", healthy = 2, unhealthy = 2 }}}}
[[server]]
listen = "127.0.0.1:{{port}}"
[[server.location]]
path = "/"
content = "app:hello"
[[server.location]]
path = "/proxied/"
proxy_pass = "http://backend"
'''

APP = '''
async def hello(r):
    await r.say("hello")
'''


def config(servers: list[str], agent: bool = False, interval: float = INTERVAL) -> str:
    return CONFIG.format(servers=", ".join(f'"{s}"' for s in servers), interval=interval,
                         agent="privileged_agent = true" if agent else "")


def peers(server: Pyresty) -> dict[str, dict]:
    """The newest generation's view of each peer, from /status."""
    code, _, body = http_get(server.ports[1], "/status")
    assert code == 200
    return {p["peer"]: p for p in json.loads(body)["upstreams"]}


def wait_view(server: Pyresty, addr: str, healthy: bool, workers: int = 2,
              timeout: float = DEADLINE) -> dict:
    """Wait until every worker of the newest generation sees ``addr`` as ``healthy``."""
    def seen() -> dict | None:
        peer = peers(server).get(addr)
        if peer and peer["workers"] == workers and peer["healthy"] is healthy \
                and peer["unhealthy"] == (0 if healthy else workers):
            return peer
        return None
    return wait_for(seen, timeout, f"{addr} {'up' if healthy else 'down'} in every worker")


def test_verdicts_flip_within_a_bounded_time_in_every_worker(make_server, upstreams):
    a, b = upstreams
    server = make_server(config([a.addr, b.addr]), {"app.py": APP})
    wait_view(server, a.addr, True)
    a.status = 503
    started = time.monotonic()
    line = server.wait_log(r"\[warn\] .*upstream backend peer (\S+) is down \(2 failed checks: "
                           r"status 503\)")
    assert line == a.addr
    wait_view(server, a.addr, False)
    # 2 failed checks + one refresh interval + the workers' 0.5 s report, with slack
    assert time.monotonic() - started < 2 * INTERVAL + INTERVAL + 0.5 + 4.0
    assert peers(server)[b.addr]["healthy"] is True
    a.status = 200
    server.wait_log(r"\[notice\] .*upstream backend peer " + re.escape(a.addr)
                    + r" is up \(2 passed checks\)")
    wait_view(server, a.addr, True)
    assert http_get(server.port, "/")[0] == 200


def test_a_refused_peer_is_down_with_the_reason_and_shows_in_status_and_metrics(
        make_server, upstreams):
    a, _ = upstreams
    closed = f"127.0.0.1:{free_port()}"          # nothing listens there
    server = make_server(config([a.addr, closed]), {"app.py": APP})
    server.wait_log(r"upstream backend peer " + re.escape(closed)
                    + r" is down \(2 failed checks: connection refused\)")
    wait_view(server, closed, False)
    done = server.cli("status")
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert re.search(r"UPSTREAM\s+PEER\s+HEALTH", table), table
    assert re.search(rf"backend\s+{re.escape(a.addr)}\s+up\s", table), table
    assert re.search(rf"backend\s+{re.escape(closed)}\s+down 2/2\s+\d+", table), table
    _, _, metrics = http_get(server.ports[1], "/metrics")
    text = metrics.decode()
    assert f'pyresty_upstream_peer_healthy{{peer="{a.addr}",upstream="backend"}} 1.0' in text
    assert f'pyresty_upstream_peer_healthy{{peer="{closed}",upstream="backend"}} 0.0' in text
    assert f'pyresty_upstream_peer_unhealthy_workers{{peer="{closed}",upstream="backend"}} 2.0' \
        in text
    assert re.search(rf'pyresty_upstream_peer_failed_checks\{{peer="{re.escape(closed)}",'
                     r'upstream="backend"\} ([2-9]|[1-9][0-9]+)\.0', text), text   # 2 or more
    assert 'pyresty_shared_dict_keys{dict="pyresty.health"}' in text


def test_checks_run_in_one_process_and_a_verdict_survives_a_reload(make_server, upstreams):
    a, b = upstreams
    server = make_server(config([a.addr, b.addr]), {"app.py": APP})
    a.status = 503
    wait_view(server, a.addr, False)
    before = b.checks
    window_start = time.monotonic()
    # the new config lists the servers in another order: verdicts follow addresses
    server.write_config(config([b.addr, a.addr]))
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")

    # the new generation serves with the verdict from its first report on: never up
    def second_generation() -> dict | None:
        code, _, body = http_get(server.ports[1], "/status")
        obj = json.loads(body)
        gens = {p["generation"] for p in obj["processes"] if p["role"] == "worker"
                and p["state"] == "serving"}
        view = {p["peer"]: p for p in obj["upstreams"]}
        if 2 in gens and view:
            assert view[a.addr]["healthy"] is False, view
            return view if view[a.addr]["workers"] == 2 else None
        return None
    wait_for(second_generation, DEADLINE, "the second generation's report")
    wait_for(lambda: b.checks >= before + 15, DEADLINE, "checks after the reload")
    elapsed = time.monotonic() - window_start
    count = b.checks - before
    # one process on a grid of INTERVAL: at most one check per interval (+1 for the
    # grid's phase, +1 at the handover); two processes at once would double it
    assert count <= elapsed / INTERVAL + 3, (count, elapsed)
    # and never two at once: two grids would put checks close together every interval
    # (a tick that fires late on a loaded machine makes the odd short gap)
    gaps = [t2 - t1 for t1, t2 in zip(b.times, b.times[1:])]
    assert sum(1 for gap in gaps if gap < INTERVAL / 3) <= 3, gaps
    # the verdict carried over: no flip back and forth, one "down" line in all
    log = server.log_text()
    assert len(re.findall(r"peer " + re.escape(a.addr) + r" is down", log)) == 1, log
    assert not re.search(r"peer " + re.escape(a.addr) + r" is up", log), log


def test_the_privileged_agent_runs_the_checks(make_server, upstreams):
    a, b = upstreams
    server = make_server(config([a.addr, b.addr], agent=True), {"app.py": APP})
    start = b.checks
    wait_for(lambda: b.checks >= start + 10, DEADLINE, "checks")
    a.status = 503
    wait_view(server, a.addr, False)
    gaps = [t2 - t1 for t1, t2 in zip(b.times, b.times[1:])]
    assert sum(1 for gap in gaps if gap < INTERVAL / 3) <= 3, gaps     # one process
    # the agent's pid is on the "is down" line (nginx's log format: pid#-)
    pid = int(server.wait_log(r"\[warn\] (\d+)#-: upstream backend peer \S+ is down"))
    agent = [p for p in json.loads(http_get(server.ports[1], "/status")[2])["processes"]
             if p["role"] == "agent"]
    assert [p["pid"] for p in agent] == [pid]


def test_a_single_process_checks_and_reports_by_itself(make_server, upstreams):
    a, b = upstreams
    text = config([a.addr, b.addr]).replace("workers = 2", "workers = 0")
    server = make_server(text, {"app.py": APP}, ready=r"\[notice\] .*ready: single process")
    a.status = 503
    wait_view(server, a.addr, False, workers=1)
    done = server.cli("status")
    assert re.search(rf"backend\s+{re.escape(a.addr)}\s+down 1/1\s", done.stdout), done.stdout
    assert http_get(server.port, "/")[0] == 200


def test_proxied_traffic_avoids_a_peer_the_checks_mark_down_and_returns(make_server, upstreams):
    a, b = upstreams

    def answers(count: int) -> set[str]:
        found = set()
        for _ in range(count):
            code, _, body = http_get(server.port, "/proxied/x")
            assert code == 200
            found.add(body.decode())
        return found

    server = make_server(config([a.addr, b.addr]), {"app.py": APP})
    wait_for(lambda: answers(6) == {str(a.port), str(b.port)}, DEADLINE, "both peers serving")
    a.status = 503
    wait_view(server, a.addr, False)
    served = a.served
    assert answers(20) == {str(b.port)}
    assert a.served == served                      # not one request reached the down peer
    a.status = 200
    wait_view(server, a.addr, True)
    assert answers(20) == {str(a.port), str(b.port)}


PASSIVE = '''
workers = 1
[status]
listen = "127.0.0.1:{{port2}}"
[upstream.backend]
servers = ["{closed}", "{live}"]
max_fails = 1
fail_timeout = "30s"
[[server]]
listen = "127.0.0.1:{{port}}"
[[server.location]]
path = "/"
proxy_pass = "http://backend"
'''


def test_passive_health_takes_a_refusing_peer_out_and_says_so(make_server, upstreams):
    _, b = upstreams
    closed = f"127.0.0.1:{free_port()}"
    server = make_server(PASSIVE.format(closed=closed, live=b.addr))
    for _ in range(6):                             # the refused try moves on to b
        code, _, body = http_get(server.port, "/x")
        assert (code, body) == (200, str(b.port).encode())
    server.wait_log(r"\[warn\] .*upstream backend peer " + re.escape(closed)
                    + r" temporarily disabled for 30s \(1 failure\)")
    peer = wait_for(lambda: peers(server).get(closed, {}).get("down") == 1 and peers(server)[closed],
                    DEADLINE, "the passive verdict in status")
    assert peer["healthy"] is True and peer["disabled"] == 1     # no active checks here
    _, _, metrics = http_get(server.ports[1], "/metrics")
    assert f'pyresty_upstream_peer_down_workers{{peer="{closed}",upstream="backend"}} 1.0' \
        in metrics.decode()
    assert "pyresty.health" not in metrics.decode()              # no checks, no health dict
