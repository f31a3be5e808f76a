"""How the master supervises: listeners across reloads, shutdown timeouts of old
generations, a second instance, slow status clients, signals while workers boot,
a drain that survives a respawn.

Each test is a real ``pyresty`` with real signals; every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness import PYRESTY, http_get, proc_title, session_pids, wait_for

APP = '''
import asyncio, os

async def hello(r):
    await r.say("hello ", os.getpid())

async def slow(r):
    await r.say("start")
    await r.flush()
    await asyncio.sleep(float(r.args.get("t", ["1"])[0]))
    await r.say("done")
'''

READY = r"\[notice\] .*generation (\d+) ready"


def _config(*, timeout: str = "3s", listens: tuple[str, ...] = ("{port}",),
            status: bool = True) -> str:
    text = f'workers = 2\nworker_shutdown_timeout = "{timeout}"\n'
    if status:
        text += '[status]\nlisten = "127.0.0.1:{port2}"\n'
    for listen in listens:
        text += f'''
[[server]]
listen = "127.0.0.1:{listen}"
keepalive_timeout = "30s"
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /slow"
content = "app:slow"
'''
    return text


def _reload(server, generation: int, timeout: float = 20) -> None:
    since = len(server.log_text())
    server.signal(signal.SIGHUP)
    server.wait_log(rf"generation {generation} ready|reload refused.*|reload abandoned.*",
                    timeout=timeout, since=since)
    text = server.log_text()[since:]
    said = "\n".join(line for line in text.splitlines() if "reopening logs" not in line)
    assert f"generation {generation} ready" in text, said


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _workers(server) -> list[int]:
    return [pid for pid in server.processes() if proc_title(pid).startswith("pyresty: worker")]


# 1. A reload that removes a listen address never closes its socket in the master.
@pytest.mark.timeout(60)
def test_reload_closes_removed_listener_and_can_add_it_back(make_server):
    both = _config(listens=("{port}", "{port3}"))
    server = make_server(both, {"app.py": APP}, ready=READY)
    assert http_get(server.ports[2], "/hello")[0] == 200
    old = set(_workers(server))
    server.write_config(_config(listens=("{port}",)))
    _reload(server, 2)
    wait_for(lambda: not (old & set(server.processes())), 10, "old generation gone")
    # nobody serves port3 any more: a client must be refused, not left hanging
    # in the accept queue of a socket the master forgot to close
    assert _refused(server.ports[2]), "removed listener still open in the master"
    # and the address can be listened on again by a later reload
    server.write_config(both)
    _reload(server, 3)
    assert http_get(server.ports[2], "/hello", timeout=5)[0] == 200


# 1b. After an abandoned reload that removed a listener, the master forgot the
#     socket the current generation still serves: the next reload cannot keep it.
@pytest.mark.timeout(60)
def test_abandoned_reload_keeps_current_listeners(make_server):
    both = _config(listens=("{port}", "{port3}"))
    server = make_server(both, {"app.py": APP}, ready=READY,
                         expect_log=(r"cannot load handlers",))
    server.write_config(_config(listens=("{port}",)))
    (server.prefix / "app.py").write_text("this is not python\n")
    since = len(server.log_text())
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload abandoned", since=since)
    assert http_get(server.ports[2], "/hello", timeout=5)[0] == 200   # still served
    (server.prefix / "app.py").write_text(APP)
    server.write_config(both)
    _reload(server, 3)
    assert http_get(server.ports[2], "/hello", timeout=5)[0] == 200


# 2. Old workers are SIGKILLed at the *new* config's worker_shutdown_timeout.
@pytest.mark.timeout(60)
def test_reload_lowering_shutdown_timeout_does_not_kill_old_inflight(make_server):
    server = make_server(_config(timeout="8s"), {"app.py": APP}, ready=READY)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    try:
        slow.sendall(b"GET /slow?t=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = slow.recv(4096)
        assert b"start" in data
        started = time.monotonic()
        server.write_config(_config(timeout="1s"))
        _reload(server, 2)
        # the request began under worker_shutdown_timeout = 8s: its worker
        # must get those 8 s, not the 1 s of the generation that replaces it
        while not data.endswith(b"0\r\n\r\n"):
            chunk = slow.recv(4096)
            assert chunk, (f"in-flight response cut after {time.monotonic() - started:.1f} s "
                           "by the reload")
            data += chunk
        assert b"done" in data
    finally:
        slow.close()


# 3. A second pyresty with the same config must refuse, not take over the
#    first one's pid file and control socket.
@pytest.mark.timeout(60)
def test_second_instance_refuses_and_keeps_first_pid_file_and_socket(make_server):
    server = make_server(_config(status=False), {"app.py": APP}, ready=READY,
                         expect_log=(r"already running",))
    pid_file = server.prefix / "logs" / "pyresty.pid"
    wait_for(pid_file.exists, 5, "pid file")
    assert int(pid_file.read_text()) == server.pid
    # the operator edits the port and starts pyresty again by mistake
    server.write_config(_config(listens=("{port3}",), status=False))
    second = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        try:
            code = second.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        assert code not in (None, 0), "a second master started beside the first one"
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(5)
            wait_for(lambda: not session_pids(second.pid), 5, "second server gone")
        if second.stdout:
            second.stdout.close()
    assert server.proc.poll() is None
    assert int(pid_file.read_text()) == server.pid
    result = server.cli("status")
    assert result.returncode == 0, result.stderr
    assert str(server.pid) in result.stdout


# 4. One slow client of the status listener pins the master's loop: no
#    respawn, no signal handling, no SIGKILL deadline while it trickles bytes.
@pytest.mark.timeout(60)
def test_slow_status_client_does_not_stall_supervision(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY)
    victim = _workers(server)[0]
    trickling = threading.Event()
    stop = threading.Event()

    def slowloris() -> None:
        with socket.create_connection(("127.0.0.1", server.ports[1]), timeout=10) as s:
            for i in range(40):        # ~8 s, one byte at a time, never a full request
                if stop.is_set():
                    return
                try:
                    s.sendall(b"GET /status HTTP/1.1\r\n"[i % 22:i % 22 + 1])
                except OSError:
                    return             # the master gave up on us: good
                if i == 2:
                    trickling.set()
                stop.wait(0.2)         # the client's pace, not a synchronisation

    thread = threading.Thread(target=slowloris)
    thread.start()
    try:
        assert trickling.wait(5)
        since = len(server.log_text())
        os.kill(victim, signal.SIGKILL)
        # SPEC §4: a worker that dies is respawned within 1 s
        server.wait_log(r"started worker #\d", timeout=1.5, since=since)
    finally:
        stop.set()
        thread.join(15)


# 5. USR1 (``pyresty -s reopen``, logrotate) reaching a worker that is still
#    booting kills it: the reload is abandoned (at start-up the server stops).
@pytest.mark.timeout(90)
def test_reopen_during_reload_does_not_kill_booting_workers(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY)
    stop = threading.Event()

    def reopen_storm() -> None:
        while not stop.is_set():
            try:
                os.kill(server.pid, signal.SIGUSR1)
            except ProcessLookupError:
                return
            time.sleep(0.0005)        # the storm's pace, not a synchronisation

    thread = threading.Thread(target=reopen_storm)
    thread.start()
    try:
        for generation in range(2, 32):
            _reload(server, generation)
    finally:
        stop.set()
        thread.join(10)
    assert "killed by signal 10" not in server.log_text()


@pytest.mark.timeout(60)
def test_a_worker_respawned_after_drain_keeps_draining(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY)
    result = server.cli("drain", "--timeout", "10s")
    assert result.returncode == 0, result.stderr
    victim = _workers(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len([p for p in _workers(server) if p != victim]) == 2, 5,
             "the respawned worker")
    server.wait_log(r"serving \(generation 1\)", count=3, timeout=5)   # two first, one respawned
    # every worker, the new one included, answers with keepalive off
    answers = {http_get(server.port, "/hello")[1].get("connection") for _ in range(20)}
    assert answers == {"close"}


@pytest.mark.timeout(60)
def test_quit_during_start_up_stops_gracefully(make_server):
    server = make_server(_config(), {"app.py": APP}, start=False)
    server.proc = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
    wait_for(lambda: "started worker #1" in server.log_text(), 10, "the workers to be forked")
    server.signal(signal.SIGQUIT)
    assert server.proc.wait(10) == 0
    assert "reload abandoned" not in server.log_text()


GROW = '''
import time

KEPT = []

async def grow(r):
    KEPT.append(b"x" * (120 << 20))   # past worker_max_rss: the guard replaces this worker
    await r.say("grown")
    await r.flush()
    time.sleep(20)                    # and its loop is blocked: it cannot stop by itself
'''


@pytest.mark.timeout(60)
def test_a_replaced_worker_killed_at_its_deadline_is_not_respawned(make_server):
    """The memory guard asks a worker of the *current* generation to stop; one
    stuck past its deadline is SIGKILLed, and that death was asked for: its
    replacement already serves, so it must not get a second one (two workers #0)."""
    server = make_server('''
        workers = 1
        worker_shutdown_timeout = "0.5s"
        worker_max_rss = "100m"
        [status]
        listen = "127.0.0.1:{port2}"
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "= /grow"
        content = "app:grow"
    ''', {"app.py": GROW}, ready=READY)
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn.sendall(b"GET /grow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"grown" in conn.recv(4096)
    server.wait_log(r"above worker_max_rss", timeout=10)
    server.wait_log(r"still running .* killing it", timeout=10)
    server.wait_log(r"worker #0 .* killed by signal 9", timeout=5)
    # the master answers /status after it handled the death: any respawn is in the table
    import json
    rows = json.loads(http_get(server.ports[1], "/status")[2])["processes"]
    workers = [r for r in rows if r["role"] == "worker"]
    assert len(workers) == 1, workers
    assert "killed by signal 9" not in "".join(
        line for line in server.log_text().splitlines() if "[error]" in line)
    conn.close()
