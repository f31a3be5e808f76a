"""Shared dicts in real pyresty servers: exact counts, reloads, metrics, run-once leases."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from harness import Pyresty, http_get, wait_for

pytestmark = pytest.mark.timeout(120)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import pyresty

async def incr(r):
    await r.say(await pyresty.shared["cache"].incr("hits", 1, init=0))

async def put(r):
    await pyresty.shared["cache"].set(r.args["k"][0], r.args["v"][0])
    await r.say("ok")

async def get(r):
    await r.say(await pyresty.shared["cache"].get(r.args["k"][0]))
'''

CONFIG = '''
workers = 2
[shared]
cache = "{size}"
[status]
listen = "127.0.0.1:{port2}"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /incr"
content = "app:incr"
[[server.location]]
path = "= /put"
content = "app:put"
[[server.location]]
path = "= /get"
content = "app:get"
'''


def test_counts_are_exact_across_workers_and_survive_reloads(make_server):
    server = make_server(CONFIG.replace("{size}", "1m"), {"app.py": APP}, ready=READY)
    errors = []

    def client() -> None:
        for _ in range(100):
            if http_get(server.port, "/incr")[0] != 200:
                errors.append(1)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert http_get(server.port, "/put?k=greeting&v=hi")[2] == b"ok\n"
    # a reload that also changes the dict's size keeps the data
    server.write_config(CONFIG.replace("{size}", "2m"))
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    assert http_get(server.port, "/get?k=greeting")[2] == b"hi\n"
    assert http_get(server.port, "/incr")[2] == b"401\n"
    code, _, metrics = http_get(server.ports[1], "/metrics")
    assert b'pyresty_shared_dict_capacity_bytes{dict="cache"}' in metrics
    assert b'pyresty_shared_dict_keys{dict="cache"} 2.0' in metrics or \
        wait_for(lambda: b'pyresty_shared_dict_keys{dict="cache"} 2.0'
                 in http_get(server.ports[1], "/metrics")[2], 5, "shared dict metrics")


def test_a_restart_begins_empty(make_server):
    server = make_server(CONFIG.replace("{size}", "1m"), {"app.py": APP}, ready=READY)
    http_get(server.port, "/put?k=a&v=1")
    server.stop(signal.SIGQUIT)
    server.start(ready=READY)
    assert http_get(server.port, "/get?k=a")[2] == b"None\n"



@pytest.mark.parametrize("workers", [2, 0])
def test_a_stopped_server_leaves_nothing_in_dev_shm(make_server, workers):
    from pyresty.runtime.shared import base_dir_for
    config = CONFIG.replace("{size}", "1m").replace("workers = 2", f"workers = {workers}")
    ready = READY if workers else r"\[notice\] .*ready"
    server = make_server(config, {"app.py": APP}, ready=ready)
    assert http_get(server.port, "/put?k=a&v=1")[2] == b"ok\n"
    store = base_dir_for(str(server.prefix))
    assert os.path.isdir(store) and os.listdir(store)
    assert server.stop(signal.SIGQUIT) == 0
    assert not os.path.exists(store)


ONCE = '''
import logging, os
import pyresty

log = logging.getLogger("pyresty.app")
TAG = os.environ.get("SERVER_TAG") or open(os.path.join(os.path.dirname(__file__), "tag")).read()

async def job(premature):
    if premature:
        return
    await pyresty.shared["locks"].rpush("runs", f"{TAG}:{os.getpid()}")

def start():
    pyresty.timer.every(0.1, job, once="locks")
'''

RUNS = "pyresty:locks:v:runs"   # the redis backend keeps dict "locks" key "runs" here

ONCE_CONFIG = '''
workers = 2
worker_shutdown_timeout = "1s"
[hooks]
init_worker = "once:start"
[shared]
locks = {{ backend = "{redis}" }}
[[server]]
listen = "127.0.0.1:{port}"
'''


def _runs(client) -> list[str]:
    # list items are stored with a one-byte type tag ("s" for str) before the value
    return [v[1:].decode() for v in client.lrange(RUNS, 0, -1)]


def test_once_lease_runs_one_process_across_two_servers(tmp_path, redis_url):
    import redis as redis_client

    client = redis_client.Redis.from_url(redis_url)
    client.delete(RUNS)
    servers = []
    for tag in ("A", "B"):
        prefix = tmp_path / tag
        prefix.mkdir()
        (prefix / "tag").write_text(tag)
        server = Pyresty(prefix, ONCE_CONFIG.replace("{redis}", redis_url), {"once.py": ONCE})
        servers.append(server.start(ready=READY))
    try:
        wait_for(lambda: client.llen(RUNS) >= 20, 15, "20 runs of the job")
        runs = _runs(client)
        holder = runs[0]
        assert set(runs) == {holder}, runs          # one process of one server ran it
        # the holder stops: the other server takes over within one lease TTL (1 s)
        stopped = servers[0] if holder.startswith("A") else servers[1]
        other = "B" if holder.startswith("A") else "A"
        stopped.stop(signal.SIGQUIT)
        start = time.monotonic()
        wait_for(lambda: any(v.startswith(other) for v in _runs(client)), 10, "the takeover")
        assert time.monotonic() - start < 3.0
    finally:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.stop(signal.SIGQUIT)
        client.close()
