"""Server and location selection, as nginx does it."""
from __future__ import annotations

import pytest

from pyresty.config.model import Listen, Location, Server
from pyresty.server.router import LocationTable, Router, normalize_host

LISTEN = Listen("127.0.0.1", 8080)
OTHER = Listen("127.0.0.1", 8081)


def loc(spec: str) -> Location:
    """"= /x", "^~ /x", "~ re", "~* re" or "/x", as in the config file."""
    kind, _, pattern = spec.partition(" ")
    if not pattern:
        kind, pattern = "", spec
    return Location(kind=kind, pattern=pattern, key=spec)


def server(*locations: str, names: tuple[str, ...] = (), listen: tuple[Listen, ...] = (LISTEN,),
           key: str = "") -> Server:
    return Server(listen=listen, server_name=names,
                  locations=tuple(loc(s) for s in locations), key=key)


# The example under the `location` directive in nginx's documentation.
NGINX_DOC = server("= /", "/", "/documents/", "^~ /images/", r"~* \.(gif|jpg|jpeg)$")


@pytest.mark.parametrize("path, expected", [
    ("/", "= /"),                                        # A
    ("/index.html", "/"),                                # B
    ("/documents/document.html", "/documents/"),         # C
    ("/images/1.gif", "^~ /images/"),                    # D
    ("/documents/1.jpg", r"~* \.(gif|jpg|jpeg)$"),       # E
])
def test_nginx_documentation_example(path: str, expected: str) -> None:
    assert LocationTable(NGINX_DOC.locations).match(path).key == expected


@pytest.mark.parametrize("locations, path, expected", [
    # "~*" ignores case, "~" does not
    ((r"~* \.PNG$",), "/a/b.png", r"~* \.PNG$"),
    ((r"~ \.PNG$", "/"), "/a/b.png", "/"),
    ((r"~ \.png$", "/"), "/a/B.PNG", "/"),
    # regexes in file order, the first match wins (not the longest)
    ((r"~ ^/a", r"~ ^/a/b"), "/a/b/c", r"~ ^/a"),
    ((r"~ ^/a/b", r"~ ^/a"), "/a/b/c", r"~ ^/a/b"),
    # regex search is unanchored
    ((r"~ api",), "/v1/api/x", r"~ api"),
    # a regex beats a longer plain prefix
    (("/a/b/c/", r"~ ^/a"), "/a/b/c/d", r"~ ^/a"),
    # ... but not a ^~ prefix, even a shorter ^~ when it is the longest match
    (("^~ /a/", r"~ ^/a"), "/a/x", "^~ /a/"),
    # a longer plain prefix shadows a shorter ^~, so regexes are tried
    (("^~ /a/", "/a/b/", r"~ ^/a"), "/a/b/x", r"~ ^/a"),
    # the longest prefix wins whatever the file order
    (("/a/", "/a/b/", "/"), "/a/b/c", "/a/b/"),
    (("/", "/a/b/", "/a/"), "/a/bc", "/a/"),
    # prefixes are not path segments: "/doc" matches "/documents"
    (("/doc",), "/documents", "/doc"),
    # "=" is exact only, and beats everything
    (("= /x", "/x"), "/x/", "/x"),
    (("^~ /x", "= /x"), "/x", "= /x"),
    (("= /x", r"~ x"), "/x", "= /x"),
    # prefix matching is case-sensitive
    (("/A/", "/"), "/a/b", "/"),
    # nothing matches
    (("/a/", "= /b"), "/c", None),
    (("/a/", r"~ \.php$"), "/b.html", None),
    ((), "/", None),
    # a prefix longer than the path
    (("/abcdef",), "/abc", None),
])
def test_location_matching(locations: tuple[str, ...], path: str, expected: str | None) -> None:
    srv = server(*locations)
    found = LocationTable(srv.locations).match(path)
    assert (found.key if found else None) == expected
    # built with a value per location (the server's compiled routes), it
    # chooses the same location and returns that location's value
    values = [f"route {loc.key}" for loc in srv.locations]
    chosen = LocationTable(srv.locations, values).match(path)
    assert chosen == (f"route {expected}" if expected is not None else None)


def test_router_returns_the_object_given_for_each_server() -> None:
    a = server(names=("a.test",), key="a")
    b = server(names=("b.test",), key="b")
    router = Router([a, b], ["vhost a", "vhost b"])
    assert router.server_for(LISTEN, "b.test") == "vhost b"
    assert router.server_for(LISTEN, "other.test") == "vhost a"
    assert router.default(LISTEN) == "vhost a"
    assert router.shared(LISTEN)
    assert not Router([a]).shared(LISTEN)


NAMED = [
    server(names=("default.test",), key="default"),
    server(names=("example.com", "www.example.com"), key="exact"),
    server(names=("*.example.com",), key="star"),
    server(names=("*.api.example.com",), key="star-api"),
    server(names=("mail.*",), key="mail"),
    server(names=("mail.example.*",), key="mail-example"),
    server(names=(r"~^www\d+\.example\.org$",), key="regex-www"),
    server(names=(r"~^(?P<sub>.+)\.example\.org$",), key="regex-any"),
    server(names=(".dot.test",), key="dot"),
    server(names=("example.com",), key="conflict"),       # first one keeps the name
]


@pytest.mark.parametrize("host, expected", [
    ("example.com", "exact"),
    ("www.example.com", "exact"),                # exact beats "*.example.com"
    ("a.example.com", "star"),
    ("a.b.example.com", "star"),
    ("x.api.example.com", "star-api"),           # longest leading wildcard
    ("api.example.com", "star"),
    ("mail.foo.net", "mail"),
    ("mail.example.net", "mail-example"),        # longest trailing wildcard
    ("mail.example.com", "star"),                # leading beats trailing
    ("www12.example.org", "regex-www"),          # regexes in file order
    ("cdn.example.org", "regex-any"),
    ("dot.test", "dot"),                         # ".dot.test" is also exact
    ("x.dot.test", "dot"),
    ("unknown.test", "default"),                 # no match: first server
    ("example.com:8080", "exact"),               # port stripped
    ("EXAMPLE.Com", "exact"),                    # case-insensitive
    ("WWW7.EXAMPLE.ORG:80", "regex-www"),
    ("example.com.", "exact"),                   # trailing dot
    ("", "default"),
    (None, "default"),
    ("[::1]:8080", "default"),
])
def test_server_name(host: str | None, expected: str) -> None:
    assert Router(NAMED).server_for(LISTEN, host).key == expected


def test_default_server_is_per_listen() -> None:
    a = server(names=("a.test",), listen=(LISTEN,), key="a")
    b = server(names=("b.test",), listen=(OTHER, LISTEN), key="b")
    c = server(names=("c.test",), listen=(OTHER,), key="c")
    router = Router([a, b, c])
    assert router.server_for(LISTEN, "zzz").key == "a"
    assert router.server_for(OTHER, "zzz").key == "b"
    assert router.server_for(OTHER, "c.test").key == "c"
    assert router.server_for(OTHER, "a.test").key == "b"   # a does not listen there
    assert router.server_for(LISTEN, "b.test").key == "b"


def test_single_server_takes_every_host() -> None:
    only = server(names=("only.test",), key="only")
    assert Router([only]).server_for(LISTEN, "other.test") is only


def test_empty_name_claims_requests_without_host() -> None:
    router = Router([server(key="first"), server(names=("",), key="nohost")])
    assert router.server_for(LISTEN, None).key == "nohost"
    assert router.server_for(LISTEN, "x.test").key == "first"


def test_unknown_listen_raises() -> None:
    with pytest.raises(KeyError):
        Router([server()]).server_for(OTHER, "x")


@pytest.mark.parametrize("host, expected", [
    ("Example.COM:443", "example.com"),
    ("example.com.", "example.com"),
    ("[::1]:80", "[::1]"),
    ("[::1]", "[::1]"),
    ("127.0.0.1:8080", "127.0.0.1"),
])
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


def test_host_cache_is_bounded_and_consistent() -> None:
    from pyresty.server import router as module
    r = Router(NAMED)
    for i in range(module.HOST_CACHE_SIZE * 2 + 5):
        assert r.server_for(LISTEN, f"h{i}.example.com").key == "star"
    assert r.server_for(LISTEN, "example.com").key == "exact"
    assert r.server_for(LISTEN, "example.com").key == "exact"
    assert len(r._names[LISTEN].cache) <= module.HOST_CACHE_SIZE
