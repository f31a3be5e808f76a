"""proxy_pass against real upstream servers the tests start (SPEC §8, issue 12)."""
from __future__ import annotations

import asyncio
import re
import signal
import socket
import time

import pytest

import client
from harness import free_port, wait_for
from upstreams import CLOSE, RawUpstream, Upstream, response

pytestmark = pytest.mark.timeout(90)


MODES = {"compiled": None, "interpreted": {"PYRESTY_PURE_PYTHON": "1"}}


@pytest.fixture(params=sorted(MODES))
def mode_env(request):
    """The request path compiled and interpreted (README, Building)."""
    return MODES[request.param]


@pytest.fixture
def upstream():
    started: list = []

    def build(behave=None, raw=None):
        server = RawUpstream(raw) if raw is not None else Upstream(behave)
        started.append(server)
        return server

    yield build
    for server in started:
        server.close()


def _config(body: str, workers: int = 0) -> str:
    return f'''
        workers = {workers}
        worker_shutdown_timeout = "2s"
        {body}
    '''


def _proxied(target: str, *lines: str) -> str:
    """One server whose location ``/`` proxies to ``target``, plus ``lines``
    (more settings of that location)."""
    location = "".join(f"        {line}\n" for line in lines)
    return _config(f'''
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "{target}"
{location}    ''')


def test_proxy_pass_forwards_request_and_response(make_server, upstream, mode_env):
    up = upstream(lambda req: response(201, b"made " + req.body,
                                       {"X-Up": "1", "Server": "up", "Keep-Alive": "timeout=5"}))
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["{up.addr}"]
        [[server]]
        listen = "127.0.0.1:{{port}}"
        access_log = "logs/access.log"
        [[server.location]]
        path = "/api/"
        proxy_pass = "http://backend"
        proxy_set_header = {{{{ X-Debug = "yes", User-Agent = "" }}}}
    '''), env=mode_env)
    resp = client.request(server.port, "POST", "/api/x?a=1",
                          headers={"X-Forwarded-For": "10.0.0.1", "User-Agent": "t",
                                   "Connection": "keep-alive, X-Hop", "X-Hop": "h"},
                          body=b"payload")
    assert resp.status == 201
    assert resp.body == b"made payload"
    assert resp.get("X-Up") == "1"
    assert resp.get("Keep-Alive") is None
    assert resp.get("Server").startswith("pyresty/")
    seen = up.seen[0]
    assert (seen.method, seen.target) == ("POST", "/api/x?a=1")
    assert seen.headers["host"] == "backend"
    assert seen.headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen.headers["x-real-ip"] == "127.0.0.1"
    assert seen.headers["x-forwarded-proto"] == "http"
    assert seen.headers["x-debug"] == "yes"
    assert "user-agent" not in seen.headers
    assert "x-hop" not in seen.headers
    assert "connection" not in seen.headers
    assert seen.headers["content-length"] == "7"
    line = wait_for(lambda: (server.prefix / "logs/access.log").exists()
                    and (server.prefix / "logs/access.log").read_text(), 5, "access log line")
    assert re.search(rf'"POST /api/x\?a=1 HTTP/1.1" 201 .* {up.addr} 201 \d+\.\d{{3}}$', line.strip())


def test_uri_part_replaces_the_location_prefix(make_server, upstream):
    up = upstream()
    server = make_server(_config(f'''
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/a/"
        proxy_pass = "http://{up.addr}/b/"
        [[server.location]]
        path = "/plain/"
        proxy_pass = "http://{up.addr}"
        [[server.location]]
        path = "= /exact"
        proxy_pass = "http://{up.addr}/other"
    '''))
    assert client.request(server.port, "GET", "/a/x/y?q=1").body == b"GET /b/x/y?q=1"
    assert client.request(server.port, "GET", "/plain/%41?q").body == b"GET /plain/%41?q"
    assert client.request(server.port, "GET", "/exact?z=2").body == b"GET /other?z=2"
    assert up.seen[0].headers["host"] == up.addr


def test_upstream_connections_are_kept_alive(make_server, upstream):
    up = upstream()
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["{up.addr}"]
        keepalive = 4
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
    '''))
    with client.Connection(server.port) as conn:
        for i in range(20):
            assert conn.request("GET", f"/{i}").body == f"GET /{i}".encode()
    assert up.requests == 20
    assert up.connections == 1


def test_seed004_upstream_closing_every_reused_connection_gets_502(make_server, upstream, mode_env):
    """Seed 004: the upstream answers the first request, then closes every
    connection on every later request. The second client request gets 502
    within 2 s with at most 2 new upstream connections (nothing loops)."""
    count = [0]

    async def handle(reader, writer, index):
        while True:
            data = await reader.read(1024)
            if not data:
                return
            count[0] += 1
            if count[0] == 1:
                writer.write(response(200, b"hello"))
                await writer.drain()
            else:
                return

    up = upstream(raw=handle)
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["0.0.0.1"]
        balancer = "lb:pick"
        keepalive = 1
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
        proxy_next_upstream = ["off"]
    '''), {"lb.py": f'''
        async def pick(r, b):
            b.set_current_peer("127.0.0.1", {up.port})
    '''}, env=mode_env)
    assert client.request(server.port, "GET", "/").status == 200
    assert up.connections == 1
    began = time.monotonic()
    resp = client.request(server.port, "GET", "/", timeout=5)
    assert resp.status == 502
    assert time.monotonic() - began < 2.0
    time.sleep(0.2)   # nothing else may arrive: give a loop the chance to show itself
    assert up.connections <= 2
    assert count[0] <= 3      # the first request, the reused send, one resend
    server.wait_log(r"\[error\] .*upstream prematurely closed connection")


def test_refused_upstream_is_502_and_each_peer_is_tried_once(make_server, upstream):
    dead = free_port()
    up = upstream()
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["127.0.0.1:{dead}", "{up.addr}"]
        [[server]]
        listen = "127.0.0.1:{{port}}"
        access_log = "logs/access.log"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
        [[server.location]]
        path = "/dead"
        proxy_pass = "http://127.0.0.1:{dead}"
    '''))
    assert client.request(server.port, "GET", "/dead").status == 502
    server.wait_log(r"\[error\] .*connect\(\) failed \(111: Connection refused\)")
    # the refused peer moves the request on to the live one
    for _ in range(4):
        assert client.request(server.port, "GET", "/x").status == 200


def test_read_timeout_is_504_and_retries_never_exceed_tries_plus_one(make_server, upstream):
    async def slow(req):
        await asyncio.sleep(5)
        return response()

    a = upstream(slow)
    b = upstream(slow)
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["{a.addr}", "{b.addr}"]
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
        proxy_read_timeout = "300ms"
    '''))
    began = time.monotonic()
    resp = client.request(server.port, "GET", "/", timeout=10)
    assert resp.status == 504
    assert time.monotonic() - began < 2.0
    assert a.requests + b.requests == 2     # one per peer: tries = 2
    server.wait_log(r"upstream timed out .* while reading response header from upstream")


def test_http_5xx_moves_on_only_when_listed(make_server, upstream):
    bad = upstream(lambda req: response(503, b"busy"))
    good = upstream(lambda req: response(200, b"fine"))
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["{bad.addr}", "{good.addr}"]
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/next"
        proxy_pass = "http://backend"
        proxy_next_upstream = ["error", "timeout", "http_503"]
        [[server.location]]
        path = "/pass"
        proxy_pass = "http://{bad.addr}"
        proxy_next_upstream = ["error", "http_503"]
    '''))
    for _ in range(4):
        assert client.request(server.port, "GET", "/next").body == b"fine"
    resp = client.request(server.port, "GET", "/pass")
    assert (resp.status, resp.body) == (503, b"busy")   # the last such answer goes through


def test_non_idempotent_requests_are_not_resent_to_the_next_peer(make_server, upstream):
    async def drop(reader, writer, index):
        await reader.read(65536)     # read the request, then close without answering

    a = upstream(raw=drop)
    b = upstream(raw=drop)
    server = make_server(_config(f'''
        [upstream.backend]
        servers = ["127.0.0.1:{a.port}", "127.0.0.1:{b.port}"]
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
    '''))
    assert client.request(server.port, "POST", "/", body=b"x").status == 502
    assert a.connections + b.connections == 1
    assert client.request(server.port, "GET", "/").status == 502
    assert a.connections + b.connections == 3


def test_function_balancer_tries_and_last_failure(make_server, upstream):
    up = upstream()
    dead = free_port()
    server = make_server(_config(f'''
        [upstream.dyn]
        servers = ["0.0.0.1"]
        balancer = "lb:pick"
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://dyn"
        proxy_next_upstream_tries = 3
    '''), {"lb.py": f'''
        import logging
        log = logging.getLogger("lb")
        async def pick(r, b):
            log.warning("pick tries=%s last=%s", b.tries, b.last_failure)
            if b.tries == 0:
                b.set_more_tries(5)
                b.set_current_peer("127.0.0.1", {dead})
            else:
                b.set_current_peer("127.0.0.1", {up.port})
    '''})
    resp = client.request(server.port, "GET", "/f")
    assert (resp.status, resp.body) == (200, b"GET /f")
    server.wait_log(r"pick tries=0 last=None")
    server.wait_log(r"pick tries=1 last=\('failed', 502\)")
    server.wait_log(r"set_more_tries\(5\) would allow 6 tries; capped by proxy_next_upstream_tries = 3")


def test_large_response_streams_and_filters_run(make_server, upstream, mode_env):
    big = b"x" * (3 * 1024 * 1024 + 17)
    up = upstream(lambda req: response(200, big))
    server = make_server(_proxied(f"http://{up.addr}", 'header_filter = "filters:head"',
                                  'body_filter = "filters:body"'), {"filters.py": '''
        def head(r):
            r.headers_out["X-Filtered"] = str(r.status)
        def body(r, chunk):
            return chunk.upper() + (b"!" if r.eof else b"")
    '''}, env=mode_env)
    resp = client.request(server.port, "GET", "/", timeout=30)
    assert resp.status == 200
    assert resp.get("X-Filtered") == "200"
    assert resp.body == big.upper() + b"!"


def test_upstream_killed_mid_response_truncates_never_hangs(make_server, upstream):
    async def half(req):
        async def pieces():
            yield b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 300000
            yield CLOSE
        return pieces()

    up = upstream(half)
    server = make_server(_proxied(f"http://{up.addr}"))
    began = time.monotonic()
    raw = client.exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
    assert time.monotonic() - began < 5
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000000" in head
    assert 0 < len(body) < 1000000
    server.wait_log(r"upstream prematurely closed connection while reading upstream")
    again = client.exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
    assert again.startswith(b"HTTP/1.1 200 ")     # the worker still serves


def test_request_bodies_reach_the_upstream(make_server, upstream):
    up = upstream(lambda req: response(200, str(len(req.body)).encode()))
    server = make_server(_config(f'''
        [[server]]
        listen = "127.0.0.1:{{port}}"
        client_max_body_size = "4m"
        [[server.location]]
        path = "/"
        proxy_pass = "http://{up.addr}"
    '''))
    data = bytes(range(256)) * 8192
    assert client.request(server.port, "PUT", "/", body=data, timeout=20).body == str(len(data)).encode()
    assert up.seen[-1].body == data
    raw = client.exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n5")
    assert up.seen[-1].body == b"hello"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_1gib_response_to_a_slow_reader_keeps_rss_bounded(make_server, upstream):
    """A 1 GiB upstream response read slowly by the client: the upstream is held
    back (the proxy stops reading) and the worker's memory stays flat."""
    sent = [0]
    total = 1 << 30

    async def huge(req):
        async def pieces():
            yield b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total
            block = b"z" * (1 << 20)
            for _ in range(total >> 20):
                sent[0] += len(block)
                yield block
        return pieces()

    up = upstream(huge)
    server = make_server(_proxied(f"http://{up.addr}"))
    before = _rss_kb(server.pid)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = 0
    peak = before
    began = time.monotonic()
    try:
        while time.monotonic() - began < 3.0:      # a slow reader: 64 KiB every 10 ms
            data = sock.recv(64 * 1024)
            assert data
            got += len(data)
            peak = max(peak, _rss_kb(server.pid))
            time.sleep(0.01)
    finally:
        sock.close()
    assert got > 1 << 20                             # it did flow
    assert sent[0] - got < 32 << 20                  # the upstream was held back
    assert peak - before < 48 * 1024, (before, peak)  # KiB: no buffering of the body


def _proxied_load(port: int, stop, counts: dict, lock) -> None:
    conn = client.Connection(port, timeout=10)
    used = False
    while not stop.is_set():
        try:
            resp = conn.request("GET", "/p")
            key = "ok" if resp.status == 200 and resp.body == b"GET /p" else f"status {resp.status}"
            used = True
            if resp.closes:
                conn.close()
                conn = client.Connection(port, timeout=10)
                used = False
        except (ConnectionError, OSError) as exc:
            # A kept-alive connection closed before the request reached the server
            # (an idle connection's linger in a draining worker ran out first) is the
            # case RFC 9112 §9.3.1 lets a client retry on a new connection; counted.
            key = "retried" if used and isinstance(exc, client.Closed) else \
                f"error on a {'reused' if used else 'new'} connection: {exc!r}"
            conn.close()
            conn = client.Connection(port, timeout=10)
            used = False
        with lock:
            counts[key] = counts.get(key, 0) + 1
    conn.close()


def test_reloads_under_proxied_keepalive_load_lose_nothing(make_server, upstream):
    import threading
    up = upstream()
    server = make_server(f'''
        workers = 2
        worker_shutdown_timeout = "5s"
        [upstream.backend]
        servers = ["{up.addr}"]
        keepalive = 8
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
    ''', ready=r"\[notice\] .*generation (\d+) ready")
    counts: dict = {}
    lock = threading.Lock()
    stop = threading.Event()
    clients = [threading.Thread(target=_proxied_load, args=(server.port, stop, counts, lock))
               for _ in range(6)]
    for t in clients:
        t.start()
    try:
        for generation in range(2, 6):
            server.signal(signal.SIGHUP)
            server.wait_log(rf"\[notice\] .*generation {generation} ready", timeout=20)
    finally:
        stop.set()
        for t in clients:
            t.join(15)
    assert set(counts) <= {"ok", "retried"}, counts
    assert counts.get("retried", 0) <= 2, counts
    assert counts["ok"] > 200
    # upstream connections are kept alive: bounded by generations x workers x clients,
    # not by requests
    assert up.connections <= 5 * 2 * 6 < counts["ok"]


def test_metrics_count_tries_failures_and_pool_use(make_server, upstream):
    up = upstream()
    dead = free_port()
    server = make_server(f'''
        workers = 1
        [status]
        listen = "127.0.0.1:{{port2}}"
        [upstream.backend]
        servers = ["{up.addr}", "127.0.0.1:{dead}"]
        max_fails = 0
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
    ''', ready=r"\[notice\] .*generation (\d+) ready")
    with client.Connection(server.port) as conn:
        for _ in range(6):
            assert conn.request("GET", "/m").status == 200
    peer = f'peer="{up.addr}",upstream="backend"'
    dead_peer = f'peer="127.0.0.1:{dead}",upstream="backend"'

    def metrics() -> str:
        text = client.request(server.ports[1], "GET", "/metrics").body.decode()
        return text if f"pyresty_upstream_requests_total{{{peer}}} 6.0" in text else ""

    text = wait_for(metrics, 10, "upstream metrics")
    # every try of the refused peer failed and moved the request on to the live one
    failed = re.search(rf'pyresty_upstream_failures_total{{kind="error",{dead_peer}}} (\d+)', text)
    retries = re.search(rf"pyresty_upstream_retries_total{{{peer}}} (\d+)", text)
    assert failed and retries and failed.group(1) == retries.group(1) != "0"
    assert f"pyresty_upstream_pool_misses_total{{{peer}}} 1.0" in text
    assert f"pyresty_upstream_pool_hits_total{{{peer}}} 5.0" in text


def test_quickstart_proxied_location(make_server):
    """SPEC §1: the quickstart shows a proxied location (served on free ports here)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
    config = (root / "pyresty.toml").read_text().replace("{", "{{").replace("}", "}}")
    config = config.replace("8080", "{port}").replace("9145", "{port2}")
    files = {str(p.relative_to(root)): p.read_text()
             for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".txt")
             and "logs" not in p.parts and "__pycache__" not in p.parts}
    server = make_server(config, files, ready=r"\[notice\] .*generation (\d+) ready")
    resp = client.request(server.port, "GET", "/api/hello?x=1")
    assert resp.status == 200
    assert resp.body == b"backend got GET /backend/hello?x=1 via pyresty quickstart for 127.0.0.1\n"


def test_unbuffered_request_body_streams_as_it_arrives(make_server, upstream, mode_env):
    """proxy_request_buffering = false: the upstream sees the first part of a body
    before the client has sent the rest (chunked upstream: the client gave no length)."""
    import threading
    first_part = threading.Event()
    received = {}

    async def handle(reader, writer, index):
        data = b""
        while b"\r\n0\r\n\r\n" not in data:
            more = await reader.read(65536)
            if not more:
                return
            data += more
            if b"hello" in data:
                first_part.set()
        received["raw"] = data
        writer.write(response(200, b"got it"))
        await writer.drain()

    up = upstream(raw=handle)
    server = make_server(_proxied(f"http://127.0.0.1:{up.port}", "proxy_request_buffering = false"),
                         env=mode_env)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        assert first_part.wait(5), "the first chunk did not reach the upstream before the rest"
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        reply = b""
        while b"got it" not in reply:
            more = sock.recv(65536)
            assert more
            reply += more
    assert reply.startswith(b"HTTP/1.1 200 ")
    head, _, body = received["raw"].partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


def test_unbuffered_request_body_with_a_length_goes_as_it_is(make_server, upstream):
    """proxy_request_buffering = false with Content-Length: the upstream gets the
    same length and the bytes unframed, the first part before the client sent the rest."""
    import threading
    first_part = threading.Event()
    received = {}

    async def handle(reader, writer, index):
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(5)
        first_part.set()
        body += await reader.readexactly(6)
        received["head"], received["body"] = head, body
        writer.write(response(200, b"got it"))
        await writer.drain()
        await reader.read(65536)

    up = upstream(raw=handle)
    server = make_server(_proxied(f"http://127.0.0.1:{up.port}", "proxy_request_buffering = false"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
        assert first_part.wait(5), "the first part did not reach the upstream before the rest"
        sock.sendall(b" world")
        reply = b""
        while b"got it" not in reply:
            more = sock.recv(65536)
            assert more
            reply += more
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 11\r\n" in received["head"]
    assert b"Transfer-Encoding" not in received["head"] and received["body"] == b"hello world"


def test_active_health_checks_steer_proxied_traffic(make_server, upstream):
    """A peer whose health check fails stops getting proxied requests (issue 12 item 7,
    end to end: the checks' verdicts reach the balancer the proxy picks with)."""
    sick = upstream(lambda req: response(500 if req.target == "/healthz" else 200, b"sick"))
    well = upstream(lambda req: response(200, b"well"))
    server = make_server(f'''
        workers = 1
        [upstream.backend]
        servers = ["{sick.addr}", "{well.addr}"]
        health_check = {{{{ path = "/healthz", interval = "200ms", timeout = "1s", healthy = 1, unhealthy = 1 }}}}
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backend"
    ''', ready=r"\[notice\] .*generation (\d+) ready")

    def only_well() -> bool:
        with client.Connection(server.port) as conn:
            return all(conn.request("GET", "/x").body == b"well" for _ in range(6))

    wait_for(only_well, 15, "the failing peer to be avoided", interval=0.1)
    served = sum(1 for req in sick.seen if req.target == "/x")
    for _ in range(10):
        assert client.request(server.port, "GET", "/x").body == b"well"
    assert sum(1 for req in sick.seen if req.target == "/x") == served
