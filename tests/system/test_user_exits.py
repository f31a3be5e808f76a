"""``sys.exit()`` or ``KeyboardInterrupt`` raised by user code outside a
request (a timer callback, ``exit_worker``; argparse and click call
``sys.exit`` on bad input): a failure like any other, logged with its
traceback, never the end of the worker and every request it was serving."""
from __future__ import annotations

import os
import signal

import pytest

from harness import http_get, wait_for

pytestmark = pytest.mark.timeout(60)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import argparse, os, sys
import pyresty

async def hello(r):
    await r.say(os.getpid())

async def exits(premature):
    argparse.ArgumentParser(prog="job").parse_args(["--bogus"])   # sys.exit(2)

async def interrupts(premature):
    raise KeyboardInterrupt

async def arm(r):
    pyresty.timer.at(0, exits)
    pyresty.timer.at(0, interrupts)
    await r.say("armed")

def start():
    if os.path.exists("exit-at-init"):
        sys.exit(3)

def stop():
    sys.exit("bye")
'''

CONFIG = '''
workers = 1
worker_shutdown_timeout = "1s"
[hooks]
init_worker = "app:start"
exit_worker = "app:stop"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /arm"
content = "app:arm"
'''


def test_a_timer_that_exits_is_a_logged_failure_and_the_worker_serves_on(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    pid = http_get(server.port, "/hello")[2]
    assert http_get(server.port, "/arm")[0] == 200
    server.wait_log(r"\[error\] .*timer app:exits failed")
    server.wait_log(r"\[error\] .*timer app:interrupts failed")
    assert "SystemExit: 2" in server.log_text()
    assert http_get(server.port, "/hello")[2] == pid       # the same worker
    assert "worker crashed" not in server.log_text()
    # exit_worker's sys.exit at the reload: logged, the old worker ends cleanly
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    server.wait_log(r"\[error\] .*exit_worker hook app:stop failed")
    server.wait_log(rf"pid {int(pid)}, generation 1\) exited with code 0")


def test_sys_exit_in_init_worker_is_a_boot_failure(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY,
                         expect_log=(r"init_worker hook app:start failed",))
    (server.prefix / "exit-at-init").write_text("")
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload abandoned: .*failed to start")
    assert "init_worker hook app:start failed: ProcessExitRefused: SystemExit(3)" in server.log_text()
    assert "worker crashed" not in server.log_text()
    os.unlink(server.prefix / "exit-at-init")
    wait_for(lambda: http_get(server.port, "/hello")[0] == 200, 5, "the old generation serving")


REQUEST_APP = '''
import os, sys

async def hello(r):
    await r.say(os.getpid())

async def exits(r):
    sys.exit("from a handler")

async def interrupts(r):
    raise KeyboardInterrupt

async def fine(r):
    await r.say("fine")

def filter_exits(r):
    sys.exit(4)

def log_exits(r):
    sys.exit(5)
'''

REQUEST_CONFIG = '''
workers = 1
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /exit"
content = "app:exits"
[[server.location]]
path = "= /interrupt"
content = "app:interrupts"
[[server.location]]
path = "= /filter"
content = "app:fine"
header_filter = "app:filter_exits"
[[server.location]]
path = "= /log"
content = "app:fine"
log = "app:log_exits"
'''


def test_sys_exit_in_a_request_is_a_500_and_the_worker_serves_on(make_server):
    """A request's handler, filter or log phase raising SystemExit or
    KeyboardInterrupt fails that request (a 500 and a traceback), never the
    worker with every request in flight on it."""
    server = make_server(REQUEST_CONFIG, {"app.py": REQUEST_APP}, ready=READY)
    pid = http_get(server.port, "/hello")[2]
    assert http_get(server.port, "/exit")[0] == 500
    assert http_get(server.port, "/interrupt")[0] == 500
    assert http_get(server.port, "/filter")[0] == 500
    code, _, body = http_get(server.port, "/log")
    assert (code, body) == (200, b"fine\n")
    server.wait_log(r"\[error\] .*log handler failed on GET /log")
    text = server.log_text()
    assert "SystemExit: from a handler" in text and "KeyboardInterrupt" in text
    assert "SystemExit: 4" in text and "SystemExit: 5" in text
    assert http_get(server.port, "/hello")[2] == pid       # the same worker
    assert "worker crashed" not in server.log_text()
