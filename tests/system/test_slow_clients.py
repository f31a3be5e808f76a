"""Clients that do not keep up, with the real ``pyresty`` (issue 17, items 2 and 4):
a client that reads nothing of a large static file costs the worker no copy of
the file, and a slowloris crowd expiring together is closed in batches while
other clients are served.
"""
from __future__ import annotations

import os
import socket

import pytest

from harness import http_get, proc_title, wait_for

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024

CONFIG = '''
workers = 1
[[server]]
listen = "127.0.0.1:{port}"
client_header_timeout = "1s"
[[server.location]]
path = "/static/"
root = "public"
[[server.location]]
path = "= /hello"
content = "app:hello"
'''

APP = '''
async def hello(r):
    await r.say("hello")
'''


def worker_rss_kib(server) -> int:
    pid = wait_for(lambda: next((p for p in server.processes()
                                 if "worker process #0" in proc_title(p)), None), 10, "the worker")
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_clients_that_read_nothing_of_a_large_file_cost_no_copy_of_it(make_server):
    server = make_server(CONFIG, {"app.py": APP, "public/static/big.bin": "x" * (10 * MIB)})
    assert http_get(server.port, "/static/big.bin")[0] == 200        # warm up the path
    before = worker_rss_kib(server)
    clients = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(sock)
    try:
        # every one got its head and as much body as the kernel buffers hold
        for sock in clients:
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
        assert http_get(server.port, "/hello")[2] == b"hello\n"      # the worker is not stuck
        grown = worker_rss_kib(server) - before
        assert grown < 50 * 32, f"50 slow readers grew the worker by {grown} KiB"
    finally:
        for sock in clients:
            sock.close()


def test_a_slowloris_crowd_expires_and_the_worker_serves_throughout(make_server):
    server = make_server(CONFIG, {"app.py": APP})
    crowd = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /hello HTTP/1.1\r\n")                     # a head that never ends
        crowd.append(sock)
    try:
        answers = [sock.recv(65536) for sock in crowd]                 # the 408 (or the close)
        assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers)
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= 290
        assert http_get(server.port, "/hello")[2] == b"hello\n"
    finally:
        for sock in crowd:
            sock.close()
