"""HTTP/2 on a real pyresty: over TLS by ALPN and h2c by prior knowledge, 100
concurrent streams on one connection, flow control per stream, request
bodies, RST_STREAM of one stream, curl --http2, GOAWAY at reload with the
in-flight streams completed and the old worker gone in time, floods closed
with ENHANCE_YOUR_CALM, framing errors answered with the right codes, and the
SETTINGS limits (streams, header list) announced and enforced.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame)

from certs import Certs
from h2client import Answer, FrameClient, H2Client, read_frames
from harness import wait_for

pytestmark = pytest.mark.timeout(120)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 1, 5, 6, 7
CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 8, 9, 11

APP = """
import asyncio
import pyresty

arrived = 0
everyone = asyncio.Event()

async def together(r):
    # answers only once n requests are in flight at the same time
    global arrived
    arrived += 1
    if arrived >= int(r.args["n"][0]):
        everyone.set()
    await asyncio.wait_for(everyone.wait(), 30)
    await r.print("in ", r.args["i"][0], " ", r.http_version)

async def slow(r):
    await asyncio.sleep(float(r.args.get("s", ["1"])[0]))
    await r.print("slow done ", pyresty.worker.pid())

async def big(r):
    r.headers_out["content-type"] = "application/octet-stream"
    for _ in range(16):
        await r.print(b"x" * 65536)

async def echo(r):
    body = await r.read_body()
    await r.print(len(body), " ", body[:8].decode())

async def hello(r):
    await r.print("hello ", r.http_version)
"""

CONFIG = """
workers = 1
worker_shutdown_timeout = "{shutdown}"
[status]
listen = "127.0.0.1:{port3}"
[[server]]
listen = ["127.0.0.1:{port} ssl", "127.0.0.1:{port2} http2"]
server_name = ["a.test"]
ssl_certificate = "certs/a.test.pem"
ssl_certificate_key = "certs/a.test.key"
http2 = true
client_max_body_size = "4m"
client_body_timeout = "2s"
access_log = "logs/access.log"
[[server.location]]
path = "/"
content = "app:hello"
[[server.location]]
path = "= /together"
content = "app:together"
[[server.location]]
path = "= /slow"
content = "app:slow"
[[server.location]]
path = "= /big"
content = "app:big"
[[server.location]]
path = "= /echo"
content = "app:echo"
[[server.location]]
path = "/static/"
root = "."
"""


@pytest.fixture(params=["compiled", "interpreted"])
def served(request, make_server, tmp_path: Path):
    certs = Certs(tmp_path / "certs-src", ("a.test",))

    def build(shutdown: str = "3s", **kwargs):
        files = {"app.py": APP, "static/a.txt": "static over h2\n",
                 "certs/a.test.pem": Path(certs.cert("a.test")).read_text(),
                 "certs/a.test.key": Path(certs.key("a.test")).read_text()}
        env = {"PYRESTY_PURE_PYTHON": "1" if request.param == "interpreted" else ""}
        return make_server(CONFIG.replace("{shutdown}", shutdown), files, env=env, **kwargs)
    return certs, build


def status_of(srv) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.ports[2]}/status", timeout=10) as resp:
        return json.loads(resp.read())


def metric(srv, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.ports[2]}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_100_concurrent_streams_on_one_tls_connection(served) -> None:
    certs, build = served
    srv = build()
    client = H2Client(srv.port, certs.client_context())
    sids = [client.request(f"/together?n=100&i={i}") for i in range(100)]
    client.wait(lambda: all(client.answers[s].ended for s in sids), 30, "100 answers")
    for i, sid in enumerate(sids):
        answer = client.answers[sid]
        assert answer.status == 200 and answer.body == f"in {i} 2.0".encode()
    # static files and the access log's protocol
    answer = client.get("/static/a.txt")
    assert answer.status == 200 and answer.body == b"static over h2\n"
    client.close()
    wait_for(lambda: '"GET /static/a.txt HTTP/2.0" 200' in
             (srv.prefix / "logs" / "access.log").read_text(), 10, "the access log line")
    wait_for(lambda: metric(srv, "pyresty_http2_streams_total") >= 101, 10, "the stream count")


def test_h2c_prior_knowledge_and_http11_share_a_plain_port(served) -> None:
    _, build = served
    srv = build()
    client = H2Client(srv.ports[1])
    assert client.get("/").body == b"hello 2.0"
    client.close()
    with socket.create_connection(("127.0.0.1", srv.ports[1]), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert plain.makefile("rb").read().endswith(b"hello 1.1")


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_curl_http2(served, tmp_path: Path) -> None:
    certs, build = served
    srv = build()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"12345678" * 100000)
    done = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(certs.ca_file), "--resolve",
         f"a.test:{srv.port}:127.0.0.1", "-w", " %{http_version}",
         "--data-binary", f"@{upload}", f"https://a.test:{srv.port}/echo"],
        capture_output=True, text=True, timeout=30)
    assert done.stdout == "800000 12345678 2", done.stderr


def test_request_bodies_and_a_slow_stream_does_not_block_the_others(served) -> None:
    certs, build = served
    srv = build()
    client = H2Client(srv.port, certs.client_context(), auto_ack=False)
    body = bytes(range(256)) * 4096           # 1 MiB: many windows' worth
    sid = client.request("/echo", "POST", body)
    client.wait(lambda: client.answers[sid].ended, 20, "the echo")
    assert client.answers[sid].body.startswith(b"1048576 ")
    # the client never acknowledges /big's data: that stream stalls at its
    # window while the connection window is kept open, and /hello still comes
    big = client.request("/big")
    client.wait(lambda: len(client.answers[big].body) >= 65535 - 8 * 1024, 10, "the first window")
    client.conn.increment_flow_control_window(2 ** 30)
    client.flush()
    small = client.request("/")
    client.wait(lambda: client.answers[small].ended, 10, "the small answer")
    assert client.answers[small].body == b"hello 2.0"
    assert not client.answers[big].ended and len(client.answers[big].body) <= 65535
    client.conn.acknowledge_received_data(len(client.answers[big].body), big)
    client.auto_ack = True
    client.flush()
    client.wait(lambda: client.answers[big].ended, 20, "the rest of /big")
    assert len(client.answers[big].body) == 16 * 65536
    client.close()


def test_a_body_that_stops_coming_is_408_after_client_body_timeout(served) -> None:
    certs, build = served
    srv = build()
    client = H2Client(srv.port, certs.client_context())
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"POST"), (b":path", b"/echo"),
                                   (b":scheme", b"https"), (b":authority", b"a.test")])
    client.conn.send_data(sid, b"abc")
    client.answers[sid] = Answer()
    client.flush()
    started = time.monotonic()
    client.wait(lambda: client.answers[sid].ended, 10, "the 408")
    assert client.answers[sid].status == 408 and 1.5 < time.monotonic() - started < 5
    assert client.get("/").body == b"hello 2.0"    # the connection goes on
    client.close()


def test_rst_stream_ends_one_stream_only(served) -> None:
    certs, build = served
    srv = build()
    client = H2Client(srv.port, certs.client_context())
    first = client.request("/slow?s=0.5")
    second = client.request("/slow?s=0.5")
    client.conn.reset_stream(first, CANCEL)
    client.flush()
    client.wait(lambda: client.answers[second].ended, 10, "the other stream")
    assert client.answers[second].body.startswith(b"slow done")
    assert client.get("/").body == b"hello 2.0"   # the connection goes on
    client.close()


def test_reload_sends_goaway_completes_in_flight_streams_and_the_old_worker_goes(served) -> None:
    certs, build = served
    srv = build(shutdown="3s")
    old_pid = next(p["pid"] for p in status_of(srv)["processes"] if p["role"] == "worker")
    ctx = certs.client_context(("h2",))
    client = FrameClient(ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port)),
                                         server_hostname="a.test"))
    in_flight = client.request("/slow?s=1.5")
    reloaded = threading.Thread(target=srv.cli, args=("-s", "reload"))
    started = time.monotonic()
    reloaded.start()
    # keep opening streams until the GOAWAY comes
    opened = []
    while client.goaway is None and time.monotonic() - started < 15:
        opened.append(client.request("/"))
        try:
            client.read_once(0.05)
        except TimeoutError:
            pass
    goaway_at = time.monotonic()
    reloaded.join(30)
    assert client.goaway is not None and client.goaway.error_code == 0
    last = client.goaway.last_stream_id
    assert last >= in_flight
    client.wait(lambda: client.answers[in_flight].ended, 10, "the in-flight stream")
    assert client.answers[in_flight].body == f"slow done {old_pid}".encode()
    for sid in opened:
        answer = client.answers[sid]
        if sid <= last:
            client.wait(lambda a=answer: a.ended, 10, "a stream before GOAWAY")
            assert answer.body == b"hello 2.0"
        else:   # crossed the GOAWAY: refused or ignored, never half-answered
            assert answer.status == 0
    # the server closes the connection once its streams are done
    client.wait(lambda: client.closed, 5, "the connection to close")
    # the old worker is gone by worker_shutdown_timeout + 1 s after its shutdown began
    wait_for(lambda: not Path(f"/proc/{old_pid}").exists(),
             max(0.1, goaway_at + 3 + 1 - time.monotonic()), "the old worker to exit")
    fresh = H2Client(srv.port, certs.client_context())
    assert fresh.get("/").body == b"hello 2.0"
    fresh.close()


def test_a_client_that_ignores_goaway_is_closed_by_worker_shutdown_timeout(served) -> None:
    certs, build = served
    srv = build(shutdown="1s")
    client = H2Client(srv.port, certs.client_context())
    stuck = client.request("/slow?s=30")
    srv.cli("-s", "reload")
    client.wait(lambda: client.goaway is not None, 10, "GOAWAY")
    started = time.monotonic()
    # the client keeps the connection busy: PINGs (raw: h2 itself would send nothing after GOAWAY)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    closed = False
    while not closed and time.monotonic() - started < 10:
        try:
            client.sock.sendall(ping)
            client.sock.settimeout(0.1)
            closed = not client.sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            closed = True
    assert closed and time.monotonic() - started < 1 + 1   # worker_shutdown_timeout + 1 s
    assert not client.answers[stuck].ended


def test_rapid_reset_flood_is_cut_off_while_others_are_served(served) -> None:
    certs, build = served
    srv = build()
    other = H2Client(srv.port, certs.client_context())
    attacker = H2Client(srv.port, certs.client_context())
    for _ in range(1000):
        sid = attacker.conn.get_next_available_stream_id()
        attacker.conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/slow?s=5"),
                                         (b":scheme", b"https"), (b":authority", b"a.test")])
        attacker.conn.reset_stream(sid, CANCEL)
        attacker.flush()
        if attacker.send_failed:
            break
    attacker.wait(lambda: attacker.goaway is not None, 10, "GOAWAY")
    assert attacker.goaway.error_code == ENHANCE_YOUR_CALM
    assert other.get("/").body == b"hello 2.0"
    other.close()
    srv.wait_log(r"\[warn\] .*rapid reset.*ENHANCE_YOUR_CALM")
    wait_for(lambda: metric(srv, "pyresty_http2_floods_total") >= 1, 10, "the flood metric")


def raw_h2(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    return sock


def headers_frame(sid: int, path: str = "/", end: bool = True) -> HeadersFrame:
    frame = HeadersFrame(sid)
    frame.data = Encoder().encode([(":method", "GET"), (":path", path), (":scheme", "http"),
                                   (":authority", "a")])
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame


def goaway_code(frames) -> int | None:
    codes = [f.error_code for f in frames if isinstance(f, GoAwayFrame)]
    return codes[-1] if codes else None


def test_framing_errors_get_the_right_codes(served) -> None:
    certs, build = served
    srv = build()
    port = srv.ports[1]
    # a bad preface after ALPN chose h2
    ctx = certs.client_context()
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                         server_hostname="a.test") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 30)
        assert goaway_code(read_frames(sock)) == PROTOCOL_ERROR
    # DATA on a stream that is closed
    with raw_h2(port) as sock:
        sock.sendall(headers_frame(1).serialize())
        data = DataFrame(1)
        data.data = b"late"
        sock.sendall(data.serialize())
        frames = read_frames(sock, 3)
        codes = {f.error_code for f in frames if isinstance(f, (GoAwayFrame, RstStreamFrame))}
        assert STREAM_CLOSED in codes
    # a frame larger than SETTINGS_MAX_FRAME_SIZE (16384)
    with raw_h2(port) as sock:
        sock.sendall(headers_frame(1, end=False).serialize())
        data = DataFrame(1)
        data.data = b"x" * 20000
        sock.sendall(data.serialize())
        assert goaway_code(read_frames(sock)) == FRAME_SIZE_ERROR
    # a header block HPACK cannot decode
    with raw_h2(port) as sock:
        bad = HeadersFrame(1)
        bad.data = b"\xff\xff\xff\xff\xff\xff"
        bad.flags.add("END_HEADERS")
        bad.flags.add("END_STREAM")
        sock.sendall(bad.serialize())
        assert goaway_code(read_frames(sock)) == COMPRESSION_ERROR
    # CONTINUATION flood: a header block that never ends
    with raw_h2(port) as sock:
        first = headers_frame(1)
        first.flags.discard("END_HEADERS")
        frames = [first.serialize()]
        for _ in range(200):
            cont = ContinuationFrame(1)
            cont.data = b"\x00" * 10
            frames.append(cont.serialize())
        try:
            sock.sendall(b"".join(frames))
        except OSError:
            pass
        assert goaway_code(read_frames(sock)) == ENHANCE_YOUR_CALM
    # PING flood
    with raw_h2(port) as sock:
        pings = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(500))
        try:
            sock.sendall(pings)
        except OSError:
            pass
        assert goaway_code(read_frames(sock)) == ENHANCE_YOUR_CALM
    # the server is fine
    client = H2Client(port)
    assert client.get("/").body == b"hello 2.0"
    client.close()


def frames_until(sock: socket.socket, done, timeout: float = 10.0) -> list:
    """The frames the server sent until ``done(frames)`` holds (or ``timeout``)."""
    from hyperframe.frame import Frame
    deadline = time.monotonic() + timeout
    data, frames = b"", []
    while not done(frames) and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            if len(data) < 9 + length:
                break
            frame.parse_body(memoryview(data[9:9 + length]))
            frames.append(frame)
            data = data[9 + length:]
    return frames


def test_settings_limits_are_announced_and_enforced(served) -> None:
    certs, build = served
    srv = build()
    port = srv.ports[1]
    # the server's SETTINGS: 128 streams, a 32 KiB header list
    with raw_h2(port) as sock:
        sock.sendall(headers_frame(1).serialize())
        frames = frames_until(sock, lambda fs: any(isinstance(f, HeadersFrame) for f in fs))
        settings = next(f for f in frames if isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 128
        assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 32 * 1024
    # the 129th stream open at once is refused, alone: the first 128 are answered
    with raw_h2(port) as sock:
        sock.sendall(b"".join(headers_frame(1 + 2 * i, "/slow?s=1").serialize()
                              for i in range(129)))
        frames = frames_until(sock, lambda fs: sum(isinstance(f, HeadersFrame) for f in fs) >= 128
                              and any(isinstance(f, RstStreamFrame) for f in fs))
        refused = [f.stream_id for f in frames
                   if isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM]
        answered = {f.stream_id for f in frames if isinstance(f, HeadersFrame)}
        assert refused == [1 + 2 * 128]
        assert answered == {1 + 2 * i for i in range(128)}
        assert goaway_code(frames) is None
    # a header list over 32 KiB
    with raw_h2(port) as sock:
        block = Encoder().encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", "a"), ("x-big", "x" * 40000)])
        parts = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        frame = HeadersFrame(1)
        frame.data = parts[0]
        frame.flags.add("END_STREAM")
        blocks = [frame.serialize()]
        for n, part in enumerate(parts[1:], 1):
            more = ContinuationFrame(1)
            more.data = part
            if n == len(parts) - 1:
                more.flags.add("END_HEADERS")
            blocks.append(more.serialize())
        try:
            sock.sendall(b"".join(blocks))
        except OSError:
            pass
        assert goaway_code(read_frames(sock)) == ENHANCE_YOUR_CALM
    # SETTINGS flood
    with raw_h2(port) as sock:
        try:
            sock.sendall(SettingsFrame(0).serialize() * 500)
        except OSError:
            pass
        assert goaway_code(read_frames(sock)) == ENHANCE_YOUR_CALM
    srv.wait_log(r"\[warn\] .*SETTINGS flood.*ENHANCE_YOUR_CALM")
