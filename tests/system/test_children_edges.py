"""Child processes that user code starts without ``pyresty.pipe`` (asyncio's
subprocesses, ``subprocess.Popen``, a sidecar started in ``init_worker``) are
children of the worker too: SPEC §4 step 5 kills them at
``worker_shutdown_timeout``, so a reload never leaves one behind (seed 000's
212 stuck workers, as 212 orphaned children)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from harness import wait_for

pytestmark = pytest.mark.timeout(60)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import asyncio, logging, subprocess
import pyresty

log = logging.getLogger("app")
SIDECARS = []

def start():
    # a sidecar the worker never waits for (a local helper daemon)
    SIDECARS.append(subprocess.Popen(["sleep", "301"]))
    log.warning("sidecar %d", SIDECARS[-1].pid)

async def asyncio_child(r):
    proc = await asyncio.create_subprocess_exec("sleep", "302")
    await r.say(proc.pid)
    await r.flush()
    await proc.wait()          # cancelled at worker_shutdown_timeout: the child stays

async def popen_child(r):
    proc = subprocess.Popen(["sleep", "303"])
    await r.say(proc.pid)      # fire and forget
'''

CONFIG = '''
workers = 1
worker_shutdown_timeout = "1s"
[hooks]
init_worker = "app:start"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "/asyncio"
content = "app:asyncio_child"
[[server.location]]
path = "/popen"
content = "app:popen_child"
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children_of_a_worker(server) -> list[int]:
    """The sidecar, the asyncio child (its request still running) and the Popen child."""
    import socket
    sidecar = int(server.wait_log(r"sidecar (\d+)"))
    streaming = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    streaming.sendall(b"GET /asyncio HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head or not head.split(b"\r\n\r\n", 1)[1].count(b"\r\n") >= 2:
        head += streaming.recv(4096)
    asyncio_child = int(head.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1])
    from harness import http_get
    status, _, body = http_get(server.port, "/popen")
    assert status == 200
    children = [sidecar, asyncio_child, int(body)]
    assert all(_alive(pid) for pid in children)
    server.streaming = streaming   # keep the request in flight until the deadline
    return children


def test_reload_kills_what_user_code_left_running(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    children = _children_of_a_worker(server)
    asked = time.monotonic()
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready", timeout=15)
    server.wait_log(r"exited with code 0", timeout=5)
    wait_for(lambda: not any(_alive(pid) for pid in children), 2,
             "every child of the old worker to be killed")
    assert time.monotonic() - asked < 1.0 + 1.0 + 2.0
    log = server.log_text()
    assert "killed 3 child processes" in log, log
    server.streaming.close()
    # the new worker's sidecar is its own and lives on
    sidecars = [int(pid) for pid in __import__("re").findall(r"sidecar (\d+)", log)]
    assert len(sidecars) == 2 and _alive(sidecars[1])


def test_fast_shutdown_kills_them_too(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    children = _children_of_a_worker(server)
    assert server.stop(signal.SIGTERM) == 0
    wait_for(lambda: not any(_alive(pid) for pid in children), 2,
             "every child of the worker to be killed")
    server.streaming.close()


THREADS = '''
import asyncio, threading, time

def start():
    threading.Thread(target=time.sleep, args=(300,), name="user thread").start()

async def popen_child(r):
    pass

async def busy(r):
    await r.say("started")
    await r.flush()
    await asyncio.to_thread(time.sleep, 300)     # an executor thread, busy
'''


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_a_single_process_ends_within_its_bound_whatever_threads_user_code_runs(
        make_server, sig):
    """workers = 0: the interpreter's exit joined the executor's busy thread
    (and any other non-daemon thread), so the process outlived its shutdown
    bound by as long as the thread ran; with no master, nothing killed it."""
    import socket
    server = make_server(CONFIG.replace("workers = 1", "workers = 0")
                         .replace('content = "app:asyncio_child"', 'content = "app:busy"'),
                         {"app.py": THREADS}, ready=r"ready: single process")
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn.sendall(b"GET /asyncio HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"started" in conn.recv(4096)
    asked = time.monotonic()
    assert server.stop(sig) == 0
    assert time.monotonic() - asked < 1.0 + 1.0 + 1.0
    conn.close()
