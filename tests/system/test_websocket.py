"""WebSockets against a real pyresty: wsproto clients over real sockets (SPEC §8b).

The fast conformance subset runs here (echo, fragments, ping, 1002/1007/1009,
permessage-deflate, bad handshakes); the whole Autobahn TestSuite is
``make conformance``. Then the lifecycle: a reload sends 1001 and the old
worker is gone in time, ``pyresty drain`` closes 100 WebSockets with 1001, and
the access log, ``/status`` and ``/metrics`` count them.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import time

import pytest
from wsproto.events import CloseConnection, Pong

from harness import http_get, raw_exchange, wait_for
from wsclient import Rejected, WsClient

pytestmark = pytest.mark.timeout(90)

APP = '''
import asyncio, logging
import pyresty

log = logging.getLogger("pyresty.app")

async def echo(r):
    ws = await pyresty.websocket.accept(r, subprotocols=("chat", "superchat"), compress=True)
    async for message in ws:
        await ws.send(message)
    log.warning("echo ended with %s %r", ws.close_code, ws.close_reason)

async def small(r):
    ws = await pyresty.websocket.accept(r, max_message_size=1024)
    async for message in ws:
        await ws.send(message)
    log.warning("small ended with %s", ws.close_code)

async def hello(r):
    ws = await pyresty.websocket.accept(r)
    await ws.send("hello")            # then return: the socket closes with 1000

async def fails(r):
    ws = await pyresty.websocket.accept(r)
    await ws.receive()
    raise RuntimeError("boom")        # 1011

async def sink(r):
    """Takes messages without answering (so it never sends into a closing socket)."""
    ws = await pyresty.websocket.accept(r)
    await ws.send("ready")
    n = 0
    async for message in ws:
        n += 1
    log.warning("sink ended with %s %r after %d messages", ws.close_code, ws.close_reason, n)

async def idle(r):
    ws = await pyresty.websocket.accept(r, idle_timeout=0.3)
    async for message in ws:
        await ws.send(message)

async def pinger(r):
    ws = await pyresty.websocket.accept(r, ping_interval=0.2, ping_timeout=0.4)
    async for message in ws:
        await ws.send(message)

async def watch(r):
    """Tells the client when it sees going_away, then echoes until closed."""
    ws = await pyresty.websocket.accept(r)
    await ws.send(f"worker {pyresty.worker.pid()}")
    told = False
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), 0.05)
        except asyncio.TimeoutError:
            message = None
        except pyresty.WebSocketClosed as exc:
            log.warning("watch closed with %d", exc.code)
            return
        if ws.going_away and not told:
            told = True
            await ws.send("going away")
        if message is not None:
            await ws.send(message)
'''

CONFIG = '''
workers = {workers}
worker_shutdown_timeout = "{timeout}"
[status]
listen = "127.0.0.1:{{port2}}"
[[server]]
listen = "127.0.0.1:{{port}}"
access_log = "logs/access.log"
[[server.location]]
path = "= /echo"
content = "app:echo"
[[server.location]]
path = "= /small"
content = "app:small"
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /fails"
content = "app:fails"
[[server.location]]
path = "= /watch"
content = "app:watch"
[[server.location]]
path = "= /idle"
content = "app:idle"
[[server.location]]
path = "= /sink"
content = "app:sink"
[[server.location]]
path = "= /pinger"
content = "app:pinger"
'''

READY = r"\[notice\] .*generation (\d+) ready"


@pytest.fixture(scope="module", params=["compiled", "interpreted"])
def server(request, tmp_path_factory):
    """One server for the conformance subset, on the compiled request path and
    on its source (PYRESTY_PURE_PYTHON)."""
    from harness import Pyresty
    srv = Pyresty(tmp_path_factory.mktemp("ws"), CONFIG.format(workers=1, timeout="5s"),
                  {"app.py": APP})
    srv.start(ready=READY, env={"PYRESTY_PURE_PYTHON": "1" if request.param == "interpreted" else ""})
    yield srv
    srv.stop()


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame, built by hand (for what wsproto refuses to send)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# -- the fast conformance subset ------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "deflate"])
def test_echo_text_and_binary(server, compress):
    with WsClient(server.port, "/echo", compress=compress) as ws:
        extensions = ws.accepted.extensions
        assert bool(extensions) is compress      # permessage-deflate negotiated only when offered
        for message in ["hello", "ünïcödé ✓", "x" * 70000, b"\x00\xff" * 10, b""]:
            ws.send(message)
            assert ws.receive() == message
        ws.close(1000)
        assert ws.receive_close().code == 1000
        assert ws.wait_eof()               # the server closes the TCP connection first


def test_fragmented_messages_are_reassembled(server):
    with WsClient(server.port, "/echo") as ws:
        ws.send_fragments(["frag", "men", "ted ✓"])
        assert ws.receive() == "fragmented ✓"
        ws.send_fragments([b"a", b"", b"bc"])
        assert ws.receive() == b"abc"
        # a ping between two fragments is answered at once
        ws.send_raw(frame(0x1, b"one ", fin=False) + frame(0x9, b"mid") + frame(0x0, b"two"))
        assert ws.receive() == Pong(payload=b"mid")
        assert ws.receive() == "one two"


def test_ping_gets_its_pong(server):
    with WsClient(server.port, "/echo") as ws:
        ws.ping(b"are you there")
        assert ws.receive() == Pong(payload=b"are you there")


def test_subprotocol_is_the_servers_first_choice_the_client_offered(server):
    with WsClient(server.port, "/echo", subprotocols=("superchat", "chat")) as ws:
        assert ws.subprotocol == "chat"
    with WsClient(server.port, "/echo", subprotocols=("other",)) as ws:
        assert ws.subprotocol is None


def test_bad_utf8_closes_with_1007_even_split_across_fragments(server):
    with WsClient(server.port, "/echo") as ws:
        ws.send_raw(frame(0x1, b"ok \xe2\x82", fin=False) + frame(0x0, b"\x28 bad"))
        assert ws.receive_close().code == 1007
        assert ws.wait_eof()


def test_message_over_max_message_size_closes_with_1009(server):
    with WsClient(server.port, "/small") as ws:
        ws.send(b"x" * 1024)
        assert ws.receive() == b"x" * 1024     # the limit itself passes
        ws.send_fragments([b"y" * 600, b"y" * 600])
        assert ws.receive_close().code == 1009
        assert ws.wait_eof()
    server.wait_log(r"small ended with 1009")


@pytest.mark.parametrize("raw", [
    frame(0x3, b"reserved opcode"),
    frame(0x1, b"rsv bit", rsv=4),
    frame(0x0, b"continuation of nothing"),
    frame(0x9, b"fragmented ping", fin=False),
    frame(0x9, b"p" * 126),                      # a control frame over 125 bytes
    b"\x81\x05hello",                            # unmasked client frame
], ids=["opcode", "rsv", "continuation", "fragmented-ping", "long-ping", "unmasked"])
def test_protocol_errors_close_with_1002(server, raw):
    with WsClient(server.port, "/echo") as ws:
        ws.send_raw(raw)
        assert ws.receive_close().code == 1002
        assert ws.wait_eof()


def test_a_message_then_close_ends_the_echo_loop_quietly(server):
    """The sample handler (SPEC §8b) sends on a socket its client just closed:
    WebSocketClosed ends the request as a normal WebSocket end, not a 500."""
    for n in range(5):
        with WsClient(server.port, "/echo", headers=(("User-Agent", f"last-words-{n}"),)) as ws:
            ws.send_raw(frame(0x1, b"last words") + frame(0x8, b"\x03\xe8"))
            ws.receive_close()
    log_path = server.prefix / "logs" / "access.log"
    lines = wait_for(lambda: [ln for ln in log_path.read_text().splitlines()
                              if "last-words-" in ln] if log_path.read_text().count("last-words-")
                     == 5 else None, 5, "five access log lines")
    assert all(' 101 ' in ln for ln in lines)
    assert "handler failed on GET /echo" not in server.log_text()


def test_handler_return_closes_1000_and_raise_closes_1011(server):
    with WsClient(server.port, "/hello") as ws:
        assert ws.receive() == "hello"
        assert ws.receive_close().code == 1000
    with WsClient(server.port, "/fails") as ws:
        ws.send("go")
        assert ws.receive_close().code == 1011
    server.wait_log(r"handler failed on GET /fails")


def test_idle_timeout_closes_a_silent_socket(server):
    with WsClient(server.port, "/idle") as ws:
        ws.send("still here")
        assert ws.receive() == "still here"
        started = time.monotonic()
        close = ws.receive_close(timeout=5)
        assert (close.code, close.reason) == (1000, "idle timeout")
        assert 0.25 <= time.monotonic() - started < 3


def test_a_ping_without_pong_closes_with_1011_and_a_pong_keeps_the_socket(server):
    from wsproto.events import Ping
    with WsClient(server.port, "/pinger") as ws:
        ping = ws.receive(timeout=5)
        assert isinstance(ping, Ping)
        ws.send_raw(frame(0xA, ping.payload))          # the pong
        assert isinstance(ws.receive(timeout=5), Ping)  # the next one, unanswered
        close = ws.receive_close(timeout=5)
        assert (close.code, close.reason) == (1011, "keepalive ping timeout")


def _handshake(path: str = "/echo", method: str = "GET", version: str = "1.1",
               drop: str = "", extra: str = "", ws_version: str = "13") -> bytes:
    fields = {"Host": "x", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": ws_version}
    fields.pop(drop, None)
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + extra + "\r\n").encode()


@pytest.mark.parametrize("request_bytes, status, reason", [
    (_handshake(drop="Sec-WebSocket-Key"), 400, b"missing or repeated Sec-WebSocket-Key"),
    (_handshake(extra="Sec-WebSocket-Key: again\r\n"), 400, b"missing or repeated"),
    (_handshake(ws_version="8"), 426, b"unsupported Sec-WebSocket-Version"),
    (_handshake(method="PUT"), 400, b"a GET request, not PUT"),
    (_handshake(version="1.0"), 400, b"needs HTTP/1.1"),
    (_handshake(drop="Upgrade"), 400, b"no \"Upgrade: websocket\" header"),
], ids=["no-key", "two-keys", "version-8", "put", "http10", "no-upgrade"])
def test_bad_handshakes_get_their_status_and_reason(server, request_bytes, status, reason):
    answer = raw_exchange(server.port, request_bytes, until_close=False, timeout=5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert reason in body
    if status == 426:
        assert b"\r\nSec-WebSocket-Version: 13" in head


@pytest.mark.parametrize("offer", ["client_max_window_bits=99", "client_max_window_bits=abc",
                                   "mystery_param"])
def test_an_invalid_deflate_offer_is_declined_not_refused(server, offer):
    """RFC 7692 §7: the server declines the offer and the socket opens without it."""
    request = _handshake(extra=f"Sec-WebSocket-Extensions: permessage-deflate; {offer}\r\n")
    answer = raw_exchange(server.port, request, until_close=False, timeout=5)
    assert answer.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Extensions" not in answer


def test_handshake_refusal_via_the_client(server):
    with pytest.raises(Rejected) as refused:
        WsClient(server.port, "/nowhere")
    assert refused.value.status == 404


def test_access_log_status_and_metrics_count_websockets(server):
    with WsClient(server.port, "/echo", headers=(("User-Agent", "access-log-test"),)) as ws:
        ws.send("abc")
        assert ws.receive() == "abc"

        def one_open():
            _, _, body = http_get(server.ports[1], "/status")
            rows = [p for p in json.loads(body)["processes"] if p["role"] == "worker"]
            return rows if rows and rows[0].get("websockets") == 1 else None
        wait_for(one_open, 5, "/status to count the open WebSocket")
        ws.close()
        ws.receive_close()
    log_path = server.prefix / "logs" / "access.log"
    line = wait_for(lambda: [ln for ln in log_path.read_text().splitlines()
                             if '"GET /echo HTTP/1.1" 101 ' in ln and "access-log-test" in ln],
                    5, "the access log line")[-1]
    # status 101, bytes sent after the 101 (echo + close), duration, bytes received at the end
    fields = line.split()
    sent, received = int(fields[fields.index("101") + 1]), int(fields[-1])
    assert sent == (2 + 3) + (2 + 2) and received == (6 + 3) + (6 + 2)

    def metrics():
        _, _, body = http_get(server.ports[1], "/metrics")
        text = body.decode()
        m = re.search(r'pyresty_websocket_messages_total\{direction="in"\} (\d+)', text)
        return text if m and int(m.group(1)) >= 1 else None
    text = wait_for(metrics, 5, "websocket metrics")
    assert re.search(r'pyresty_websocket_handshakes_total\{result="accepted"\} [1-9]', text)
    assert re.search(r'pyresty_websocket_bytes_total\{direction="out"\} [1-9]', text)
    assert re.search(r'pyresty_websockets\{generation="1",worker="0"\} [01]', text)


# -- lifecycle --------------------------------------------------------------------

def test_reload_sends_1001_between_frames_and_the_old_worker_is_gone_in_time(make_server):
    srv = make_server(CONFIG.format(workers=1, timeout="1s"), {"app.py": APP}, ready=READY)
    ws = WsClient(srv.port, "/watch")
    pid = int(ws.receive().split()[1])
    ws.send("before")
    assert ws.receive() == "before"
    hup = time.monotonic()
    srv.signal(signal.SIGHUP)
    assert ws.receive() == "going away"          # ws.going_away at the start of shutdown
    ws.send("still served")                      # until worker_shutdown_timeout
    assert ws.receive() == "still served"
    close = ws.receive_close(timeout=5)
    assert close.code == 1001
    assert time.monotonic() - hup >= 0.9
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the old worker to exit")
    assert time.monotonic() - hup < 1.0 + 1.0 + 0.5   # timeout + 1 s (and the new generation's boot)
    assert ws.wait_eof()
    ws.shutdown()
    srv.wait_log(r"watch closed with 1001")


def test_reload_1001_frame_aligned_while_the_client_keeps_sending(make_server):
    """A client streaming messages through the deadline gets a clean 1001: every
    frame before it is whole (wsproto would fail on a cut frame)."""
    srv = make_server(CONFIG.format(workers=1, timeout="1s"), {"app.py": APP}, ready=READY)
    ws = WsClient(srv.port, "/echo")
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    received = 0
    while time.monotonic() < deadline:
        ws.send(b"z" * 3000)
        event = ws.receive(timeout=5)
        if isinstance(event, CloseConnection):
            assert event.code == 1001
            break
        assert event == b"z" * 3000
        received += 1
    else:
        raise AssertionError("no 1001 within 5 s")
    assert received > 0
    ws.shutdown()


def test_drain_closes_100_websockets_with_1001_and_exits_0(make_server):
    srv = make_server(CONFIG.format(workers=2, timeout="10s"), {"app.py": APP}, ready=READY)
    clients = [WsClient(srv.port, "/echo") for _ in range(100)]
    for c in clients:
        c.send("hi")
        assert c.receive() == "hi"
    done = srv.cli("drain", "--timeout", "20s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "active connections: 0"
    counts = [int(n) for n in re.findall(r"\(websockets: (\d+)\)", done.stdout)]
    assert all(n <= 100 for n in counts)
    for c in clients:
        assert c.receive_close(timeout=5, answer=False).code == 1001
        c.shutdown()
    with pytest.raises(Rejected) as refused:       # still draining: no new WebSocket
        WsClient(srv.port, "/echo")
    assert refused.value.status == 503 and b"draining" in refused.value.body
    assert srv.cli("drain", "--cancel").returncode == 0
    with WsClient(srv.port, "/echo") as again:
        again.send("back")
        assert again.receive() == "back"


def test_a_frame_sent_with_the_handshake_reaches_the_websocket(server):
    """Bytes after the handshake, in the same packet as it (before the 101), are
    the WebSocket's first frame, not a next HTTP request."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(_handshake() + frame(0x1, b"early"))
        data = b""
        while not data.endswith(b"\x81\x05early"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101 ")


def test_bytes_after_an_upgrade_request_nobody_takes_are_the_next_request(server):
    """No handler switched (404): what followed the Upgrade request is parsed
    as HTTP once it was answered, and answered in order."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(_handshake(path="/nowhere") + b"GET /nowhere2 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"HTTP/1.1 404") < 2 and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.count(b"HTTP/1.1 404") == 2, data


def test_the_chat_example_spans_workers(make_server):
    """examples/chat as shipped (its ports aside): two clients on two workers talk."""
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "examples" / "chat"
    config = (example / "pyresty.toml").read_text().replace("127.0.0.1:8081", "127.0.0.1:{port}") \
        .replace("127.0.0.1:9146", "127.0.0.1:{port2}")
    files = {str(p.relative_to(example)): p.read_text()
             for p in example.rglob("*") if p.is_file() and p.suffix in (".py", ".html")}
    srv = make_server(config, files, ready=READY)
    code, _, page = http_get(srv.port, "/")
    assert code == 200 and b"new WebSocket" in page
    joined: set[str] = set()
    clients = []
    while len(joined) < 2 and len(clients) < 20:     # until the two joined different workers
        c = WsClient(srv.port, f"/ws?name=c{len(clients)}")
        clients.append(c)
        text = json.loads(c.receive())["text"]
        while not text.startswith(f"c{len(clients) - 1} joined"):
            text = json.loads(c.receive())["text"]
        joined.add(text.rsplit("(", 1)[1])
    assert len(joined) == 2, joined
    clients[0].send("hello room")
    last = clients[-1]
    wait_for(lambda: json.loads(last.receive())["text"] == "c0: hello room", 5,
             "the message on the other worker")
    for c in clients:
        c.close()
        c.shutdown()


# -- proxied WebSockets (upstream/tunnel.py) --------------------------------------------

PROXY = '''
workers = 1
worker_shutdown_timeout = "1s"
[status]
listen = "127.0.0.1:{{port2}}"
[[server]]
listen = "127.0.0.1:{{port}}"
access_log = "logs/access.log"
[[server.location]]
path = "/"
proxy_pass = "http://127.0.0.1:{upstream}"
proxy_read_timeout = "{read_timeout}"
'''


def _proxied(make_server, read_timeout: str = "60s"):
    upstream = make_server(CONFIG.format(workers=1, timeout="10s"), {"app.py": APP}, ready=READY)
    proxy = make_server(PROXY.format(upstream=upstream.port, read_timeout=read_timeout),
                        ready=READY)
    return upstream, proxy


def test_a_websocket_through_proxy_pass_is_a_tunnel(make_server):
    upstream, proxy = _proxied(make_server)
    with WsClient(proxy.port, "/echo", subprotocols=("chat",), compress=True,
                  headers=(("User-Agent", "tunnel-test"),)) as ws:
        assert ws.subprotocol == "chat" and ws.accepted.extensions   # the upstream's choices
        for message in ["through", b"\x00" * 70000, "ü" * 1000]:
            ws.send(message)
            assert ws.receive() == message
        ws.send_fragments(["a", "b", "c"])
        assert ws.receive() == "abc"
        ws.close()
        assert ws.receive_close().code == 1000
    line = wait_for(lambda: [ln for ln in (proxy.prefix / "logs" / "access.log").read_text()
                             .splitlines() if "tunnel-test" in ln], 5, "the proxy's log line")[0]
    assert '"GET /echo HTTP/1.1" 101 ' in line and f"127.0.0.1:{upstream.port} 101 " in line

    def tunnel_counts() -> dict[str, float] | None:
        _, _, body = http_get(proxy.ports[1], "/metrics")
        found = {f"{kind} {direction}": float(value) for kind, direction, value in re.findall(
            r'pyresty_websocket_tunnel_(messages|bytes)_total\{direction="(in|out)"\} (\S+)',
            body.decode())}
        return found if found.get("messages in", 0) >= 4 and found.get("messages out", 0) >= 4 \
            else None
    counted = wait_for(tunnel_counts, 5, "the tunnel's messages in /metrics")
    # on the wire, compressed: at least each frame's header (6 bytes masked, 2 unmasked)
    assert counted["bytes in"] >= 4 * 6 and counted["bytes out"] >= 4 * 2
    with pytest.raises(Rejected) as refused:        # a non-101 answer is passed on as it is
        WsClient(proxy.port, "/nowhere")
    assert refused.value.status == 404


def test_a_proxied_websocket_gets_1001_on_both_sides_at_the_reload_deadline(make_server):
    """Both sides get a close frame 1001 between frames while the client keeps
    sending; the old proxy worker is gone by worker_shutdown_timeout + 1 s."""
    upstream, proxy = _proxied(make_server)
    ws = WsClient(proxy.port, "/sink")
    assert ws.receive() == "ready"
    pid = [p for p in proxy.processes() if p != proxy.pid][0]
    hup = time.monotonic()
    proxy.signal(signal.SIGHUP)
    deadline = hup + 5
    sent = 0
    close = None
    while close is None and time.monotonic() < deadline:
        ws.send(b"q" * 5000)          # whole frames, one after the other, until the 1001
        sent += 1
        try:
            event = ws.receive(timeout=0.02)
        except TimeoutError:
            continue
        assert isinstance(event, CloseConnection), event
        close = event
    assert close is not None and close.code == 1001, "no 1001 through the tunnel within 5 s"
    assert sent > 1 and time.monotonic() - hup >= 0.9
    # the upstream's side got its 1001 between two of the client's frames
    upstream.wait_log(r"sink ended with 1001 'server going away' after \d+ messages")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the old proxy worker to exit")
    assert time.monotonic() - hup < 1.0 + 1.0 + 0.5
    ws.shutdown()


def test_proxy_read_timeout_closes_an_idle_tunnel(make_server):
    upstream, proxy = _proxied(make_server, read_timeout="0.5s")
    with WsClient(proxy.port, "/echo") as ws:
        ws.send("x")
        assert ws.receive() == "x"
        started = time.monotonic()
        assert ws.wait_eof(timeout=5)
        assert 0.4 <= time.monotonic() - started < 3
    proxy.wait_log(r"idle for .* \(proxy_read_timeout\): closing")


def _raw_websocket_upstream(accept: bool, seen: dict):
    """An upstream written by hand: its 101 and its first frame leave in one write,
    so the frame arrives with the head (those bytes are the tunnel's, not HTTP)."""
    from upstreams import RawUpstream
    from wsproto.utilities import generate_accept_token

    async def handle(reader, writer, index):
        head = await reader.readuntil(b"\r\n\r\n")
        seen["head"] = head
        key = re.search(rb"(?im)^sec-websocket-key:[ \t]*(\S+)", head).group(1)
        token = generate_accept_token(key) if accept else b"not-the-token"
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + token + b"\r\n\r\n"
                     b"\x81\x05hello")
        await writer.drain()
        frame = await reader.read(2)
        if frame[:1] == b"\x88":          # the client's close frame: answer it
            writer.write(b"\x88\x02\x03\xe8")
            await writer.drain()
        await reader.read(65536)
    return RawUpstream(handle)


def test_bytes_after_the_upstreams_101_head_are_the_tunnels(make_server):
    seen: dict = {}
    up = _raw_websocket_upstream(True, seen)
    try:
        proxy = make_server(PROXY.format(upstream=up.port, read_timeout="60s"), ready=READY)
        with WsClient(proxy.port, "/raw") as ws:
            assert ws.receive() == "hello"
            ws.close()
            assert ws.receive_close().code == 1000
        head = seen["head"]
        assert head.startswith(b"GET /raw HTTP/1.1\r\n")
        assert head.endswith(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert head.count(b"Connection:") == 1 and b"X-Forwarded-For: 127.0.0.1" in head
    finally:
        up.close()


def test_a_101_with_the_wrong_accept_token_is_a_502(make_server):
    up = _raw_websocket_upstream(False, {})
    try:
        proxy = make_server(PROXY.format(upstream=up.port, read_timeout="60s"), ready=READY)
        with pytest.raises(Rejected) as refused:
            WsClient(proxy.port, "/raw")
        assert refused.value.status == 502
        proxy.wait_log(r"upstream sent a 101 without the right Sec-WebSocket-Accept")
    finally:
        up.close()
