"""The proxy's location keys and the upstream's hash_key (issue 12): values in, objects or errors out."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pyresty.config import load
from pyresty.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

BASE = '''
[upstream.backend]
servers = ["127.0.0.1:9001"]
{upstream}
[[server]]
listen = "127.0.0.1:8080"
[[server.location]]
path = "/"
proxy_pass = "http://backend"
{location}
'''


def _load(tmp_path: Path, location: str = "", upstream: str = ""):
    path = tmp_path / "pyresty.toml"
    path.write_text(textwrap.dedent(BASE).format(location=location, upstream=upstream))
    return load(str(path))


def _errors(tmp_path: Path, location: str = "", upstream: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, location, upstream)
    return info.value.problems


def test_defaults(tmp_path: Path) -> None:
    loc = _load(tmp_path).servers[0].locations[0]
    assert loc.proxy_set_header == ()
    assert loc.proxy_request_buffering is True
    assert loc.proxy_next_upstream_tries == 0
    assert loc.proxy_next_upstream_timeout == 0.0
    assert loc.proxy_http_version == "1.1"


def test_values(tmp_path: Path) -> None:
    loc = _load(tmp_path, '''
proxy_set_header = { Host = "api.internal", X-Debug = "" }
proxy_request_buffering = false
proxy_next_upstream_tries = 3
proxy_next_upstream_timeout = "5s"
proxy_http_version = "1.0"
''').servers[0].locations[0]
    assert loc.proxy_set_header == (("Host", "api.internal"), ("X-Debug", ""))
    assert loc.proxy_request_buffering is False
    assert loc.proxy_next_upstream_tries == 3
    assert loc.proxy_next_upstream_timeout == 5.0
    assert loc.proxy_http_version == "1.0"


@pytest.mark.parametrize("line, message", [
    ('proxy_set_header = "Host: x"', 'proxy_set_header: invalid value "Host: x" (expected a table'),
    ('proxy_set_header = { "Bad Name" = "x" }', 'proxy_set_header: invalid value "Bad Name"'),
    ('proxy_set_header = { X = 1 }', "proxy_set_header: X: invalid value 1"),
    ('proxy_next_upstream_tries = -1', "proxy_next_upstream_tries: invalid value -1"),
    ('proxy_http_version = "2"', 'proxy_http_version: invalid value "2" (expected one of 1.0, 1.1)'),
    ('proxy_request_buffering = "no"', "proxy_request_buffering: invalid value"),
])
def test_location_errors_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    problems = _errors(tmp_path, line)
    assert any(f"server[0].location[0].{message}" in p for p in problems), problems
    assert all(p.startswith(str(tmp_path / "pyresty.toml") + ": ") or p.startswith("pyresty.toml")
               or "pyresty.toml" in p for p in problems)


@pytest.mark.parametrize("key", ["remote_addr", "uri", "request_uri", "header:X-User",
                                 "arg:id", "cookie:session"])
def test_hash_keys(tmp_path: Path, key: str) -> None:
    up = _load(tmp_path, upstream=f'balancer = "hash"\nhash_key = "{key}"').upstreams[0]
    assert up.hash_key == key


@pytest.mark.parametrize("key", ["host", "header:", "cookie:a b", "arg"])
def test_bad_hash_keys(tmp_path: Path, key: str) -> None:
    problems = _errors(tmp_path, upstream=f'balancer = "hash"\nhash_key = "{key}"')
    assert any("upstream.backend.hash_key: invalid value" in p and "cookie:NAME" in p
               for p in problems), problems


def test_a_bare_host_is_port_80(tmp_path: Path) -> None:
    path = tmp_path / "pyresty.toml"
    path.write_text(textwrap.dedent('''
        [upstream.dyn]
        servers = ["0.0.0.1"]
        balancer = "lb:pick"
        [[server]]
        listen = "127.0.0.1:8080"
        [[server.location]]
        path = "/"
        proxy_pass = "http://dyn"
    '''))
    peer = load(str(path)).upstreams[0].servers[0]
    assert (peer.host, peer.port) == ("0.0.0.1", 80)
