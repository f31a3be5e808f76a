"""TLS termination on a real pyresty: HTTPS through ``ssl``/``http.client``,
SNI choosing the server block's certificate, the default server for an
unknown name, static files over TLS (no sendfile), ssl_protocols, and a
reload that reads renewed certificates. Certificates come from ``trustme``.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import warnings
from pathlib import Path

import pytest
import trustme

from certs import Certs
from harness import wait_for

pytestmark = pytest.mark.timeout(120)

APP = """
import pyresty

async def who(r):
    await r.print(r.ctx.get("x", ""), "server=", r.ctx.get("server", "a"), " ", r.http_version,
                  " ", r.method, " ", r.headers.get("host"))

async def b(r):
    await r.print("server=b ", r.http_version, " ", r.headers.get("host"))

async def echo(r):
    body = await r.read_body()
    await r.print(len(body), " ", body[:16].decode())

async def scheme(r):
    await r.print(r.scheme, " ", r.headers.get("x-forwarded-proto", "-"))
"""

CONFIG = """
workers = 1
worker_shutdown_timeout = "3s"
[status]
listen = "127.0.0.1:{port3}"
[[server]]
listen = ["127.0.0.1:{port} ssl", "127.0.0.1:{port2}"]
server_name = ["a.test"]
ssl_certificate = "certs/a.test.pem"
ssl_certificate_key = "certs/a.test.key"
{a_extra}
[[server.location]]
path = "/"
content = "app:who"
[[server.location]]
path = "= /echo"
content = "app:echo"
[[server.location]]
path = "= /scheme"
content = "app:scheme"
[[server.location]]
path = "= /forwarded"
proxy_pass = "http://127.0.0.1:{port2}/scheme"
[[server.location]]
path = "/static/"
root = "."
[[server]]
listen = ["127.0.0.1:{port} ssl"]
server_name = ["b.test"]
ssl_certificate = "certs/b.test.pem"
ssl_certificate_key = "certs/b.test.key"
[[server.location]]
path = "/"
content = "app:b"
"""


def https(port: int, ctx: ssl.SSLContext, name: str | None, method: str = "GET",
          path: str = "/", body: bytes | None = None, headers: dict[str, str] | None = None
          ) -> tuple[int, bytes, dict[str, object]]:
    """One request over TLS with SNI ``name``: (status, body, the peer certificate)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=name)
    conn = http.client.HTTPSConnection(name or "127.0.0.1", port, context=ctx, timeout=10)
    conn.sock = sock      # connected already, with the SNI name asked for
    try:
        conn.request(method, path, body=body, headers={"Host": name or "127.0.0.1", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), sock.getpeercert() or {}
    finally:
        conn.close()


def names_of(cert: dict[str, object]) -> list[str]:
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]  # type: ignore[union-attr]


@pytest.fixture(params=["compiled", "interpreted"])
def served(request, make_server, tmp_path: Path):
    """A pyresty with two servers on one ssl address, in both modes."""
    certs = Certs(tmp_path / "certs-src")

    def build(a_extra: str = "", **kwargs):
        files = {"app.py": APP, "static/big.bin": "x" * 10,
                 "certs/a.test.pem": Path(certs.cert("a.test")).read_text(),
                 "certs/a.test.key": Path(certs.key("a.test")).read_text(),
                 "certs/b.test.pem": Path(certs.cert("b.test")).read_text(),
                 "certs/b.test.key": Path(certs.key("b.test")).read_text()}
        env = {"PYRESTY_PURE_PYTHON": "1" if request.param == "interpreted" else ""}
        srv = make_server(CONFIG.replace("{a_extra}", a_extra), files, env=env, **kwargs)
        return srv
    return certs, build


def test_https_get_and_post(served) -> None:
    certs, build = served
    srv = build()
    ctx = certs.client_context()
    status, body, cert = https(srv.port, ctx, "a.test")
    assert status == 200 and body == b"server=a 1.1 GET a.test"
    assert "a.test" in names_of(cert)
    payload = b"0123456789abcdef" * 20000
    status, body, _ = https(srv.port, ctx, "a.test", "POST", "/echo", payload)
    assert (status, body) == (200, b"%d 0123456789abcdef" % len(payload))
    # the plain address of the same server still speaks plain HTTP
    with socket.create_connection(("127.0.0.1", srv.ports[1]), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        assert b"server=a 1.1 GET a.test" in plain.makefile("rb").read()


def test_scheme_and_x_forwarded_proto_say_https_behind_a_tls_listener(served) -> None:
    certs, build = served
    srv = build()
    ctx = certs.client_context()
    assert https(srv.port, ctx, "a.test", path="/scheme")[:2] == (200, b"https -")
    # proxied from the TLS listener to the plain one: the upstream hears https
    assert https(srv.port, ctx, "a.test", path="/forwarded")[:2] == (200, b"http https")
    conn = http.client.HTTPConnection("127.0.0.1", srv.ports[1], timeout=10)
    conn.request("GET", "/forwarded", headers={"Host": "a.test"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"http http")
    conn.close()


def test_sni_chooses_the_certificate_and_unknown_names_get_the_default_server(served) -> None:
    certs, build = served
    srv = build()
    ctx = certs.client_context()
    status, body, cert = https(srv.port, ctx, "b.test")
    assert status == 200 and body == b"server=b 1.1 b.test"
    assert names_of(cert) == ["b.test"]
    loose = certs.client_context()
    loose.check_hostname = False        # the default server's certificate names a.test
    for name in ("c.test", None):       # an unknown name, and no SNI at all
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with loose.wrap_socket(raw, server_hostname=name) as sock:
            assert names_of(sock.getpeercert()) == ["a.test"]
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            assert sock.makefile("rb").read().endswith(b"server=a 1.1 GET a.test")


def test_static_files_over_tls_are_encrypted_not_sendfile(served) -> None:
    certs, build = served
    srv = build()
    data = bytes(range(256)) * 8192    # 2 MiB: more than one socket buffer
    (srv.prefix / "static" / "big.bin").write_bytes(data)
    ctx = certs.client_context()
    status, body, _ = https(srv.port, ctx, "a.test", path="/static/big.bin")
    assert status == 200 and body == data
    status, body, _ = https(srv.port, ctx, "a.test", path="/static/big.bin",
                            headers={"Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000]


def test_modern_defaults_and_ssl_protocols(served) -> None:
    certs, build = served
    srv = build()
    old = certs.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")    # a client that would still speak TLS 1.1
    with pytest.raises(ssl.SSLError):
        https(srv.port, old, "a.test")
    tls12 = certs.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    with tls12.wrap_socket(raw, server_hostname="a.test") as sock:
        assert sock.version() == "TLSv1.2"
        assert sock.compression() is None
    srv.stop()
    # ssl_protocols on the address's default server: TLS 1.2 is refused for every name
    srv = build('ssl_protocols = ["TLSv1.3"]')
    for name in ("a.test", "b.test"):
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with pytest.raises(ssl.SSLError):
            tls12.wrap_socket(raw, server_hostname=name).close()
        raw.close()
    status, _, _ = https(srv.port, certs.client_context(), "b.test")
    assert status == 200

    def figures() -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", srv.ports[2], timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("pyresty_tls")}

    # handshakes by version and failures reach /metrics (reported by the worker every second)
    found = wait_for(lambda: (f := figures()).get('pyresty_tls_handshakes_total{version="TLSv1.3"}')
                     and f.get('pyresty_tls_handshake_failures_total{reason="unsupported_protocol"}', 0)
                     >= 2 and f, 10,
                     "TLS figures in /metrics")
    assert found['pyresty_tls_handshakes_total{version="TLSv1.3"}'] >= 1


def test_failed_handshakes_are_counted_and_logged_by_reason(served) -> None:
    certs, build = served
    srv = build("client_header_timeout = 1")    # bounds the handshake too, as in nginx
    expected: dict[str, int] = {}

    def handshake(ctx: ssl.SSLContext, reason: str) -> None:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="a.test")
        raw.close()
        expected[reason] = expected.get(reason, 0) + 1

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    handshake(old, "unsupported_protocol")              # a TLS 1.1-only client
    handshake(ssl.create_default_context(), "unknown_ca")   # the test CA is not in its store
    tls12 = certs.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.set_ciphers("AES128-SHA")                     # nothing HIGH:!aNULL:!MD5 with ECDHE
    handshake(tls12, "no_shared_cipher")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")   # plain HTTP to the TLS port
        answer = plain.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")     # nginx's answer and words
    assert b"Connection: close\r\n" in answer
    assert b"<center>The plain HTTP request was sent to HTTPS port</center>" in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(body) in head
    expected["http_request"] = 1
    socket.create_connection(("127.0.0.1", srv.port), timeout=10).close()   # connects and leaves
    expected["eof"] = 1
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)   # says nothing
    expected["timeout"] = 1
    assert silent.recv(100) == b""                      # closed by client_header_timeout
    silent.close()

    def failures() -> dict[str, float]:
        conn = http.client.HTTPConnection("127.0.0.1", srv.ports[2], timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        prefix = 'pyresty_tls_handshake_failures_total{reason="'
        return {line[len(prefix):].split('"')[0]: float(line.split(" ")[1])
                for line in text.splitlines() if line.startswith(prefix)}
    wait_for(lambda: failures() == expected, 10, f"failures by reason {expected} in /metrics")
    srv.wait_log(r"\[info\] .*SSL_do_handshake\(\) failed \(\[SSL: UNSUPPORTED_PROTOCOL\] "
                 r"unsupported protocol .*\) while SSL handshaking, client: 127\.0\.0\.1, "
                 r"server: 127\.0\.0\.1:\d+")
    # one line a second at most: the others are counted in the next line
    srv.wait_log(r"\[info\] .* while SSL handshaking, client: 127\.0\.0\.1, "
                 r"server: 127\.0\.0\.1:\d+ \(\d+ more since the last report\)")


def test_reload_reads_renewed_certificates(served, tmp_path: Path) -> None:
    certs, build = served
    srv = build()
    ctx = certs.client_context()
    _, _, before = https(srv.port, ctx, "a.test")
    renewed = Certs(tmp_path / "renewed", ("a.test",))
    (srv.prefix / "certs" / "a.test.pem").write_text(Path(renewed.cert("a.test")).read_text())
    (srv.prefix / "certs" / "a.test.key").write_text(Path(renewed.key("a.test")).read_text())
    done = srv.cli("-s", "reload")
    assert done.returncode == 0, done.stderr
    srv.wait_log(r"generation 2 ready")
    # until the old worker closed its copy of the listener it may still accept (old certificate)
    srv.wait_log(r"generation 1\) exited")
    _, _, after = https(srv.port, renewed.client_context(), "a.test")
    assert after["serialNumber"] != before["serialNumber"]
    with pytest.raises(ssl.SSLError):     # the old CA no longer vouches for it
        https(srv.port, ctx, "a.test")


def test_a_reload_with_a_broken_key_is_refused_and_the_old_one_keeps_serving(served) -> None:
    certs, build = served
    srv = build()
    (srv.prefix / "certs" / "a.test.key").write_text(Path(certs.key("b.test")).read_text())
    done = srv.cli("-s", "reload")
    assert done.returncode == 1
    assert "server[0].ssl_certificate_key" in done.stderr + done.stdout
    assert "is not the key of" in done.stderr + done.stdout
    status, body, _ = https(srv.port, certs.client_context(), "a.test")
    assert status == 200 and body.startswith(b"server=a")


def test_status_shows_connections_by_protocol(served) -> None:
    certs, build = served
    srv = build()
    ctx = certs.client_context()
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="a.test") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        sock.recv(1000)

        def http11_connections() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", srv.ports[2], timeout=10)
            conn.request("GET", "/status")
            state = json.loads(conn.getresponse().read())
            conn.close()
            workers = [p for p in state["processes"] if p["role"] == "worker"]
            return sum(p.get("protocols", {}).get("http/1.1", 0) for p in workers)
        wait_for(lambda: http11_connections() == 1, 10, "one HTTP/1.1 connection in /status")
        # and the command line's table, column H1/H2
        lines = srv.cli("status").stdout.splitlines()
        column = lines[0].split().index("H1/H2")
        assert [line.split()[column] for line in lines[1:] if line.startswith("worker")] == ["1/0"]


def test_a_reload_rotates_session_tickets(served) -> None:
    certs, build = served
    srv = build()
    ctx = certs.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2    # the session is there once the handshake is

    def connect(session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname="a.test", session=session)

    with connect() as first:
        session = first.session
    assert session is not None and session.has_ticket
    with connect(session) as again:
        assert again.session_reused                   # the same worker resumes it
    assert srv.cli("-s", "reload").returncode == 0
    srv.wait_log(r"generation 1\) exited")
    with connect(session) as after:
        assert not after.session_reused               # new keys: a full handshake
        assert after.session is not None and after.session.has_ticket


PROXY_CONFIG = """
workers = 1
[[server]]
listen = ["127.0.0.1:{port}"]
[[server.location]]
path = "/trusted/"
proxy_pass = "https://127.0.0.1:{port2}/"
proxy_ssl_trusted_certificate = "certs/ca.pem"
[[server.location]]
path = "/system/"
proxy_pass = "https://127.0.0.1:{port2}/"
[[server.location]]
path = "/unverified/"
proxy_pass = "https://127.0.0.1:{port2}/"
proxy_ssl_verify = false
[[server]]
listen = ["127.0.0.1:{port2} ssl"]
ssl_certificate = "certs/a.test.pem"
ssl_certificate_key = "certs/a.test.key"
[[server.location]]
path = "/"
content = "app:who"
"""


def test_proxy_pass_https_verifies_the_upstream(make_server, tmp_path: Path) -> None:
    certs = Certs(tmp_path / "certs-src", ("a.test",))
    files = {"app.py": APP, "certs/ca.pem": certs.ca_file.read_text(),
             "certs/a.test.pem": Path(certs.cert("a.test")).read_text(),
             "certs/a.test.key": Path(certs.key("a.test")).read_text()}
    srv = make_server(PROXY_CONFIG, files,
                      expect_log=(r"certificate verify failed",))
    for path in ("/trusted/x", "/unverified/x"):
        for _ in range(2):      # a new connection, then a pooled one
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"server=a 1.1 GET 127.0.0.1:%d" % srv.ports[1])
            conn.close()
    # the system store does not know the test CA: the handshake fails, 502
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/system/x")
    assert conn.getresponse().status == 502
    conn.close()
    srv.wait_log(r"certificate verify failed")


def test_proxy_ssl_trusted_certificate_must_be_readable(make_server) -> None:
    srv = make_server(PROXY_CONFIG.replace("[[server]]\nlisten = [\"127.0.0.1:{port2} ssl\"]", "[[server]]\nlisten = [\"127.0.0.1:{port2}\"]")
                      .replace('ssl_certificate = "certs/a.test.pem"\nssl_certificate_key = "certs/a.test.key"\n', ""),
                      {"app.py": APP}, start=False)
    done = srv.cli("-t")
    assert done.returncode == 1
    assert "server[0].location[0].proxy_ssl_trusted_certificate: cannot read " in done.stderr + done.stdout


class TlsUpstream:
    """An HTTPS upstream in the test process. It answers every request with the
    SNI name its connection carried (``-`` for none) and the connection's
    number, so a test sees which name each pooled connection was made for."""

    def __init__(self, cert: str, key: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = self._sni
        self.sni: dict[object, str | None] = {}
        self.names: list[str | None] = []      # the SNI of connection 1, 2, ...
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, sock: object, name: str | None, ctx: ssl.SSLContext) -> None:
        with self.lock:
            self.sni[sock] = name

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return          # closed at the end of the test
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as sock:
                with self.lock:
                    self.names.append(self.sni.pop(sock, None))
                    answer = f"{self.names[-1] or '-'} {len(self.names)}".encode()
                head = b""
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return
                    head += data
                    while b"\r\n\r\n" in head:
                        _, _, head = head.partition(b"\r\n\r\n")
                        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(answer), answer))
        except (OSError, ssl.SSLError):
            return       # a client that refused our certificate

    def close(self) -> None:
        self.listener.close()


SNI_APP = """
import pyresty

async def cosocket(r):
    name = r.args.get("name", [None])[0]
    try:
        sock = await pyresty.socket.connect("127.0.0.1", int(r.args["port"][0]), timeout=10,
                                            ssl=True, server_name=name)
    except pyresty.SocketError as exc:
        await r.print("refused: ", str(exc))
        return
    reused = sock.reused_times()
    await sock.send(b"GET / HTTP/1.1\\r\\nHost: up\\r\\n\\r\\n")
    head = await sock.receive_until(b"\\r\\n\\r\\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\\r\\n")[0])
    answer = await sock.receive(length)
    await sock.set_keepalive()
    await r.print(answer.decode(), " reused=", reused)
"""

SNI_CONFIG = """
workers = 1
[upstream."only.test"]
servers = ["127.0.0.1:{up}"]
[[server]]
listen = ["127.0.0.1:{port}"]
[[server.location]]
path = "/ip/"
proxy_pass = "https://127.0.0.1:{up}/"
proxy_ssl_trusted_certificate = "ca.pem"
[[server.location]]
path = "/named/"
proxy_pass = "https://only.test/"
proxy_ssl_trusted_certificate = "ca.pem"
[[server.location]]
path = "/a/"
proxy_pass = "https://127.0.0.1:{up}/"
proxy_ssl_trusted_certificate = "ca.pem"
proxy_ssl_name = "only.test"
[[server.location]]
path = "/b/"
proxy_pass = "https://127.0.0.1:{up}/"
proxy_ssl_trusted_certificate = "ca.pem"
proxy_ssl_name = "alt.test"
[[server.location]]
path = "/nosni/"
proxy_pass = "https://127.0.0.1:{up}/"
proxy_ssl_trusted_certificate = "ca.pem"
proxy_ssl_name = "only.test"
proxy_ssl_server_name = false
[[server.location]]
path = "/nosni-wrong/"
proxy_pass = "https://127.0.0.1:{up}/"
proxy_ssl_trusted_certificate = "ca.pem"
proxy_ssl_name = "wrong.test"
proxy_ssl_server_name = false
[[server.location]]
path = "= /cosocket"
content = "app:cosocket"
"""


@pytest.fixture
def sni_upstream(tmp_path: Path):
    """A TLS upstream whose certificate names only.test and alt.test (not 127.0.0.1)."""
    folder = tmp_path / "sni-certs"
    folder.mkdir()
    ca = trustme.CA()
    issued = ca.issue_cert("only.test", "alt.test")
    cert, key = folder / "up.pem", folder / "up.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    up = TlsUpstream(str(cert), str(key))
    yield up, folder / "ca.pem"
    up.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["compiled", "interpreted"])
def test_proxy_ssl_name_is_the_sni_sent_and_the_name_verified(make_server, sni_upstream,
                                                              mode: str) -> None:
    up, ca = sni_upstream
    # the cosockets verify against the "system" store: OpenSSL's SSL_CERT_FILE
    srv = make_server(SNI_CONFIG.replace("{up}", str(up.port)),
                      {"app.py": SNI_APP, "ca.pem": ca.read_text()},
                      expect_log=(r"certificate verify failed", r"Hostname mismatch"),
                      env={"PYRESTY_PURE_PYTHON": "1" if mode == "interpreted" else "",
                           "SSL_CERT_FILE": str(ca)})
    # by default the name is proxy_pass's host: 127.0.0.1 is not in the certificate
    assert _get(srv.port, "/ip/x")[0] == 502
    srv.wait_log(r"certificate verify failed.*IP address mismatch")
    # a named upstream's name is the default, as nginx's $proxy_host
    assert _get(srv.port, "/named/x") == (200, b"only.test 1")
    # two names to one peer: each location keeps its own pooled connection
    answers = [_get(srv.port, path) for path in ("/a/", "/b/", "/a/", "/b/", "/a/")]
    assert [status for status, _ in answers] == [200] * 5
    a = {body for (_, body), path in zip(answers, "ababa") if path == "a"}
    b = {body for (_, body), path in zip(answers, "ababa") if path == "b"}
    assert a == {b"only.test 2"} and b == {b"alt.test 3"}
    # no SNI, the name still checked (after the handshake)
    assert _get(srv.port, "/nosni/x") == (200, b"- 4")
    assert _get(srv.port, "/nosni-wrong/x")[0] == 502
    srv.wait_log(r"Hostname mismatch, certificate is not valid for 'wrong.test'")
    # cosockets: server_name is the SNI and the name checked; pools are kept apart by it
    refused = _get(srv.port, f"/cosocket?port={up.port}")
    assert refused[0] == 200 and refused[1].startswith(b"refused: ") \
        and b"certificate verify failed" in refused[1]
    assert _get(srv.port, f"/cosocket?port={up.port}&name=only.test") == (200, b"only.test 6 reused=0")
    assert _get(srv.port, f"/cosocket?port={up.port}&name=alt.test") == (200, b"alt.test 7 reused=0")
    assert _get(srv.port, f"/cosocket?port={up.port}&name=only.test") == (200, b"only.test 6 reused=1")
    # connections whose handshake failed (the peer refused the certificate) have no number
    assert up.names == ["only.test", "only.test", "alt.test", None, None, "only.test", "alt.test"]


def test_keys_readable_by_root_only_are_opened_before_workers_drop_privileges(tmp_path: Path) -> None:
    import os
    import pwd
    import shutil
    import tempfile

    from harness import Pyresty
    if os.geteuid() != 0:
        pytest.skip("needs root to change user")
    nobody = pwd.getpwnam("nobody")
    certs = Certs(tmp_path / "certs-src", ("a.test",))
    prefix = Path(tempfile.mkdtemp(prefix="pyresty-tls-user-"))   # readable by nobody
    os.chmod(prefix, 0o755)
    server = Pyresty(prefix, """
        workers = 1
        user = "nobody"
        [[server]]
        listen = "127.0.0.1:{port} ssl"
        ssl_certificate = "certs/a.test.pem"
        ssl_certificate_key = "certs/a.test.key"
        [[server.location]]
        path = "/"
        content = "app:who"
    """, {"app.py": APP, "certs/a.test.pem": Path(certs.cert("a.test")).read_text(),
          "certs/a.test.key": Path(certs.key("a.test")).read_text()}, ())
    try:
        os.chmod(prefix / "app.py", 0o644)
        # root's alone, as in /etc/ssl/private: nobody cannot read it
        os.chmod(prefix / "certs" / "a.test.key", 0o600)
        server.start()
        for generation in (1, 2):   # the first workers, then those of a reload
            status, body, _ = https(server.port, certs.client_context(), "a.test")
            assert status == 200 and body.startswith(b"server=a")
            if generation == 1:
                assert server.cli("-s", "reload").returncode == 0
                server.wait_log(r"generation 1\) exited")
        uids = {next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                     .splitlines() if line.startswith("Uid:"))
                for pid in server.processes() if "worker" in Path(f"/proc/{pid}/cmdline").read_text()}
        assert uids == {nobody.pw_uid}
    finally:
        server.stop()
        shutil.rmtree(prefix, ignore_errors=True)


HEALTH_CONFIG = """
workers = 1
[upstream."only.test"]
servers = ["127.0.0.1:{up}"]
health_check = {{ path = "/", interval = "200ms", timeout = "2s", healthy = 1, unhealthy = 1 }}
[[server]]
listen = ["127.0.0.1:{port}"]
[[server.location]]
path = "/"
proxy_pass = "https://only.test/"
proxy_ssl_trusted_certificate = "ca.pem"
"""


def test_active_health_checks_of_an_https_upstream_speak_tls_as_its_location(
        make_server, sni_upstream) -> None:
    up, ca = sni_upstream
    srv = make_server(HEALTH_CONFIG.replace("{up}", str(up.port)), {"ca.pem": ca.read_text()})
    # each check is a new TLS connection with the location's server name as SNI
    wait_for(lambda: len(up.names) >= 3, 10, "three health checks over TLS")
    assert set(up.names) == {"only.test"}
    assert _get(srv.port, "/x")[0] == 200
    assert "is down" not in srv.log_text()
