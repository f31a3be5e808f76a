"""The process model with the real ``pyresty`` command: master, workers, signals, reload."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from client import Connection
from harness import http_get, proc_title, wait_for

pytestmark = pytest.mark.timeout(120)

APP = '''
import asyncio, os
import pyresty.runtime.worker as worker

async def hello(r):
    await r.say("v1 ", worker.id(), " ", os.getpid())

async def slow(r):
    await r.say("start")
    await r.flush()
    await asyncio.sleep(float(r.args.get("t", ["1"])[0]))
    await r.say("done")

async def stuck(r):
    await asyncio.sleep(3600)

async def chatter(r):
    while True:              # a stream that never stops talking (like a busy WebSocket)
        await r.say("tick")
        await r.flush()
        await asyncio.sleep(0.01)

def bye():
    import logging
    logging.getLogger("pyresty.app").warning("exit_worker ran in %d", os.getpid())
'''

CONFIG = '''
workers = 2
worker_shutdown_timeout = "{timeout}"
[hooks]
exit_worker = "app:bye"
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
keepalive_timeout = "30s"
keepalive_requests = 100000
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /slow"
content = "app:slow"
[[server.location]]
path = "= /stuck"
content = "app:stuck"
[[server.location]]
path = "= /chatter"
content = "app:chatter"
'''

READY = r"\[notice\] .*generation (\d+) ready"


def config(timeout: str = "3s") -> str:
    return CONFIG.replace("{timeout}", timeout)


def status(server) -> list[dict]:
    code, _, body = http_get(server.ports[1], "/status")
    assert code == 200
    return json.loads(body)["processes"]


def workers_of(server, generation: int | None = None) -> list[dict]:
    return [p for p in status(server) if p["role"] == "worker"
            and (generation is None or p["generation"] == generation)]


def reload_and_wait(server, generation: int) -> None:
    server.signal(signal.SIGHUP)
    server.wait_log(rf"\[notice\] .*generation {generation} ready", timeout=20)


def test_master_and_workers_titles_status(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    pids = server.processes()
    titles = sorted(proc_title(pid) for pid in pids)
    assert len(pids) == 3
    assert titles[0].startswith("pyresty: master process")
    assert titles[1:] == ["pyresty: worker process #0", "pyresty: worker process #1"]
    seen = {http_get(server.port, "/hello")[2].split()[1] for _ in range(20)}
    assert seen <= {b"0", b"1"}
    result = server.cli("status")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["ROLE", "ID", "PID", "GEN", "STATE"]
    assert sum(1 for line in lines if line.startswith("worker")) == 2
    code, _, metrics = http_get(server.ports[1], "/metrics")
    assert code == 200 and b'pyresty_workers{generation="1",state="serving"} 2.0' in metrics


def test_killed_worker_is_respawned_with_same_id(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    wait_for(lambda: len(workers_of(server)) == 2, 5, "two workers reported")
    victim = next(p for p in workers_of(server) if p["id"] == 1)
    failures = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                if http_get(server.port, "/hello", timeout=5)[0] != 200:
                    failures.append("status")
            except OSError as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        replacement = wait_for(
            lambda: [p for p in workers_of(server) if p["id"] == 1 and p["pid"] != victim["pid"]
                     and p["state"] == "serving"], 5, "worker #1 respawned")[0]
        assert time.monotonic() - killed_at < 1.5
    finally:
        stop.set()
        thread.join(10)
    assert proc_title(replacement["pid"]) == "pyresty: worker process #1"
    # the one request the killed worker may have been answering is lost with
    # it; the listeners never went dark for any other
    assert len(failures) <= 1, failures
    server.wait_log(r"worker #1 .* killed by signal 9")


def test_reload_serves_new_code_and_old_workers_exit(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    old = {p["pid"] for p in workers_of(server)}
    (server.prefix / "app.py").write_text(APP.replace('"v1 "', '"v2 "'))
    reload_and_wait(server, 2)
    # an old worker may take a connection in the moment before it sees QUIT
    wait_for(lambda: http_get(server.port, "/hello")[2].startswith(b"v2 "), 5, "the new code")
    wait_for(lambda: not (old & set(server.processes())), 5, "old workers gone")
    assert len(server.processes()) == 3
    assert all(http_get(server.port, "/hello")[2].startswith(b"v2 ") for _ in range(10))


def test_reload_with_broken_config_changes_nothing(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    before = {p["pid"] for p in workers_of(server)}
    server.config_path.write_text(server.config_path.read_text() + "\nbogus_key = 1\n")
    result = server.cli("-s", "reload")
    assert result.returncode == 1
    assert "bogus_key: unknown key" in result.stderr
    server.signal(signal.SIGHUP)   # the master checks again by itself
    server.wait_log(r"\[error\] .*reload refused: the configuration is invalid")
    assert {p["pid"] for p in workers_of(server)} == before
    assert http_get(server.port, "/hello")[0] == 200


def test_reload_with_broken_handler_is_rolled_back(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY,
                         expect_log=(r"cannot load handlers",))
    before = {p["pid"] for p in workers_of(server)}
    (server.prefix / "app.py").write_text("this is not python\n")
    result = server.cli("-s", "reload")
    assert result.returncode == 1 and "app:hello" in result.stderr
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload abandoned: .*failed to start")
    assert {p["pid"] for p in workers_of(server) if p["state"] == "serving"} == before
    assert http_get(server.port, "/hello")[2].startswith(b"v1 ")


def test_boot_failure_at_start_stops_master(make_server):
    server = make_server(config(), {"app.py": "import nowhere_to_be_found\n"}, start=False,
                         expect_log=(r"failed to start", r"cannot load handlers"))
    server.proc = __import__("subprocess").Popen(
        [*__import__("harness").PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
        stdout=-1, stderr=-2, start_new_session=True)
    assert server.proc.wait(20) == 1
    text = server.log_text()
    assert "No module named 'nowhere_to_be_found'" in text
    assert "failed to start; stopping" in text


def test_signal_without_master(make_server):
    server = make_server(config(), {"app.py": APP}, start=False)
    result = server.cli("-s", "quit")
    assert result.returncode == 1 and "no running master" in result.stderr
    result = server.cli("status")
    assert result.returncode == 1 and "no running master" in result.stderr


def test_graceful_shutdown_steps(make_server):
    """SPEC §4: in-flight completes with Connection: close, idle keepalive closes
    at once, a stuck request is cut at worker_shutdown_timeout, exit_worker runs."""
    server = make_server(config("2s"), {"app.py": APP}, ready=READY)
    idle = Connection(server.port, timeout=10)
    idle.request("GET", "/hello")
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow.sendall(b"GET /slow?t=0.8 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"start" in slow.recv(4096)
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stuck.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: sum(p["active_requests"] for p in workers_of(server)) >= 2, 5,
             "both requests in flight")
    started = time.monotonic()
    server.signal(signal.SIGQUIT)
    # the idle keepalive connection is closed promptly (step 2)
    assert idle.sock.recv(1) == b""
    assert time.monotonic() - started < 1.0
    # the in-flight slow response completes (step 4)
    rest = b""
    while not rest.endswith(b"0\r\n\r\n"):
        chunk = slow.recv(4096)
        assert chunk, "slow response was cut"
        rest += chunk
    assert b"done" in rest
    # the stuck request is cut at worker_shutdown_timeout (step 5)
    assert stuck.recv(4096) == b""
    cut_after = time.monotonic() - started
    assert 1.8 < cut_after < 3.0
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 3.0 + 0.5
    assert server.log_text().count("exit_worker ran") == 2
    for s in (slow, stuck):
        s.close()
    idle.close()


def test_connection_close_during_shutdown(make_server):
    server = make_server(config("3s"), {"app.py": APP}, ready=READY)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow.sendall(b"GET /slow?t=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = slow.recv(4096)
    assert b"Connection: keep-alive" in head  # started before shutdown
    busy = Connection(server.port, timeout=10)
    busy.request("GET", "/hello")
    server.signal(signal.SIGQUIT)
    server.wait_log(r"gracefully shutting down", count=2)
    # a request sent on a kept-alive connection once shutdown began is answered
    # with Connection: close (or finds the connection already closed while idle)
    try:
        resp = busy.request("GET", "/hello")
        assert resp.status == 200 and resp.get("connection") == "close"
    except ConnectionError:
        # closed while idle before the request left: allowed only if nothing was sent
        pass
    slow.close()
    busy.close()


def test_quit_and_term_leave_no_process(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    pids = server.processes()
    assert server.stop(signal.SIGQUIT) == 0
    assert not any(os.path.exists(f"/proc/{pid}") and "pyresty" in proc_title(pid) for pid in pids)
    server2 = make_server(config(), {"app.py": APP}, ready=READY)
    assert server2.stop(signal.SIGTERM) == 0


def test_master_killed_workers_follow(make_server):
    server = make_server(config("2s"), {"app.py": APP}, ready=READY)
    workers = [p["pid"] for p in workers_of(server)]
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and
                             proc_title(pid).startswith("pyresty") for pid in workers),
             5, "orphaned workers to exit")


def test_drain_for_prestop(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    conn = Connection(server.port, timeout=10)
    assert conn.request("GET", "/hello").get("connection") == "keep-alive"
    result = server.cli("drain", "--timeout", "10s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "active connections: 0"
    conn.close()
    # still serving new connections, with keepalive off
    _, headers, _ = http_get(server.port, "/hello")
    assert headers["connection"] == "close"


def _status_answer(server) -> tuple[int, dict, dict]:
    code, headers, body = http_get(server.ports[1], "/status")
    return code, headers, json.loads(body)


def test_drain_is_visible_and_undone_by_cancel_or_reload(make_server):
    """A readiness probe on /status must fail while draining (README's Kubernetes
    example); `status` says so; `drain --cancel` or a reload ends the drain."""
    server = make_server(config(), {"app.py": APP}, ready=READY)
    code, _, answer = _status_answer(server)
    assert code == 200 and answer["state"] == "serving"
    assert server.cli("drain", "--timeout", "10s").returncode == 0
    code, _, answer = _status_answer(server)
    assert code == 503 and answer["state"] == "draining"
    assert {p["state"] for p in answer["processes"]} == {"draining"}
    table = server.cli("status").stdout.splitlines()[1:]
    assert len(table) == 3 and all(line.split()[4] == "draining" for line in table), table
    assert b"pyresty_draining 1.0" in http_get(server.ports[1], "/metrics")[2]
    # drain --cancel: keepalive back on in every worker, the probe passes again
    result = server.cli("drain", "--cancel")
    assert result.returncode == 0 and "drain cancelled" in result.stdout, result.stderr
    assert _status_answer(server)[0] == 200
    wait_for(lambda: {http_get(server.port, "/hello")[1]["connection"] for _ in range(10)}
             == {"keep-alive"}, 5, "keepalive back in every worker")
    # a reload ends a drain too
    assert server.cli("drain", "--timeout", "10s").returncode == 0
    assert _status_answer(server)[0] == 503
    reload_and_wait(server, 2)
    code, _, answer = _status_answer(server)
    assert code == 200 and answer["state"] == "serving"
    # (the old generation answers "close" until its listeners are closed)
    wait_for(lambda: {http_get(server.port, "/hello")[1]["connection"] for _ in range(10)}
             == {"keep-alive"}, 5, "keepalive in the new generation")


def test_status_and_metrics_answers_carry_a_date(make_server):
    """RFC 9110 §6.6.1: an origin server with a clock sends Date (REDbot flagged it)."""
    from email.utils import parsedate_to_datetime
    server = make_server(config(), {"app.py": APP}, ready=READY)
    for path in ("/status", "/metrics", "/nothing"):
        _, headers, _ = http_get(server.ports[1], path)
        sent = parsedate_to_datetime(headers["date"])
        assert headers["date"].endswith(" GMT") and abs(sent.timestamp() - time.time()) < 5


SINGLE = config().replace("workers = 2", "workers = 0")


def test_single_process_serves_status_and_drain(make_server):
    server = make_server(SINGLE, {"app.py": APP}, ready=r"\[notice\] .*ready")
    code, headers, answer = _status_answer(server)
    assert code == 200 and "date" in headers
    [me] = answer["processes"]
    assert (me["role"], me["pid"], me["state"]) == ("single", server.pid, "serving")
    assert b'pyresty_workers{generation="0",state="serving"} 1.0' in \
        http_get(server.ports[1], "/metrics")[2]
    result = server.cli("status")
    assert result.returncode == 0 and result.stdout.splitlines()[1].split()[:5] == \
        ["single", "0", str(server.pid), "0", "serving"]
    conn = Connection(server.port, timeout=10)
    assert conn.request("GET", "/hello").get("connection") == "keep-alive"
    result = server.cli("drain", "--timeout", "10s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "active connections: 0"
    assert _status_answer(server)[0] == 503
    assert http_get(server.port, "/hello")[1]["connection"] == "close"
    assert server.cli("drain", "--cancel").returncode == 0
    assert _status_answer(server)[0] == 200
    assert http_get(server.port, "/hello")[1]["connection"] == "keep-alive"
    result = server.cli("-s", "reload")
    assert result.returncode == 1 and "needs a master process" in result.stderr
    conn.close()
    assert server.stop(signal.SIGQUIT) == 0
    assert not (server.prefix / "logs" / "pyresty.sock").exists()


def _load_clients(port: int, stop: threading.Event, counts: dict, lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        reused = conn.sock is not None
        try:
            conn.request("GET", "/hello")
            resp = conn.getresponse()
            resp.read()
            key = "ok" if resp.status == 200 else f"status {resp.status}"
            if resp.getheader("connection") == "close":
                conn.close()
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            conn.close()
            key = "retry" if reused else f"error {exc!r}"
        with lock:
            counts[key] = counts.get(key, 0) + 1
    conn.close()


def test_reloads_under_keepalive_load_lose_nothing(make_server):
    server = make_server(config(), {"app.py": APP}, ready=READY)
    counts: dict = {}
    lock = threading.Lock()
    stop = threading.Event()
    clients = [threading.Thread(target=_load_clients, args=(server.port, stop, counts, lock))
               for _ in range(8)]
    for t in clients:
        t.start()
    try:
        for generation in range(2, 12):
            reload_and_wait(server, generation)
    finally:
        stop.set()
        for t in clients:
            t.join(15)
    errors = {k: v for k, v in counts.items() if k not in ("ok", "retry")}
    assert not errors, counts
    assert counts.get("ok", 0) > 500
    assert counts.get("retry", 0) == 0, counts


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


@pytest.mark.timeout(240)
def test_200_reloads_leak_nothing(make_server):
    server = make_server(config("1s"), {"app.py": APP}, ready=READY)
    # the master closes a child's channel when it reaps it: count fds once no
    # exited worker waits to be reaped (processes() does not list zombies)
    reload_and_wait(server, 2)
    wait_for(lambda: len(server.processes()) == 3 and not _zombies_of(server.pid), 10,
             "old generation gone and reaped")
    fds, rss = _fd_count(server.pid), _rss_kb(server.pid)
    for generation in range(3, 203):
        reload_and_wait(server, generation)
    wait_for(lambda: len(server.processes()) == 3 and not _zombies_of(server.pid), 15,
             "only master + 2 workers, every old one reaped")
    assert _fd_count(server.pid) <= fds
    assert _rss_kb(server.pid) < rss + 4096
    assert http_get(server.port, "/hello")[0] == 200


def _zombies_of(parent: int) -> list[int]:
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
            and _is_zombie_child(int(pid), parent)]


def _is_zombie_child(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "Z" and int(fields[1]) == parent


def test_workers_drop_to_user_when_root():
    import pathlib
    import pwd
    import shutil
    import tempfile

    from harness import Pyresty
    if os.geteuid() != 0:
        pytest.skip("needs root to change user")
    nobody = pwd.getpwnam("nobody")
    # the prefix must be readable by nobody (pytest's tmp folders are 0700)
    prefix = tempfile.mkdtemp(prefix="pyresty-user-")
    os.chmod(prefix, 0o755)
    try:
        server = Pyresty(pathlib.Path(prefix), '''
            workers = 2
            user = "nobody"
            privileged_agent = true
            [status]
            listen = "127.0.0.1:{port2}"
            [[server]]
            listen = "127.0.0.1:{port}"
            access_log = "logs/access.log"
            [[server.location]]
            path = "= /hello"
            content = "app:hello"
        ''', {"app.py": APP})
        os.chmod(os.path.join(prefix, "app.py"), 0o644)
        server.start(ready=READY)
        try:
            assert http_get(server.port, "/hello")[0] == 200
            uids: dict[str, set[int]] = {}
            for pid in server.processes():
                with open(f"/proc/{pid}/status") as f:
                    uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
                role = proc_title(pid).split(" process")[0]
                uids.setdefault(role, set()).add(uid)
            assert uids == {"pyresty: master": {0}, "pyresty: worker": {nobody.pw_uid},
                            "pyresty: privileged agent": {0}}
        finally:
            server.stop()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def test_endless_stream_cannot_pin_a_worker(make_server):
    server = make_server(config("1s"), {"app.py": APP}, ready=READY)
    stream = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stream.sendall(b"GET /chatter HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"tick" in stream.recv(4096)
    old = {p["pid"] for p in workers_of(server)}
    started = time.monotonic()
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    # the stream keeps talking until worker_shutdown_timeout, then it is cut
    received = b""
    while True:
        chunk = stream.recv(65536)
        if not chunk:
            break
        received += chunk
    cut_after = time.monotonic() - started
    assert received.count(b"tick") > 10
    assert 0.9 < cut_after < 2.0
    wait_for(lambda: not (old & set(server.processes())), 2.0 - (time.monotonic() - started) + 0.5,
             "the old workers to exit")
    assert time.monotonic() - started < 1.0 + 1.0
    stream.close()
