"""pyresty.socket against real peers the tests start (SPEC §8, issue 12 item 8; seed 001)."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import client
from harness import wait_for
from upstreams import RawUpstream

pytestmark = pytest.mark.timeout(90)

READY = r"\[notice\] .*generation (\d+) ready"


@pytest.fixture
def peer():
    started: list[RawUpstream] = []

    def build(handle):
        server = RawUpstream(handle)
        started.append(server)
        return server

    yield build
    for server in started:
        server.close()


async def _echo_lines(reader, writer, index):
    while True:
        line = await reader.readline()
        if not line:
            return
        writer.write(b"echo " + line)
        await writer.drain()


APP = '''
import json
import pyresty

async def talk(r):
    port = int(r.args["port"][0])
    sock = await pyresty.socket.connect("127.0.0.1", port, timeout=2, pool="p")
    reused = sock.reused_times()
    await sock.send("hello\\r\\n")
    line = await sock.receive_line()
    await sock.send(b"ab|cd\\n")
    part = await sock.receive_until(b"|")
    rest = await sock.receive(2)
    tail = await sock.receive_line()
    await sock.set_keepalive(timeout=10, pool_size=2)
    await r.print(json.dumps({"line": line.decode(), "part": part.decode(),
                              "rest": rest.decode(), "tail": tail.decode(), "reused": reused}))

async def unread(r):
    port = int(r.args["port"][0])
    sock = await pyresty.socket.connect("127.0.0.1", port, timeout=2)
    await sock.send("x\\n")
    await sock.receive(3)
    try:
        await sock.set_keepalive()
    except pyresty.SocketError as exc:
        await r.print("refused: ", exc)

async def leak(r):
    port = int(r.args["port"][0])
    sock = await pyresty.socket.connect("127.0.0.1", port, timeout=2)
    await sock.send("x\\n")
    await r.print("left open")

async def timeout(r):
    port = int(r.args["port"][0])
    sock = await pyresty.socket.connect("127.0.0.1", port, timeout=0.2)
    try:
        await sock.receive(10)
    except pyresty.SocketTimeout as exc:
        await r.print("timeout: ", exc)

async def refused(r):
    try:
        await pyresty.socket.connect("127.0.0.1", int(r.args["port"][0]), timeout=2)
    except pyresty.SocketError as exc:
        await r.print("error: ", exc)
'''


def test_cosocket_api_and_pool(make_server, peer):
    up = peer(_echo_lines)
    server = make_server('''
        workers = 0
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "/talk"
        content = "app:talk"
        [[server.location]]
        path = "/unread"
        content = "app:unread"
        [[server.location]]
        path = "/leak"
        content = "app:leak"
        [[server.location]]
        path = "/timeout"
        content = "app:timeout"
        [[server.location]]
        path = "/refused"
        content = "app:refused"
    ''', {"app.py": APP})
    first = json.loads(client.request(server.port, "GET", f"/talk?port={up.port}").body)
    assert first == {"line": "echo hello", "part": "echo ab", "rest": "cd", "tail": "",
                     "reused": 0}
    second = json.loads(client.request(server.port, "GET", f"/talk?port={up.port}").body)
    assert second["reused"] == 1
    assert up.connections == 1

    body = client.request(server.port, "GET", f"/unread?port={up.port}").body
    assert body.startswith(b"refused: set_keepalive: ")

    before = up.connections
    assert client.request(server.port, "GET", f"/leak?port={up.port}").body == b"left open"
    # the peer accepts on its own thread: wait until it saw the connection, then
    # for its EOF (the request's task ended, so its socket was closed)
    wait_for(lambda: up.connections == before + 1, 5, "the peer to accept the connection")
    wait_for(lambda: up.open_count() <= 1, 5, "the leaked socket to be closed")

    silent = peer(_silent)
    assert client.request(server.port, "GET", f"/timeout?port={silent.port}").body.startswith(
        b"timeout: receive(10) timed out")
    silent.close()
    body = client.request(server.port, "GET", f"/refused?port={silent.port}").body
    assert body.startswith(b"error: connect to 127.0.0.1:")


async def _silent(reader, writer, index):
    await reader.read()


SEED001 = '''
import pyresty, logging
log = logging.getLogger("seed001")

async def park(premature, port):
    # lua-nginx-module #1279: a premature timer connects a cosocket and parks it
    sock = await pyresty.socket.connect("127.0.0.1", port, timeout=5)
    await sock.set_keepalive(timeout=60)
    log.warning("parked premature=%s", premature)

def start():
    if pyresty.worker.id() == 0:
        pyresty.timer.at(100, park, PORT)
'''


def test_seed001_premature_timer_parking_a_cosocket_does_not_delay_exit(make_server, peer):
    up = peer(_silent)
    server = make_server('''
        workers = 1
        worker_shutdown_timeout = "20s"
        [hooks]
        init_worker = "jobs:start"
        [status]
        listen = "127.0.0.1:{port2}"
        [[server]]
        listen = "127.0.0.1:{port}"
    ''', {"jobs.py": SEED001.replace("PORT", str(up.port))}, ready=READY)
    body = client.request(server.ports[1], "GET", "/status").body
    old = [p["pid"] for p in json.loads(body)["processes"] if p["role"] != "master"]
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready", timeout=15)
    ready = time.monotonic()
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), 5,
             "the old worker to exit", interval=0.01)
    assert time.monotonic() - ready < 1.0       # worker_shutdown_timeout is 20 s
    server.wait_log(r"parked premature=True")
    wait_for(lambda: up.open_count() == 0, 5, "the parked socket to be closed")
