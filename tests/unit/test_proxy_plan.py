"""A proxied location's request line and fields (upstream/proxy.py ProxyPlan), in-process."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pyresty.config.model import Config, Location, Peer, Server, Listen, Upstream
from pyresty.upstream.proxy import BalancerCall, ProxyPlan

pytestmark = pytest.mark.timeout(30)


@dataclass
class Req:
    """The request fields the plan reads (the real Request has the same names)."""
    uri: str
    method: str = "GET"
    fields: list = field(default_factory=list)
    client_addr: str = "10.1.2.3"
    scheme: str = "http"

    @property
    def path(self) -> str:
        from urllib.parse import unquote
        return unquote(self.uri.partition("?")[0])

    @property
    def query(self) -> str:
        return self.uri.partition("?")[2]


def head(p: ProxyPlan, r: Req, target: str, length: int | None) -> bytes:
    """The head ``proxy`` sends for ``r`` (ForwardHead, built once per location)."""
    return p.forward.build(r.method, target, r.fields, r.client_addr, r.scheme, length)


def plan(proxy_pass: str, kind: str = "", pattern: str = "/a/", **keys) -> ProxyPlan:
    loc = Location(kind=kind, pattern=pattern, proxy_pass=proxy_pass, key="server[0].location[0]",
                   **keys)
    up = Upstream(name="backend", servers=(Peer("127.0.0.1", 9001), Peer("127.0.0.1", 9002)))
    config = Config(path="t.toml", prefix="/", upstreams=(up,),
                    servers=(Server(listen=(Listen("127.0.0.1", 8080),), locations=(loc,)),))
    return ProxyPlan(config, loc, lambda *a, **k: None)


@pytest.mark.parametrize("proxy_pass, kind, pattern, uri, target", [
    ("http://backend", "", "/a/", "/a/x?q=1", "/a/x?q=1"),
    ("http://backend/", "", "/a/", "/a/x?q=1", "/x?q=1"),
    ("http://backend/b/", "", "/a/", "/a/x/y", "/b/x/y"),
    ("http://backend/b", "^~", "/a/", "/a/x", "/bx"),
    ("http://backend/other", "=", "/exact", "/exact?z=2", "/other?z=2"),
    ("http://backend/b/", "~", "^/a", "/a/x", "/a/x"),
    ("http://127.0.0.1:9000/b/", "", "/a/", "/a/%41", "/b/%41"),
])
def test_target(proxy_pass: str, kind: str, pattern: str, uri: str, target: str) -> None:
    r = Req(uri)
    assert plan(proxy_pass, kind, pattern).target(r.uri, r.path, r.query) == target


def test_head_fields() -> None:
    p = plan("http://backend", proxy_set_header=(("X-Debug", "1"), ("User-Agent", "")))
    r = Req("/a/x", "POST", [(b"Host", b"front"), (b"User-Agent", b"curl"),
                             (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
                             (b"X-Forwarded-For", b"1.1.1.1"), (b"Accept", b"*/*"),
                             (b"Content-Length", b"3"), (b"Expect", b"100-continue"),
                             (b"TE", b"trailers"), (b"Upgrade", b"h2c")])
    text = head(p, r, "/a/x", 3).decode()
    lines = text.split("\r\n")
    assert lines[0] == "POST /a/x HTTP/1.1"
    assert "Host: backend" in lines and "X-Debug: 1" in lines and "Accept: */*" in lines
    assert "X-Forwarded-For: 1.1.1.1, 10.1.2.3" in lines
    assert "X-Real-IP: 10.1.2.3" in lines and "X-Forwarded-Proto: http" in lines
    assert "Content-Length: 3" in lines
    for gone in ("User-Agent", "X-Hop", "Connection", "Expect", "TE", "Upgrade", "Host: front"):
        assert not any(line.startswith(gone) for line in lines), gone
    assert text.endswith("\r\n\r\n")


def test_head_without_length_is_chunked_and_http10_closes() -> None:
    p = plan("http://backend", proxy_http_version="1.0")
    wire = head(p, Req("/a/x", "POST"), "/a/x", None)
    assert b"Transfer-Encoding: chunked\r\n" in wire
    assert wire.endswith(b"Connection: close\r\n\r\n")
    assert b"Content-Length" not in head(plan("http://backend"), Req("/a/"), "/a/", 0)


def test_tries_are_one_per_peer_capped() -> None:
    assert plan("http://backend").max_tries == 2
    assert plan("http://backend", proxy_next_upstream_tries=1).max_tries == 1


def test_set_more_tries_is_capped() -> None:
    b = BalancerCall("dyn", cap=3)
    b.set_more_tries(5)
    assert b.more == 2
    b.set_current_peer("127.0.0.1", 80)
    assert b.peer == ("127.0.0.1", 80)
    for bad in (("h", 0), ("h", 65536), ("", 80), (None, 80), ("h", "80"), ("h", True)):
        with pytest.raises(ValueError):
            b.set_current_peer(*bad)
