"""Faults a worker meets under load, with the real ``pyresty``: each one is logged
at the level an nginx operator expects, counted in ``/metrics``, and the
worker keeps serving (issue 17).
"""
from __future__ import annotations

import re
import time

import pytest

from harness import http_get, wait_for

pytestmark = pytest.mark.timeout(120)

APP = '''
async def hello(r):
    await r.say("hello")
'''


def metric(server, name: str) -> float:
    """The sum of ``name`` over every worker in /metrics (0 when absent)."""
    total = 0.0
    for line in http_get(server.ports[1], "/metrics")[2].decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


FULL_DISK = '''
workers = 1
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
access_log = "/dev/full"
[[server.location]]
path = "/"
content = "app:hello"
'''


def test_access_log_on_a_full_disk_is_an_alert_once_a_second(make_server):
    """/dev/full answers every write with ENOSPC: nginx logs ``[alert] write() to
    ... failed (28: No space left on device)``; pyresty does the same, at most
    once a second, counts the failures, and keeps serving."""
    alert = r'\[alert\] .*write\(\) to "/dev/full" failed \(28: No space left on device\)'
    server = make_server(FULL_DISK, {"app.py": APP}, expect_log=(alert,))
    assert http_get(server.port, "/")[0] == 200
    server.wait_log(alert)               # the sweep flushes within a quarter second
    started = time.monotonic()
    # keep the log failing for 2.5 s: each sweep's flush fails again
    while time.monotonic() - started < 2.5:
        status, _, body = http_get(server.port, "/")
        assert (status, body) == (200, b"hello\n")
    elapsed = time.monotonic() - started
    wait_for(lambda: metric(server, "pyresty_access_log_errors_total") >= 5, 5,
             "the failed writes in /metrics")
    lines = re.findall(alert, server.log_text())
    assert 1 <= len(lines) <= elapsed + 2, lines          # once a second at most
    assert "more since the last report" in server.log_text()
