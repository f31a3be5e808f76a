"""``worker_spare``: a booted spare replaces a worker that dies (issue 17 item 8).

The spare imports the code but runs nothing of it (no timer, no init_worker)
until the master promotes it; it is replaced once the promoted one serves; it
belongs to its generation (a reload or quit leaves no spare behind, seed 001);
a spare that cannot load is retried, never in a loop. Real servers, real
SIGKILLs, real clients; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from harness import http_get, proc_title, wait_for

# At import: a file saying which process imported it, and a timer due at once.
# init_worker writes its own file. A spare must write only the first.
APP = '''
import os
from pathlib import Path
import pyresty

if Path("broken").exists():
    raise RuntimeError("broken on purpose")
Path(f"imported-{os.getpid()}").touch()

async def _timer_ran(premature):
    Path(f"timer-{os.getpid()}").touch()

try:
    pyresty.timer.at(0, _timer_ran)
except RuntimeError:    # the -t / -s reload check imports this outside any event loop
    pass

async def init(*_):
    Path(f"init-{os.getpid()}").touch()

async def hello(r):
    await r.say(os.getpid(), " ", pyresty.worker.id())
'''

READY = r"\[notice\] .*generation (\d+) ready"
SPARE_READY = r"(\d+)#-: spare ready \(generation {gen}\)"


def _config(workers: int = 1, spare: bool = True) -> str:
    return f'''
workers = {workers}
worker_shutdown_timeout = "3s"
worker_spare = {"true" if spare else "false"}

[hooks]
init_worker = "app:init"

[status]
listen = "127.0.0.1:{{port2}}"

[[server]]
listen = "127.0.0.1:{{port}}"

[[server.location]]
path = "= /hello"
content = "app:hello"
'''


def _spare(server, generation: int = 1, count: int = 1, since: int = 0) -> int:
    """The pid of the spare that reported ready (the ``count``-th since ``since``)."""
    return int(server.wait_log(SPARE_READY.format(gen=generation), count=count, since=since,
                               timeout=15))


def _rows(server) -> list[dict]:
    return json.loads(http_get(server.ports[1], "/status")[2])["processes"]


def _answer(port: int) -> tuple[int, int]:
    """(pid, worker id) of the worker that answered."""
    status, _, body = http_get(port, "/hello", timeout=5)
    assert status == 200
    pid, worker = body.split()
    return int(pid), int(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_a_spare_runs_no_timer_and_no_init_worker_until_it_is_promoted(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY)
    spare = _spare(server)
    worker, worker_id = _answer(server.port)
    assert worker_id == 0 and worker != spare
    files = server.prefix
    # the worker ran its import-time timer and init_worker; the spare only imported
    wait_for(lambda: (files / f"timer-{worker}").exists(), 5, "the worker's timer")
    assert (files / f"init-{worker}").exists() and (files / f"imported-{spare}").exists()
    # Nothing to wait for here: the spare must NOT do something. Its timer was
    # due at once (the worker's ran within milliseconds), so give it a while.
    time.sleep(0.3)
    assert not (files / f"timer-{spare}").exists()
    assert not (files / f"init-{spare}").exists()
    assert proc_title(spare) == "pyresty: spare process"
    # seen as a spare, counted as no worker
    rows = {row["pid"]: row for row in _rows(server)}
    assert rows[spare]["role"] == "spare" and rows[spare]["state"] == "spare"
    assert rows[spare]["id"] is None
    metrics = http_get(server.ports[1], "/metrics")[2].decode()
    assert re.search(r'pyresty_workers\{generation="1",state="serving"\} 1\.0', metrics)
    assert "spare" not in "".join(line for line in metrics.splitlines()
                                  if line.startswith("pyresty_workers"))
    assert re.search(r'pyresty_process_resident_bytes\{generation="1",role="spare",worker="-"\}',
                     metrics)
    table = server.cli("status").stdout
    assert re.search(rf"spare\s+-\s+{spare}\s+1\s+spare", table), table

    since = len(server.log_text())
    os.kill(worker, signal.SIGKILL)
    # the spare becomes worker #0: now it runs the timer and init_worker
    assert wait_for(lambda: _answer(server.port) == (spare, 0), 5, "the promoted spare")
    wait_for(lambda: (files / f"timer-{spare}").exists(), 5, "the promoted spare's timer")
    assert (files / f"init-{spare}").exists()
    server.wait_log(rf"spare \(pid {spare}, generation 1\) promoted to worker #0", since=since)
    assert proc_title(spare) == "pyresty: worker process #0"
    # ... and a new spare takes its place, which again runs nothing
    second = _spare(server, since=since)
    assert second not in (spare, worker)
    time.sleep(0.3)    # as above: a timer that must not fire
    assert not (files / f"timer-{second}").exists() and not (files / f"init-{second}").exists()
    assert sorted(row["role"] for row in _rows(server)) == ["master", "spare", "worker"]


@pytest.mark.timeout(60)
def test_sigkill_under_load_fails_only_the_killed_workers_requests(make_server):
    server = make_server(_config(workers=2), {"app.py": APP}, ready=READY)
    spare = _spare(server)
    stop = threading.Event()
    results: list[list[tuple[float, int | None]]] = [[] for _ in range(4)]

    def client(out: list[tuple[float, int | None]]) -> None:
        while not stop.is_set():
            try:
                out.append((time.monotonic(), _answer(server.port)[0]))
            except (OSError, AssertionError, ValueError):
                out.append((time.monotonic(), None))

    threads = [threading.Thread(target=client, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(out) > 20 for out in results), 10, "load")
        victim = next(row["pid"] for row in _rows(server) if row["role"] == "worker"
                      and row["id"] == 0)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(pid == spare for out in results for _, pid in out), 10,
                 "an answer from the promoted spare")
        count = sum(map(len, results))
        wait_for(lambda: sum(map(len, results)) > count + 100, 10, "more answers")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    failed = [(when, i) for i, out in enumerate(results) for when, pid in out if pid is None]
    # a client can lose at most the one request the killed worker had accepted
    assert all(when >= killed for when, _ in failed), failed
    assert len(failed) <= len(results), failed
    assert all(sum(1 for _, i in failed if i == n) <= 1 for n in range(len(results))), failed
    rows = _rows(server)
    assert {(row["role"], row["id"]) for row in rows if row["role"] != "master"} >= {
        ("worker", 0), ("worker", 1)}
    assert next(row["pid"] for row in rows if row["role"] == "worker" and row["id"] == 0) == spare
    wait_for(lambda: any(row["role"] == "spare" and row["state"] == "spare"
                         for row in _rows(server)), 10, "a new spare")


@pytest.mark.timeout(60)
def test_reload_and_quit_leave_no_spare_of_an_old_generation(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY)
    first = _spare(server)
    since = len(server.log_text())
    result = server.cli("-s", "reload")
    assert result.returncode == 0, result.stderr
    server.wait_log(r"generation 2 ready", since=since)
    second = _spare(server, generation=2, since=since)
    wait_for(lambda: not _alive(first), 5, "the generation 1 spare to exit")
    server.wait_log(rf"spare \(pid {first}, generation 1\) exited with code 0", since=since)
    wait_for(lambda: all(row["generation"] == 2 for row in _rows(server)
                         if row["role"] != "master"), 10, "generation 1 gone")
    assert sorted(row["role"] for row in _rows(server)) == ["master", "spare", "worker"]
    # a reload that turns it off leaves none
    since = len(server.log_text())
    server.write_config(_config(spare=False))
    assert server.cli("-s", "reload").returncode == 0
    server.wait_log(r"generation 3 ready", since=since)
    wait_for(lambda: not _alive(second), 5, "the generation 2 spare to exit")
    wait_for(lambda: sorted(row["role"] for row in _rows(server)) == ["master", "worker"], 10,
             "generation 2 gone, no spare")
    # and one that turns it on again, then quit: nothing survives (stop() checks)
    since = len(server.log_text())
    server.write_config(_config())
    assert server.cli("-s", "reload").returncode == 0
    third = _spare(server, generation=4, since=since)
    assert server.stop(signal.SIGQUIT) == 0
    assert not _alive(third)
    assert "spare (pid %d, generation 4) exited with code 0" % third in server.log_text()


@pytest.mark.timeout(60)
def test_a_spare_that_cannot_load_is_retried_later_not_in_a_loop(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY,
                         expect_log=(r"broken on purpose",))
    first = _spare(server)
    (server.prefix / "broken").touch()         # the code on disk breaks after the start
    since = len(server.log_text())
    os.kill(first, signal.SIGKILL)             # its replacement cannot import it
    server.wait_log(r"spare \(pid \d+, generation 1\) failed to start; trying again in 5 s",
                    since=since)
    assert _answer(server.port)[1] == 0        # the worker serves on
    log = server.log_text()[since:]
    assert len(re.findall(r"started spare", log)) == 1, log    # one try, then the back-off
    (server.prefix / "broken").unlink()
    _spare(server, since=since, count=1)       # the next try, RESPAWN_BACKOFF later, loads


@pytest.mark.timeout(60)
def test_a_spare_goes_with_its_master(make_server):
    server = make_server(_config(), {"app.py": APP}, ready=READY)
    spare = _spare(server)
    os.kill(server.pid, signal.SIGKILL)        # its channel closes: nothing to wait for
    wait_for(lambda: not _alive(spare), 10, "the spare to exit")
    assert f"{spare}#-: spare retired" in server.log_text()
    assert not (server.prefix / f"init-{spare}").exists()
