"""A proxied response's fields go to the client as the upstream's lines
(issue 12's fast path), and the bytes are the same when a header_filter reads
them (the parsed path): repeated fields, Set-Cookie, Connection-listed and
hop-by-hop fields dropped, chunked re-framed, HEAD, 204, 304, Content-Length
kept, obs-fold refused; HTTP/2 clients get no connection-specific field."""
from __future__ import annotations

import re

import pytest

import client
from h2client import H2Client
from upstreams import Upstream

pytestmark = pytest.mark.timeout(90)

MODES = {"compiled": None, "interpreted": {"PYRESTY_PURE_PYTHON": "1"}}

# the upstream's answers, by the last segment of the path
ANSWERS = {
    "nginx": b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 04:00:00 GMT\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\n"
             b"hello\n",
    "repeated": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-One: 1\r\nset-cookie: b=2\r\n"
                b"Vary: Accept\r\nVARY: Origin\r\nContent-Length: 2\r\n\r\nok",
    "listed": b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Foo\r\nX-Foo: secret\r\n"
              b"X-Bar: kept\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n"
               b"Trailer: X-T\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-T: t\r\n\r\n",
    # 1 MiB in 4 chunks: more than one read, so it streams (re-framed as chunks)
    "streamed": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-S: 1\r\n\r\n"
                + b"40000\r\n" + b"s" * 0x40000 + b"\r\n" + (b"40000\r\n" + b"t" * 0x40000 + b"\r\n") * 3
                + b"0\r\n\r\n",
    "head": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 50\r\n\r\n",
    "204": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 9\r\n\r\n",
    "untyped": b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 1\r\n\r\n!",
    "folded": b"HTTP/1.1 200 OK\r\nX-A: a\r\n  folded\r\nContent-Length: 0\r\n\r\n",
}
METHODS = {"head": "HEAD"}

FILTERS = '''
def read(r):
    r.headers_out.get("set-cookie")     # the fields read, not changed
    list(r.headers_out.fields())

def edit(r):
    r.headers_out["X-Filtered"] = "1"

def upper(r, chunk):
    return chunk.upper()
'''


@pytest.fixture(params=sorted(MODES))
def proxied(request, make_server):
    up = Upstream(lambda req: ANSWERS[req.target.rsplit("/", 1)[-1]])
    locations = "".join(f'''
        [[server.location]]
        path = "/{name}/"
        proxy_pass = "http://{up.addr}"
        {setting}
    ''' for name, setting in (("plain", ""), ("read", 'header_filter = "filters:read"'),
                              ("edit", 'header_filter = "filters:edit"'),
                              ("body", 'body_filter = "filters:upper"')))
    server = make_server(f'''
        workers = 0
        [[server]]
        listen = ["127.0.0.1:{{port}}", "127.0.0.1:{{port2}} http2"]
        {locations}
    ''', {"filters.py": FILTERS}, env=MODES[request.param])
    yield server
    up.close()


def fetch(server, where: str, case: str) -> client.Response:
    return client.request(server.port, METHODS.get(case, "GET"), f"/{where}/{case}")


def same_bytes(resp: client.Response) -> bytes:
    """The response's bytes, its Date value (the second it was sent) left out."""
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", resp.raw)


@pytest.mark.parametrize("case", sorted(set(ANSWERS) - {"folded"}))
def test_the_same_bytes_with_and_without_a_filter_reading_the_fields(proxied, case) -> None:
    plain = fetch(proxied, "plain", case)
    read = fetch(proxied, "read", case)
    assert plain.status < 500, plain
    if plain.chunked:       # streamed: the chunks are cut where the reads were
        assert same_bytes(plain).split(b"\r\n\r\n")[0] == same_bytes(read).split(b"\r\n\r\n")[0]
        assert plain.body == read.body
    else:
        assert same_bytes(plain) == same_bytes(read)
    # a field the filter adds is the only difference
    edited = fetch(proxied, "edit", case)
    head = same_bytes(plain).split(b"\r\n\r\n")[0]
    edited_head = same_bytes(edited).split(b"\r\n\r\n")[0]
    assert edited_head.count(b"\r\nX-Filtered: 1") == 1
    assert edited_head.replace(b"\r\nX-Filtered: 1", b"") == head


def test_what_the_client_sees(proxied) -> None:
    resp = fetch(proxied, "plain", "nginx")
    assert resp.body == b"hello\n" and resp.get("Content-Length") == "6"
    assert resp.get("Server").startswith("pyresty/") and resp.raw.count(b"\r\nDate: ") == 1
    assert b"nginx" not in resp.raw

    resp = fetch(proxied, "plain", "repeated")
    head = resp.raw.split(b"\r\n\r\n")[0]
    assert b"Set-Cookie: a=1; Path=/\r\nX-One: 1\r\nset-cookie: b=2\r\nVary: Accept\r\n" \
           b"VARY: Origin\r\n" in head

    resp = fetch(proxied, "plain", "listed")
    assert resp.get("X-Bar") == "kept" and resp.body == b"ok"
    assert b"X-Foo" not in resp.raw and b"Keep-Alive" not in resp.raw
    assert resp.get("Connection") == "keep-alive"

    # a chunked body that came with its head leaves with its length; trailers are dropped
    resp = fetch(proxied, "plain", "chunked")
    assert resp.body == b"abcdefg" and resp.get("Content-Length") == "7"
    assert b"Trailer" not in resp.raw and b"X-T" not in resp.raw
    assert b"Transfer-Encoding" not in resp.raw

    resp = fetch(proxied, "plain", "streamed")
    assert resp.chunked and resp.body == b"s" * 0x40000 + b"t" * 0xc0000
    assert resp.get("X-S") == "1" and resp.raw.count(b"Transfer-Encoding") == 1

    resp = fetch(proxied, "plain", "head")
    assert resp.get("Content-Length") == "50" and resp.body == b""

    resp = fetch(proxied, "plain", "204")
    assert resp.status == 204 and resp.get("X-A") == "1"
    assert resp.get("Content-Length") is None and resp.get("Content-Type") is None

    resp = fetch(proxied, "plain", "304")
    assert resp.status == 304 and resp.get("ETag") == '"e"' and resp.body == b""

    resp = fetch(proxied, "plain", "untyped")
    assert resp.status == 201 and resp.get("Content-Type") == "text/plain"


def test_a_body_filter_reframes_the_body(proxied) -> None:
    resp = fetch(proxied, "body", "nginx")
    assert resp.body == b"HELLO\n" and resp.get("Content-Type") == "text/plain"
    assert resp.get("Content-Length") == "6"      # the length of what the filter returned
    resp = fetch(proxied, "body", "streamed")
    assert resp.body == b"S" * 0x40000 + b"T" * 0xc0000 and resp.chunked


def test_an_obs_fold_from_the_upstream_is_a_502(proxied) -> None:
    """RFC 9112 §5.2: a proxy rejects a folded field (or unfolds it); llhttp refuses it."""
    assert fetch(proxied, "plain", "folded").status == 502
    proxied.wait_log(r"upstream sent an invalid response")


def test_http2_clients_get_no_connection_specific_field(proxied) -> None:
    h2 = H2Client(proxied.ports[1])
    try:
        for case in ("nginx", "listed", "chunked", "repeated"):
            answer = h2.get(f"/plain/{case}")
            assert answer.status == 200, case
            names = set(answer.headers)
            assert not names & {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                                b"proxy-connection", b"trailer", b"x-foo"}, (case, names)
            assert answer.headers[b"server"].startswith(b"pyresty/")
        assert h2.get("/plain/chunked").body == b"abcdefg"
        assert len(h2.get("/plain/streamed", timeout=30).body) == 0x100000
        assert h2.get("/read/nginx").body == b"hello\n"
    finally:
        h2.close()


EARLIER = '''
async def mark(r):
    r.headers_out["X-Gateway"] = "pyresty"
    r.headers_out["X-One"] = "from the gateway"
    r.headers_out["Content-Type"] = "application/x-not-the-body"
'''


def test_fields_set_before_the_proxy_stay_on_the_proxied_response(make_server) -> None:
    """limit_req's RateLimit-* and an access handler's fields reach the client
    of a proxied location (they were dropped for the upstream's), in place of
    the upstream's of the same name; the body's own fields stay the upstream's."""
    up = Upstream(lambda req: ANSWERS[req.target.rsplit("/", 1)[-1]])
    server = make_server(f'''
        workers = 0
        [shared]
        limits = "1m"
        [limit_req.api]
        dict = "limits"
        key = "remote_addr"
        rate = "600r/m"
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "/limited/"
        proxy_pass = "http://{up.addr}"
        limit_req = {{{{ zone = "api", burst = 100, nodelay = true }}}}
        [[server.location]]
        path = "/marked/"
        proxy_pass = "http://{up.addr}"
        access = "earlier:mark"
    ''', {"earlier.py": EARLIER})
    try:
        resp = client.request(server.port, "GET", "/limited/nginx")
        assert resp.status == 200 and resp.body == b"hello\n"
        assert resp.get("RateLimit-Limit") == "101" and resp.get("RateLimit-Remaining") == "100"
        assert resp.get("RateLimit-Reset") is not None
        assert resp.get("Content-Type") == "text/plain" and resp.get("Content-Length") == "6"

        resp = client.request(server.port, "GET", "/marked/repeated")
        assert resp.body == b"ok" and resp.get("X-Gateway") == "pyresty"
        assert resp.headers.get_all("X-One") == ["from the gateway"]
        assert resp.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2"]
        assert resp.get("Content-Type") == "text/plain"     # the default: the upstream sent none
    finally:
        up.close()
