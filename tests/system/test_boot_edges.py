"""A worker that does not finish booting: an ``init_worker`` (or an import)
that hangs must not leave the operator looking at a silent server, and a stop
must not wait for it."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from harness import PYRESTY, wait_for

pytestmark = pytest.mark.timeout(60)

STUCK = '''
import asyncio, logging, os
import pyresty

async def init():
    if os.path.exists("stuck"):
        logging.getLogger("app").warning("init_worker stuck")
        await asyncio.sleep(3600)
'''

CONFIG = '''
workers = 1
worker_shutdown_timeout = "1s"
[hooks]
init_worker = "app:init"
[[server]]
listen = "127.0.0.1:{port}"
'''


def _start_stuck(make_server):
    server = make_server(CONFIG, {"app.py": STUCK, "stuck": ""}, start=False)
    server.proc = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
    server.wait_log(r"init_worker stuck")
    return server


def test_a_worker_stuck_in_init_worker_at_start_is_reported(make_server):
    server = _start_stuck(make_server)
    line = server.wait_log(r"\[warn\] .*worker #0 .* not ready .*", timeout=10)
    assert "init_worker" in line
    server.stop(signal.SIGQUIT)
    assert b"not ready" in server.proc.stderr.read()     # at start, on the terminal too


def test_term_does_not_wait_for_a_stuck_init_worker(make_server):
    server = _start_stuck(make_server)
    asked = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - asked < 2.0
    assert "killed by signal" not in server.log_text()


def test_a_reload_stuck_in_init_worker_is_reported_and_quit_ends_it(make_server):
    server = make_server(CONFIG, {"app.py": STUCK},
                         ready=r"\[notice\] .*generation 1 ready")
    (server.prefix / "stuck").write_text("")
    server.signal(signal.SIGHUP)
    server.wait_log(r"\[warn\] .*worker #0 \(pid \d+, generation 2\) not ready", timeout=10)
    asked = time.monotonic()
    assert server.stop(signal.SIGQUIT) == 0
    assert time.monotonic() - asked < 1.0 + 1.0 + 1.0
    wait_for(lambda: not server.processes(), 2, "every process gone")


CRASH = '''
import os, signal

def init():
    if os.path.exists("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)   # a C extension that crashes at init
'''


def test_a_respawn_that_crashes_while_booting_is_not_retried_in_a_loop(make_server):
    """A respawned worker that dies before it is ready (a segfault, not the
    boot-error exit code) is a failed boot: tried again after the back-off, not
    forked again at once, forever (it was ~75 forks a second)."""
    server = make_server(CONFIG.replace("app:init", "app:init"), {"app.py": CRASH},
                         ready=r"\[notice\] .*generation 1 ready")
    (server.prefix / "crash").write_text("")
    victim = next(pid for pid in server.processes() if pid != server.pid)
    os.kill(victim, signal.SIGKILL)
    server.wait_log(r"failed to start; trying again in 5 s", timeout=10)
    # the master's own line comes after it forked (and logged) every attempt
    started = server.log_text().count("started worker #0")
    assert started == 2, server.log_text()
    (server.prefix / "crash").unlink()
    server.wait_log(r"started worker #0", count=3, timeout=10)    # after the back-off
    server.wait_log(r"serving \(generation 1\)", count=2, timeout=10)


def test_a_single_process_stuck_in_init_worker_is_reported(make_server):
    """workers = 0 has no master to notice: the process says it itself."""
    server = make_server(CONFIG.replace("workers = 1", "workers = 0"),
                         {"app.py": STUCK, "stuck": ""}, start=False)
    server.proc = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
    server.wait_log(r"init_worker stuck")
    server.wait_log(r"\[warn\] .*not ready .* init_worker", timeout=10)
    asked = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - asked < 2.0
    assert b"not ready" in server.proc.stderr.read()


def test_a_terminal_that_went_away_does_not_stop_the_server(make_server):
    """``pyresty ... | head -0``: the master's one line on stdout met a closed
    pipe (BrokenPipeError) and the master exited as the server came up."""
    server = make_server('''
        workers = 1
        [[server]]
        listen = "127.0.0.1:{port}"
    ''', start=False)
    server.proc = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
    server.proc.stdout.close()          # the reader is gone before the server is up
    server.wait_log(r"generation 1 ready")
    from harness import http_get
    assert http_get(server.port, "/")[0] == 404      # it answers (no location)
    assert server.proc.poll() is None
    server.proc.stdout = None
    assert server.stop(signal.SIGQUIT) == 0
    assert b"Traceback" not in server.proc.stderr.read()
