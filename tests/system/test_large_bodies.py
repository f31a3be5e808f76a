"""Large request bodies with the real ``pyresty``: spooled to a file past
``client_body_buffer_size`` (memory stays bounded), streamed with
``body_chunks()``, and an early 413 that a client sending everything first
still sees (lingering close). Issue 17, item 3.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from client import Connection, parse_responses
from harness import proc_title, wait_for

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
UPLOAD = 100 * MIB

CONFIG = '''
workers = 1
[[server]]
listen = "127.0.0.1:{port}"
client_max_body_size = 0
[[server.location]]
path = "= /spool"
content = "app:spool"
[[server.location]]
path = "= /stream"
content = "app:stream"
[[server.location]]
path = "= /small"
content = "app:small"
[[server.location]]
path = "= /limited"
client_max_body_size = "1m"
content = "app:small"
'''

APP = '''
import hashlib, os

async def spool(r):
    path = await r.spool_body()
    r.ctx["path"] = path
    await r.say(os.path.getsize(path), " ", path)

async def stream(r):
    digest = hashlib.sha256()
    async for chunk in r.body_chunks():
        digest.update(chunk)
    await r.say(digest.hexdigest(), " ", r.body_size, " ", r.body_file)

async def small(r):
    body = await r.read_body()
    await r.say(len(body), " ", r.body_file)
'''

PIECE = os.urandom(MIB)


def worker_pid(server) -> int:
    return wait_for(lambda: next((p for p in server.processes()
                                  if "worker process #0" in proc_title(p)), None), 10, "the worker")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def upload(port: int, path: str, size: int) -> tuple[bytes, str]:
    """POST ``size`` bytes (PIECE repeated); (response bytes, sha256 of what was sent)."""
    digest = hashlib.sha256()
    with Connection(port, timeout=60) as conn:
        conn.send(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                  f"Connection: close\r\n\r\n".encode())
        sent = 0
        while sent < size:
            piece = PIECE[:min(MIB, size - sent)]
            conn.sock.sendall(piece)
            digest.update(piece)
            sent += len(piece)
        return conn.read_until_close(60), digest.hexdigest()


def peak_growth_kib(pid: int, action) -> tuple[int, object]:
    """What ``action`` adds to the worker's peak RSS (VmHWM, reset first)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")                                     # resets VmHWM to the current RSS
    before = rss_kib(pid)
    result = action()
    return rss_kib(pid, "VmHWM") - before, result


@pytest.mark.parametrize("path", ["/spool", "/stream"])
def test_a_100_mib_upload_costs_a_file_not_memory(make_server, path):
    server = make_server(CONFIG, {"app.py": APP})
    pid = worker_pid(server)
    upload(server.port, "/small", MIB)                   # warm up the request path
    growth, (reply, sha) = peak_growth_kib(pid, lambda: upload(server.port, path, UPLOAD))
    response = parse_responses(reply)[0]
    assert response.status == 200, reply[:300]
    words = response.body.decode().split()
    if path == "/spool":
        assert words[0] == str(UPLOAD)
        assert words[1].startswith(str(server.prefix / "client_body_temp"))
        wait_for(lambda: not os.path.exists(words[1]), 5, "the spool file to be removed")
    else:
        # streamed as it came: from memory, or from the spool file when more than
        # client_body_buffer_size had arrived before the handler began to iterate
        assert words[:2] == [sha, str(UPLOAD)]
    assert growth <= 2 * 1024, f"peak RSS grew by {growth} KiB for a 100 MiB body"
    assert os.listdir(server.prefix / "client_body_temp") == [] if path == "/spool" else True


def test_a_body_over_the_buffer_is_spooled_and_read_body_still_returns_it(make_server):
    server = make_server(CONFIG, {"app.py": APP})
    reply, _ = upload(server.port, "/small", 64 * 1024)
    words = parse_responses(reply)[0].body.decode().split()
    assert words[0] == str(64 * 1024) and "client_body_temp" in words[1]
    reply, _ = upload(server.port, "/small", 1000)
    assert parse_responses(reply)[0].body == b"1000 None\n"


def test_an_early_413_is_seen_by_a_client_that_sends_everything_first(make_server):
    """Content-Length says 100 MiB where 1 MiB is allowed: the 413 goes out at
    once, and the server reads and drops the body instead of resetting the
    connection (which would destroy the 413 in the client's buffer)."""
    server = make_server(CONFIG, {"app.py": APP})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST /limited HTTP/1.1\r\nHost: x\r\nContent-Length: {UPLOAD}\r\n\r\n"
                     .encode())
        for _ in range(UPLOAD // MIB):
            sock.sendall(PIECE)                          # a reset would raise here
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    response = parse_responses(data)[0]
    assert response.status == 413
    server.wait_log(r"\[info\] .*request body too large")
