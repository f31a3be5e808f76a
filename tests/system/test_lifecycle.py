"""Background work against real worker processes: the seed incidents as tests."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from harness import http_get, proc_title, wait_for

pytestmark = pytest.mark.timeout(120)

READY = r"\[notice\] .*generation (\d+) ready"

SEED000 = '''
import asyncio, logging
import pyresty

log = logging.getLogger("pyresty.app")

async def sync_job(premature, n):
    if premature:
        log.warning("job %d premature", n)
        return
    await asyncio.sleep(60)          # a long poll to an upstream, as in the incident
    pyresty.timer.at(0, sync_job, n)  # re-arm with delay 0: the seed-000 trap

def start():
    if pyresty.worker.id() == 0:
        for n in range(3):
            pyresty.timer.at(0, sync_job, n)
'''


def _workers(server) -> list[dict]:
    code, _, body = http_get(server.ports[1], "/status")
    assert code == 200
    return [p for p in json.loads(body)["processes"] if p["role"] != "master"]


def test_seed000_delay0_rearming_timers_cannot_pin_old_workers(make_server):
    server = make_server('''
        workers = 2
        worker_shutdown_timeout = "1s"
        [hooks]
        init_worker = "jobs:start"
        [status]
        listen = "127.0.0.1:{port2}"
        [[server]]
        listen = "127.0.0.1:{port}"
    ''', {"jobs.py": SEED000}, ready=READY)
    for generation in range(2, 7):
        old = [p["pid"] for p in _workers(server)]
        hup_at = time.monotonic()
        server.signal(signal.SIGHUP)
        server.wait_log(rf"generation {generation} ready", timeout=15)
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), 5,
                 "old workers to exit")
        assert time.monotonic() - hup_at < 1.0 + 1.0 + 1.0  # ready + timeout + 1 s
    wait_for(lambda: len(server.processes()) == 3, 5, "exactly master + 2 workers")
    titles = sorted(proc_title(p) for p in server.processes())
    assert titles[1:] == ["pyresty: worker process #0", "pyresty: worker process #1"]
    # every generation's three timers ended in a premature run or a cancel
    assert not re.search(r"still running .* killing it", server.log_text())


HOOKS = '''
import asyncio, logging, os
import pyresty

log = logging.getLogger("pyresty.app")

def start():
    log.warning("init_worker type=%s id=%s count=%s pid=%s",
                pyresty.process.type(), pyresty.worker.id(), pyresty.worker.count(),
                pyresty.worker.pid() == os.getpid())
    if pyresty.process.type() == "privileged agent":
        pyresty.timer.every(0.05, tick, once=True)

async def tick(premature):
    log.warning("once-tick premature=%s in %s", premature, pyresty.process.type())

async def stop():
    log.warning("exit_worker in %s exiting=%s", pyresty.process.type(), pyresty.worker.exiting())

async def reload_from_agent(r):
    pyresty.process.signal_master("reload")
    await r.say("asked")

async def spawn_sleeper(r):
    proc = await pyresty.pipe.spawn(["sleep", "3600"])
    await r.say(proc.pid)
    await r.flush()
    await proc.wait()
'''

AGENT_CONFIG = '''
workers = 2
privileged_agent = true
worker_shutdown_timeout = "1s"
[hooks]
init_worker = "hooks:start"
exit_worker = "hooks:stop"
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /reload"
content = "hooks:reload_from_agent"
[[server.location]]
path = "= /spawn"
content = "hooks:spawn_sleeper"
'''


def test_agent_hooks_worker_api_and_once(make_server):
    server = make_server(AGENT_CONFIG, {"hooks.py": HOOKS}, ready=READY)
    text = server.wait_log(r"once-tick premature=False in privileged agent")
    text = server.log_text()
    assert "init_worker type=worker id=0 count=2 pid=True" in text
    assert "init_worker type=worker id=1 count=2 pid=True" in text
    assert "init_worker type=privileged agent id=None count=2 pid=True" in text
    assert "once-tick premature=False in worker" not in text
    titles = sorted(proc_title(p) for p in server.processes())
    assert "pyresty: privileged agent process" in titles
    # a worker (any process) may ask the master to reload
    assert http_get(server.port, "/reload")[0] == 200
    server.wait_log(r"generation 2 ready")
    server.wait_log(r"once-tick premature=True in privileged agent")
    server.wait_log(r"exit_worker in privileged agent exiting=True")
    server.wait_log(r"exit_worker in worker exiting=True", count=2)


def test_pipe_children_killed_at_shutdown_timeout(make_server):
    server = make_server(AGENT_CONFIG, {"hooks.py": HOOKS}, ready=READY)
    import socket
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn.sendall(b"GET /spawn HTTP/1.1\r\nHost: x\r\n\r\n")
    head = conn.recv(4096)
    child = int(head.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1])
    assert os.path.exists(f"/proc/{child}")
    started = time.monotonic()
    server.signal(signal.SIGQUIT)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 1.0 + 1.0
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or
             open(f"/proc/{child}/stat").read().split()[2] == "Z", 3, "the sleeper to be killed")
    conn.close()


def test_worker_id_stable_across_respawn(make_server):
    server = make_server(AGENT_CONFIG, {"hooks.py": HOOKS}, ready=READY)
    worker1 = next(p for p in _workers(server) if p["id"] == 1)
    os.kill(worker1["pid"], signal.SIGKILL)
    wait_for(lambda: [p for p in _workers(server) if p["id"] == 1 and p["pid"] != worker1["pid"]
                      and p["state"] == "serving"], 5, "respawned worker #1")
    server.wait_log(r"init_worker type=worker id=1", count=2)


def test_init_worker_failure_is_a_boot_failure(make_server):
    server = make_server('''
        workers = 2
        [hooks]
        init_worker = "boom:start"
        [[server]]
        listen = "127.0.0.1:{port}"
    ''', {"boom.py": "def start():\n    raise RuntimeError('no database')\n"}, start=False,
        expect_log=(r"init_worker hook boom:start failed", r"failed to start"))
    import subprocess

    from harness import PYRESTY
    server.proc = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
    assert server.proc.wait(20) == 1
    text = server.log_text()
    assert "init_worker hook boom:start failed: RuntimeError: no database" in text
    assert "failed to start; stopping" in text
    assert text.count("started worker") <= 2   # no respawn loop


WALK = '''
import logging, os
import pyresty

log = logging.getLogger("pyresty.app")
kept = []   # a dropped Proc kills its child at once (pipe rule 7): keep it, as a cache would

def start():
    pyresty.timer.at(3600, last_word)

async def last_word(premature):
    log.warning("last word premature=%s from %d", premature, os.getpid())

async def detach(r):
    proc = await pyresty.pipe.spawn(["sleep", "3600"])
    kept.append(proc)
    await r.say(proc.pid, " ", os.getpid())
'''


def test_reload_walks_the_registry_within_its_bounds(make_server):
    """SPEC §4 as a walk over the lifecycle registry: on reload the old worker
    fires its hour-long timer premature and kills the child a finished request
    left behind (pipes registered at that first spawn), then exits, all within
    worker_shutdown_timeout + 1 s of the new generation being ready."""
    server = make_server('''
        workers = 1
        worker_shutdown_timeout = "1s"
        [hooks]
        init_worker = "walk:start"
        [[server]]
        listen = "127.0.0.1:{port}"
        access_log = "logs/access.log"
        [[server.location]]
        path = "= /detach"
        content = "walk:detach"
    ''', {"walk.py": WALK}, ready=READY)
    code, _, body = http_get(server.port, "/detach")
    assert code == 200
    child, worker = (int(n) for n in body.split())
    assert os.path.exists(f"/proc/{child}")
    hup_at = time.monotonic()
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready", timeout=15)
    server.wait_log(rf"last word premature=True from {worker}")
    wait_for(lambda: not os.path.exists(f"/proc/{worker}"), 5, "the old worker to exit")
    assert time.monotonic() - hup_at < 1.0 + 1.0 + 1.0   # ready + timeout + 1 s
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or
             open(f"/proc/{child}/stat").read().split()[2] == "Z", 3, "the child to be killed")
    assert re.search(r"gracefully shutting down \(http server, timers, child processes, pipes, access logs\)",
                     server.log_text())
