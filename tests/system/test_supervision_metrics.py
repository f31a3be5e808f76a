"""What the master lived through is counted in ``/metrics``, not only logged: a
worker that died unasked, one killed past its shutdown deadline, reloads
started, refused and abandoned (an operator alerts on a crash loop or on
deploys that never take, not on log lines)."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest

from harness import http_get, wait_for

pytestmark = pytest.mark.timeout(60)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import os, time

async def block(r):
    await r.say("blocking")
    await r.flush()
    time.sleep(30)        # blocks the loop: no deadline of the worker can fire

def start():
    if os.path.exists("broken"):
        raise RuntimeError("cannot start")
'''

CONFIG = '''
workers = 2
worker_shutdown_timeout = "0.5s"
[hooks]
init_worker = "app:start"
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "/block"
content = "app:block"
'''


def _metric(server, name: str, **labels: str) -> float:
    code, _, body = http_get(server.ports[1], "/metrics")
    assert code == 200
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.decode().splitlines():
        if re.fullmatch(rf"{name}\{{{re.escape(want)}\}} \S+", line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _workers(server) -> list[dict]:
    body = http_get(server.ports[1], "/status")[2]
    return [p for p in json.loads(body)["processes"] if p["role"] == "worker"]


def test_exits_and_reloads_are_counted(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY,
                         expect_log=(r"init_worker hook app:start failed",))
    assert _metric(server, "pyresty_worker_exits_total", role="worker", reason="crashed") == 0
    # a worker killed from outside: respawned, and counted
    victim = _workers(server)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: _metric(server, "pyresty_worker_exits_total", role="worker",
                             reason="crashed") == 1, 5, "the crash to be counted")
    # a reload that starts, one refused (bad config), one abandoned (init_worker fails)
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    (server.prefix / "pyresty.toml").write_text(server.config_path.read_text() + "\nworkrs = 1\n")
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload refused")
    server.write_config(CONFIG)
    (server.prefix / "broken").write_text("")
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload abandoned")
    (server.prefix / "broken").unlink()
    wait_for(lambda: _metric(server, "pyresty_reloads_total", outcome="abandoned") == 1, 5,
             "the abandoned reload to be counted")
    # started: a new generation was forked (the abandoned one too)
    assert _metric(server, "pyresty_reloads_total", outcome="started") == 2
    assert _metric(server, "pyresty_reloads_total", outcome="refused") == 1
    # a worker whose loop is blocked past its shutdown deadline is killed, and counted
    import socket
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"blocking" in conn.recv(4096)
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 4 ready")
    server.wait_log(r"still running .* killing it")
    wait_for(lambda: _metric(server, "pyresty_worker_exits_total", role="worker",
                             reason="killed") == 1, 5, "the kill to be counted")
    # the killed one is not also a crash; the one that could not boot is a boot failure
    assert _metric(server, "pyresty_worker_exits_total", role="worker", reason="crashed") == 1
    assert _metric(server, "pyresty_worker_exits_total", role="worker", reason="boot_failed") >= 1
    conn.close()
