"""Clients that do not keep up, with the real ``pyresty`` (issue 17, items 2 and 4):
a client that reads nothing of a large static file costs the worker no copy of
the file, and a slowloris crowd expiring together is closed in batches while
other clients are served.
"""
from __future__ import annotations

import os
import socket

import pytest

from harness import http_get, proc_title, raw_exchange, wait_for

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


def read_response(sock: socket.socket, count: int = 1) -> bytes:
    """``count`` answers of /hello or /echo (each ends its body with a newline)."""
    data = b""
    while data.count(b"HTTP/1.1 200") < count or not data.endswith(b"\n"):
        piece = sock.recv(65536)
        assert piece, f"closed after {data!r}"
        data += piece
    return data


ECHO = '''
async def hello(r):
    await r.say("hello")

async def echo(r):
    body = await r.read_body()
    await r.say(len(body), ":", body.decode())
'''


def test_idle_connections_above_the_parser_pool_serve_their_next_requests(make_server):
    # More idle connections than the worker keeps parsers for (connection.py
    # PARSER_POOL, 256): each gave its parser back when it went idle and takes
    # one again with its next bytes, whole, in pieces or pipelined.
    server = make_server(CONFIG + '[[server.location]]\npath = "= /echo"\ncontent = "app:echo"\n',
                         {"app.py": ECHO})
    crowd = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).endswith(b"hello\n")
            crowd.append(sock)
        # a connection whose last request closed it leaves no broken parser behind
        for _ in range(20):
            assert raw_exchange(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n").endswith(b"hello\n")
        for sock in crowd[:20]:
            for byte in b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n":   # one byte per send
                sock.send(bytes([byte]))
            assert read_response(sock).endswith(b"hello\n")
        for sock in crowd[20:40]:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                         b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nde\r\n0\r\n\r\n")
            answers = read_response(sock, 3)
            assert answers.count(b"HTTP/1.1 200") == 3
            assert answers.endswith(b"2:de\n") and b"3:abc\n" in answers and b"hello\n" in answers
        for sock in crowd:      # and once more each, all of them
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in crowd:
            assert read_response(sock).endswith(b"hello\n")
    finally:
        for sock in crowd:
            sock.close()
