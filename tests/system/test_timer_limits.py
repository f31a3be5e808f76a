"""``max_pending_timers`` and ``max_running_timers`` in a real worker: a timer
refused, or one that waits for a running slot, is a log line and a counter in
``/metrics`` (a refusal used to be only the ``TimerError`` the caller may well
swallow; a wait only a warning)."""
from __future__ import annotations

import re

import pytest

from harness import http_get, wait_for

pytestmark = pytest.mark.timeout(60)

APP = '''
import asyncio
import pyresty

async def job(premature):
    await asyncio.sleep(0.2)

async def flood(r):
    refused = 0
    for _ in range(5):
        try:
            pyresty.timer.at(0, job)
        except pyresty.TimerError:
            refused += 1        # swallowed, as callers do
    await r.say(refused)
'''

CONFIG = '''
workers = 1
max_pending_timers = 3
max_running_timers = 1
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /flood"
content = "app:flood"
'''


def _metric(server, name: str) -> float:
    body = http_get(server.ports[1], "/metrics")[2].decode()
    found = re.search(rf'^{name}\{{generation="1",worker="0"\}} (\S+)$', body, re.M)
    return float(found.group(1)) if found else -1.0


def test_refused_and_waiting_timers_are_logged_and_counted(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=r"generation 1 ready")
    assert http_get(server.port, "/flood")[2] == b"2\n"
    server.wait_log(r"\[warn\] .*max_pending_timers \(3\) reached: a timer of app:job refused")
    server.wait_log(r"\[warn\] .*max_running_timers \(1\) reached")
    wait_for(lambda: _metric(server, "pyresty_timers_refused_total") == 2, 5,
             "the refusals in /metrics")
    wait_for(lambda: _metric(server, "pyresty_timers_waited_total") == 2, 5,
             "the waits in /metrics")
