"""Faults a worker meets under load, with the real ``pyresty``: each one is logged
at the level an nginx operator expects, counted in ``/metrics``, and the
worker keeps serving (issue 17).
"""
from __future__ import annotations

import os
import re
import threading
import time

import pytest

from client import Connection
from harness import http_get, proc_title, wait_for

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


LIMITED = '''
workers = 1
worker_connections = 4
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
keepalive_timeout = "60s"
[[server.location]]
path = "/"
content = "app:hello"
'''


def test_worker_connections_close_idle_keepalive_connections_to_make_room(make_server):
    """At ``worker_connections``, a new client gets in by closing the keepalive
    connection idle longest (nginx's "reusing connections")."""
    server = make_server(LIMITED, {"app.py": APP})
    idle = [Connection(server.port) for _ in range(4)]
    for conn in idle:
        assert conn.request("GET", "/").status == 200        # now idle, kept alive
    with Connection(server.port) as fifth:
        assert fifth.request("GET", "/").status == 200
    assert idle[0].closed_by_server(5), "the connection idle longest was not closed"
    server.wait_log(r"\[warn\] .*4 worker_connections are not enough, reusing connections")
    wait_for(lambda: metric(server, "pyresty_idle_closed_for_room_total") >= 1, 5, "the count")
    for conn in idle:
        conn.close()


def test_worker_connections_with_none_idle_stop_accepting_for_a_moment(make_server):
    """With every slot busy (a request head on its way), the worker stops accepting:
    the new client waits in the backlog, nothing is reset, an [alert] says why,
    and the client is served as soon as a slot frees."""
    alert = r"\[alert\] .*4 worker_connections are not enough, not accepting"
    server = make_server(LIMITED, {"app.py": APP}, expect_log=(alert,))
    busy = [Connection(server.port) for _ in range(4)]
    for conn in busy:
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")          # a head half sent: not idle
    waiting = Connection(server.port)                          # the kernel completes the handshake
    waiting.send_request("GET", "/")
    server.wait_log(alert)
    wait_for(lambda: metric(server, "pyresty_worker_connections_full_total") >= 1, 5, "the count")
    busy[0].close()                                            # a slot frees
    assert waiting.read_response().status == 200
    for conn in [*busy, waiting]:
        conn.close()


OUT_OF_FILES = '''
workers = 1
worker_rlimit_nofile = 64
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "/"
content = "app:hello"
'''


def test_running_out_of_file_descriptors_is_a_crit_and_serving_resumes(make_server):
    """accept() failing with EMFILE is logged at [crit] with the counts (uvloop's
    own listener would close itself in silence: server/acceptor.py), and the
    worker accepts again once descriptors are free."""
    crit = (r"\[crit\] .*accept4\(\) failed \(24: Too many open files\): \d+ connections open, "
            r"\d+ file descriptors in use of 64")
    server = make_server(OUT_OF_FILES, {"app.py": APP}, expect_log=(crit,))
    server.wait_log(r"\[info\] .*open file limit 64 ")
    held = []
    try:
        for _ in range(80):                                    # more than the worker can hold
            conn = Connection(server.port)
            conn.send(b"GET / HTTP/1.1\r\n")                   # a head on its way: kept open
            held.append(conn)
        server.wait_log(crit)
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: metric(server, "pyresty_accept_errors_total") >= 1, 5, "the count")
    wait_for(lambda: http_get(server.port, "/", timeout=2)[0] == 200, 10, "serving again")


BLOCKING = '''
workers = 1
loop_block_warn = "300ms"
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /block"
content = "app:block"
[[server.location]]
path = "/"
content = "app:hello"
'''

BLOCKING_APP = '''
import time

async def hello(r):
    await r.say("hello")

async def block(r):
    time.sleep(1.5)                  # the mistake the watchdog is for
    await r.say("done")
'''


def test_a_blocked_event_loop_is_logged_once_with_the_handlers_line(make_server):
    """``time.sleep`` in a handler stops the worker's loop: one [warn] names the
    handler's file and line, /metrics counts the stall, ``pyresty status`` shows it."""
    server = make_server(BLOCKING, {"app.py": BLOCKING_APP})
    assert http_get(server.port, "/block")[2] == b"done\n"
    server.wait_log(r"\[warn\] .*event loop blocked for [\d.]+ s \(loop_block_warn 0.3s\)")
    server.wait_log(r"\[info\] .*event loop turned again after a 1\.\d+ s stall")
    text = server.log_text()
    assert re.search(r'File ".*app\.py", line 8, in block\n\s+time\.sleep\(1\.5\)', text), text
    assert text.count("event loop blocked for") == 1            # once per stall
    wait_for(lambda: metric(server, "pyresty_loop_stalls_total") == 1, 5, "the stall in /metrics")
    assert 1.4 < metric(server, "pyresty_loop_stall_longest_seconds") < 5
    table = server.cli("status").stdout
    assert re.search(r"worker .* 1\.\ds$", table, re.M), table
    assert http_get(server.port, "/")[0] == 200                 # and it serves on


LEAKING = '''
workers = 1
worker_max_rss = "{limit}"
worker_shutdown_timeout = "5s"
[[server]]
listen = "127.0.0.1:{port}"
keepalive_timeout = "30s"
[[server.location]]
path = "= /leak"
content = "app:leak"
[[server.location]]
path = "/"
content = "app:who"
'''

LEAKING_APP = '''
import os
import pyresty

kept = []

async def leak(r):
    kept.append(bytearray(8 * 1024 * 1024))       # a cache without a bound
    await r.say(len(kept))

async def who(r):
    await r.say(pyresty.worker.id(), " ", os.getpid())
'''


def test_a_worker_above_worker_max_rss_is_replaced_without_a_failed_request(make_server):
    """worker_max_rss: the master starts a new worker #0, then stops the old one
    gracefully; keepalive clients hammering the server never see an error."""
    probe = make_server(LEAKING.replace("{limit}", "0"), {"app.py": LEAKING_APP})
    baseline = rss_of_worker(probe)
    probe.stop()
    limit = baseline + 40 * 1024 * 1024
    server = make_server(LEAKING.replace("{limit}", str(limit)), {"app.py": LEAKING_APP})
    first = http_get(server.port, "/")[2].split()
    failures: list[str] = []
    served: list[bytes] = []
    stop = threading.Event()

    def client() -> None:
        conn = Connection(server.port)
        while not stop.is_set():
            try:
                resp = conn.request("GET", "/")
                served.append(resp.body)
                if resp.closes:
                    conn.close()
                    conn = Connection(server.port)
            except Exception as exc:    # any failure is the test's failure
                failures.append(repr(exc))
                conn.close()
                conn = Connection(server.port)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while not re.search(r"replacing it", server.log_text()):
            assert http_get(server.port, "/leak")[0] == 200
        server.wait_log(r"\[warn\] .*worker #0 \(pid \d+, generation 1\): RSS [\d.]+ MiB is above "
                        r"worker_max_rss \([\d.]+ MiB\); replacing it")
        server.wait_log(r"\[notice\] .*worker #0 \(pid \d+, generation 1\) replaces worker #0")
        server.wait_log(rf"worker #0 \(pid {int(first[1])}, generation 1\) exited with code 0")
        wait_for(lambda: http_get(server.port, "/")[2].split()[1] != first[1], 10, "the new worker")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not failures, failures[:5]
    assert len(served) > 10
    new = http_get(server.port, "/")[2].split()
    assert new[0] == b"0" and new[1] != first[1]          # same id, another process


def rss_of_worker(server) -> int:
    pid = wait_for(lambda: next((p for p in server.processes()
                                 if "worker process #0" in proc_title(p)), None), 10, "the worker")
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
