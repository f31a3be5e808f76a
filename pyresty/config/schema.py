"""What each config value must be (SPEC §3).

A validator takes the raw TOML value and returns the typed value, or raises
``ValueError`` whose message is the reason only (see ``problems.py``). The
section tables at the bottom (``TOP``, ``SERVER``, ``LOCATION``, ...) name
every key a section may hold, which is also what unknown-key hints are drawn
from; ``NESTED`` marks the keys the loader walks itself (sub-tables, arrays of
tables, and keys whose meaning depends on other keys).

Rules that involve more than one value (an upstream that must exist, two
servers with the same name) live in the loader, which sees the whole file.
"""
from __future__ import annotations

import ipaddress
import keyword
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pyresty.config.model import Listen
from pyresty.config.problems import invalid, show
from pyresty.config.units import parse_duration, parse_size

Validator = Callable[[Any], Any]

LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
PHASES = ("rewrite", "access", "content", "header_filter", "body_filter", "log")
BALANCERS = ("round_robin", "least_conn", "hash")
NEXT_UPSTREAM = (
    "error", "timeout", "invalid_header", "http_500", "http_502", "http_503",
    "http_504", "http_403", "http_404", "http_429", "non_idempotent", "off",
)

# The smallest shared dict: lua_shared_dict refuses sizes below 8k
# ("invalid lua shared dict size"), because a smaller zone cannot hold its own
# bookkeeping pages; an embedded store here has the same per-page overhead.
MIN_SHARED_SIZE = 8 * 1024

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_UPSTREAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_LOCATION = re.compile(r"(=|\^~|~\*|~)?\s*(.*)", re.DOTALL)
_PROXY_URL = re.compile(r"https?://([^/?#]*)(.*)", re.DOTALL)

_LISTEN_EXPECTED = '"host:port", "port" or "[ipv6]:port"'
_PROXY_EXPECTED = '"http://upstream-name[/uri]" or "http://host:port[/uri]"'
_LOCATION_EXPECTED = 'a path starting with "/", after "=", "^~" or nothing; or "~ regex" / "~* regex"'
_BACKEND_EXPECTED = '"embedded" or a "redis://host:port/db", "rediss://..." or "unix:///path" URL'


class _Nested:
    """Marks a key that the loader reads itself."""

    def __repr__(self) -> str:
        return "NESTED"


NESTED: Any = _Nested()


# --- scalars -----------------------------------------------------------------

def integer(minimum: int) -> Validator:
    """An int >= ``minimum``; booleans are not integers even though Python says so."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise invalid(value, f"an integer >= {minimum}")
        return value
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(value, "true or false")
    return value


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise invalid(value, "a non-empty string")
    return value


def strings(*, min_items: int) -> Validator:
    """A string, or an array of at least ``min_items`` non-empty strings."""
    expected = "a string or an array of strings"
    def check(value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or len(items) < min_items:
            raise invalid(value, expected)
        if not all(isinstance(item, str) and item for item in items):
            raise invalid(value, expected)
        return tuple(items)
    return check


def one_of(choices: tuple[str, ...]) -> Validator:
    def check(value: Any) -> str:
        if value not in choices:
            raise invalid(value, "one of " + ", ".join(choices))
        return str(value)
    return check


def duration(*, positive: bool) -> Validator:
    """Seconds as a float; ``positive`` refuses 0 (a timeout of 0 would fire at once)."""
    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise invalid(value, "a duration > 0")
        return seconds
    return check


def size(minimum: int = 0, shown: str = "0") -> Validator:
    """Bytes as an int, at least ``minimum`` (written ``shown`` in the reason)."""
    def check(value: Any) -> int:
        nbytes = parse_size(value)
        if nbytes < minimum:
            raise invalid(value, f"a size >= {shown}")
        return nbytes
    return check


def workers(value: Any) -> int:
    """An int >= 0, or "auto": one worker per CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(value, 'an integer >= 0 or "auto"')
    return value


def handler(value: Any) -> str:
    """``"package.module:function"``; only the syntax here, ``pyresty -t`` imports it."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise invalid(value, '"module.path:function"')
    module, function = value.split(":")
    if not all(_identifier(part) for part in [*module.split("."), function]):
        raise invalid(value, '"module.path:function"')
    return value


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def dict_name(value: str) -> str:
    """A shared dict name: what ``pyresty.shared["name"]`` and metrics labels use."""
    if not _NAME.fullmatch(value):
        raise ValueError('invalid name (expected a letter or "_", then letters, digits, "_" or "-")')
    return value


def upstream_name(value: str) -> str:
    """An upstream name; no ":" so ``http://NAME`` can never be read as host:port."""
    if not _UPSTREAM_NAME.fullmatch(value):
        raise ValueError(
            'invalid upstream name (expected a letter or "_", then letters, digits, "_", "-" or ".")'
        )
    return value


def http_path(value: Any) -> str:
    """A request target sent as is (a health check's): no space or control byte (RFC 9112 §3)."""
    if not isinstance(value, str) or not value.startswith("/") \
            or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        raise invalid(value, 'a path starting with "/", without spaces or control characters')
    return value


def http_statuses(value: Any) -> tuple[int, ...]:
    """A non-empty array of HTTP status codes (a health check's ``valid_statuses``)."""
    if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599 for v in value):
        raise invalid(value, "an array of status codes 100..599")
    return tuple(dict.fromkeys(value))


def host_header(value: Any) -> str:
    """A ``Host`` field value sent as is: no space or control character."""
    if not isinstance(value, str) or not value \
            or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        raise invalid(value, "a host name, without spaces or control characters")
    return value


# --- TLS ---------------------------------------------------------------------

SSL_PROTOCOLS = ("TLSv1.2", "TLSv1.3")   # older ones are broken (RFC 8996); OpenSSL 3 refuses them


def ssl_protocols(value: Any) -> tuple[str, ...]:
    """``["TLSv1.2", "TLSv1.3"]``, a subset of the versions still considered safe."""
    items = [value] if isinstance(value, str) else value
    expected = "an array of " + " and ".join(f'"{v}"' for v in SSL_PROTOCOLS)
    if not isinstance(items, list) or not items or not all(v in SSL_PROTOCOLS for v in items):
        raise invalid(value, expected)
    return tuple(sorted(set(items)))


def ssl_name(value: Any) -> str:
    """A server name to send as SNI and check a certificate against: a DNS name
    (letters, digits, ``-``, ``_``, dots) or an IP address, without a port."""
    if isinstance(value, str) and value:
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            labels = value.rstrip(".").split(".")
            if all(label and len(label) < 64 and all(c.isascii() and (c.isalnum() or c in "-_")
                                                      for c in label) for label in labels):
                return value
    raise invalid(value, "a host name or IP address, without a port")


# --- addresses ---------------------------------------------------------------

def listen(value: Any) -> Listen:
    """``"host:port"``, ``"port"`` / ``port`` (all IPv4 addresses), ``"[::1]:port"``, ``"*:port"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Listen("0.0.0.0", _port(value, value, minimum=0))
    if not isinstance(value, str):
        raise invalid(value, _LISTEN_EXPECTED)
    if value.isdigit():
        return Listen("0.0.0.0", _port(value, int(value), minimum=0))
    host, port = _split_host_port(value, _LISTEN_EXPECTED, minimum=0)
    return Listen("0.0.0.0" if host == "*" else host, port)


LISTEN_FLAGS = ("ssl", "http2")


def listen_with_flags(value: Any) -> Listen:
    """A server's address with its flags: ``"0.0.0.0:8443 ssl"``, ``"8080 http2"``."""
    if not isinstance(value, str) or " " not in value.strip():
        return listen(value)
    address, *flags = value.split()
    try:
        plain = listen(address)
    except ValueError:
        raise invalid(value, _LISTEN_EXPECTED) from None
    for flag in flags:
        if flag not in LISTEN_FLAGS:
            raise ValueError(f"unknown listen flag {show(flag)} (expected {' or '.join(LISTEN_FLAGS)})")
    return Listen(plain.host, plain.port, ssl="ssl" in flags, http2="http2" in flags)


def listens(value: Any) -> tuple[Listen, ...]:
    """One address or an array of them, without repeats."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise invalid(value, _LISTEN_EXPECTED)
    found: list[Listen] = []
    for item in items:
        address = listen_with_flags(item)
        if address in found:
            raise ValueError(f"duplicate listen {address}")
        found.append(address)
    return tuple(found)


def peer_address(value: Any) -> tuple[str, int]:
    """An upstream server: ``"host:port"`` or ``"[ipv6]:port"``, port 1..65535;
    a bare IPv4 address or name means port 80, as nginx's ``server`` does
    (seed 004's placeholder ``0.0.0.1`` for a function balancer)."""
    if not isinstance(value, str):
        raise invalid(value, '"host:port"')
    if value and ":" not in value and _valid_host(value) and value != "*":
        return value, 80
    return _split_host_port(value, '"host:port"', minimum=1)


def _split_host_port(value: str, expected: str, *, minimum: int) -> tuple[str, int]:
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not _is_ipv6(host):
            raise invalid(value, expected)
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            raise invalid(value, "an IPv6 address in brackets, e.g. \"[::1]:8080\"")
        if not sep or not _valid_host(host):
            raise invalid(value, expected)
    if not port.isdigit():
        raise invalid(value, expected)
    return host, _port(value, int(port), minimum=minimum)


def _port(value: Any, port: int, *, minimum: int) -> int:
    if not minimum <= port <= 65535:
        raise invalid(value, f"a port {minimum}..65535")
    return port


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _valid_host(host: str) -> bool:
    if host == "*":
        return True
    if _DOTTED_DIGITS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.fullmatch(host))


def server_names(value: Any) -> tuple[str, ...]:
    """Names matched against Host; lowercased (Host is case-insensitive) except ``~regex`` ones."""
    names = strings(min_items=0)(value)
    for item in names:
        if any(ch.isspace() for ch in item):
            raise invalid(item, "a server name without spaces")
        if item.startswith("~"):
            _compile(item[1:], re.IGNORECASE)
    return tuple(item if item.startswith("~") else item.lower() for item in names)


# --- upstreams and shared dicts ----------------------------------------------

def balancer(value: Any) -> str:
    if value in BALANCERS:
        return str(value)
    try:
        return handler(value)
    except ValueError:
        raise invalid(value, 'round_robin, least_conn, hash or "module:function"') from None


def shared_backend(value: Any) -> str:
    """Where a shared dict lives: on this machine ("embedded") or in a Redis server."""
    if value == "embedded":
        return "embedded"
    if not isinstance(value, str):
        raise invalid(value, _BACKEND_EXPECTED)
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise invalid(value, _BACKEND_EXPECTED) from None
    if url.scheme in ("redis", "rediss") and url.hostname:
        return value
    if url.scheme == "unix" and url.path.startswith("/"):
        return value
    raise invalid(value, _BACKEND_EXPECTED)


# --- traffic control (SPEC §8c) --------------------------------------------

LIMIT_LOG_LEVELS = ("info", "notice", "warn", "error")   # nginx's limit_req_log_level
LIMIT_FAIL = ("open", "closed")
_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*r/(s|m)")
_RATE_EXPECTED = 'a rate like "10r/s" or "600r/m"'
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")   # an RFC 9110 token
_KEY_EXPECTED = 'remote_addr, "header:NAME", "arg:NAME" or "module:function"'


def limit_rate(value: Any) -> float:
    """nginx's ``rate=``: ``"10r/s"`` or ``"600r/m"``, as requests per second (> 0)."""
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise invalid(value, _RATE_EXPECTED)
    per_second = float(match.group(1)) / (60.0 if match.group(2) == "m" else 1.0)
    if per_second <= 0:
        raise invalid(value, _RATE_EXPECTED + " above 0")
    return per_second


def limit_key(value: Any) -> str:
    """What a zone counts by: the client address, a request header, a query
    argument, or an ``async def key(r) -> str | None`` of the user's."""
    if value == "remote_addr":
        return "remote_addr"
    if isinstance(value, str) and value.startswith(("header:", "arg:")):
        name = value.partition(":")[2]
        if value.startswith("header:") and not _HEADER_NAME.fullmatch(name):
            raise invalid(value, _KEY_EXPECTED + " (NAME: a header field name)")
        if value.startswith("arg:") and not name:
            raise invalid(value, _KEY_EXPECTED)
        return value
    try:
        return handler(value)
    except ValueError:
        raise invalid(value, _KEY_EXPECTED) from None


def status_code(low: int, high: int) -> Validator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(value, f"a status code {low}..{high}")
        return value
    return check


# --- locations and proxying --------------------------------------------------

def location_path(value: Any) -> tuple[str, str]:
    """nginx's location syntax -> (kind, pattern); regexes are compiled here to catch errors."""
    if not isinstance(value, str):
        raise invalid(value, _LOCATION_EXPECTED)
    match = _LOCATION.fullmatch(value.strip())
    assert match is not None  # the pattern accepts any string
    kind, pattern = match.group(1) or "", match.group(2)
    if kind in ("~", "~*"):
        if not pattern:
            raise invalid(value, f'a regex after "{kind}"')
        _compile(pattern, re.IGNORECASE if kind == "~*" else 0)
    elif not pattern.startswith("/"):
        raise invalid(value, _LOCATION_EXPECTED)
    return kind, pattern


def _compile(pattern: str, flags: int) -> None:
    try:
        re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"invalid regex {show(pattern)}: {exc}") from None


def proxy_pass(value: Any) -> str:
    """``http://NAME[/uri]`` or ``http://host:port[/uri]``; whether NAME exists is the loader's check."""
    if not isinstance(value, str):
        raise invalid(value, _PROXY_EXPECTED)
    match = _PROXY_URL.fullmatch(value)
    if match is None or not match.group(1):
        raise invalid(value, _PROXY_EXPECTED)
    authority, uri = match.groups()
    if uri and not uri.startswith("/"):
        raise invalid(value, _PROXY_EXPECTED)
    if ":" in authority:
        peer_address(authority)
    elif not _UPSTREAM_NAME.fullmatch(authority):
        raise invalid(value, _PROXY_EXPECTED)
    return value


def proxy_upstream(url: str) -> str | None:
    """The upstream a valid ``proxy_pass`` names, or None when it gives host:port."""
    match = _PROXY_URL.fullmatch(url)
    authority = match.group(1) if match else ""
    return None if ":" in authority else authority


def next_upstream(value: Any) -> tuple[str, ...]:
    """When to try the next peer (nginx's proxy_next_upstream); "off" stands alone."""
    items = strings(min_items=1)(value)
    for item in items:
        if item not in NEXT_UPSTREAM:
            raise invalid(item, "some of " + ", ".join(NEXT_UPSTREAM))
    if "off" in items and len(items) > 1:
        raise invalid(value, '"off" alone, or conditions without "off"')
    return tuple(dict.fromkeys(items))


_HASH_KEY_EXPECTED = ('remote_addr, uri, request_uri, "header:NAME", "arg:NAME" or '
                     '"cookie:NAME"')


def hash_key(value: Any) -> str:
    """What ``balancer = "hash"`` hashes, computed from each request."""
    if value in ("remote_addr", "uri", "request_uri"):
        return str(value)
    if isinstance(value, str) and value.startswith(("header:", "arg:", "cookie:")):
        name = value.partition(":")[2]
        if _HEADER_NAME.fullmatch(name):
            return value
    raise invalid(value, _HASH_KEY_EXPECTED)


def proxy_set_header(value: Any) -> tuple[tuple[str, str], ...]:
    """``{ Host = "api.internal", X-Debug = "" }``: request fields for the upstream
    (an empty value removes the field)."""
    if not isinstance(value, dict):
        raise invalid(value, 'a table of header = "value"')
    found = []
    for name, field in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise invalid(name, "a header field name")
        if not isinstance(field, str) or "\r" in field or "\n" in field:
            raise ValueError(f"{name}: invalid value {show(field)} (expected a string without CR or LF)")
        found.append((name, field))
    return tuple(found)


# --- sections ----------------------------------------------------------------

_POSITIVE = duration(positive=True)

TOP: dict[str, Validator] = {
    "workers": workers,
    "worker_shutdown_timeout": _POSITIVE,
    "privileged_agent": boolean,
    "user": text,
    "pid": text,
    "error_log": text,
    "error_log_level": one_of(LOG_LEVELS),
    "code_path": strings(min_items=0),
    "max_pending_timers": integer(1),
    "max_running_timers": integer(1),
    "worker_connections": integer(1),
    "worker_rlimit_nofile": integer(16),
    "client_body_temp_path": text,
    "worker_max_rss": size(),                      # 0 turns the guard off
    "loop_block_warn": duration(positive=False),   # 0 turns the watchdog off
    "worker_spare": boolean,
    "hooks": NESTED,
    "shared": NESTED,
    "upstream": NESTED,
    "status": NESTED,
    "limit_req": NESTED,
    "limit_conn": NESTED,
    "limit_count": NESTED,
    "server": NESTED,
}

HOOKS: dict[str, Validator] = {"init_worker": handler, "exit_worker": handler}

SHARED_ENTRY: dict[str, Validator] = {
    "backend": shared_backend,
    "size": size(MIN_SHARED_SIZE, "8k"),
}

UPSTREAM: dict[str, Validator] = {
    "servers": NESTED,
    "balancer": balancer,
    "hash_key": hash_key,
    "keepalive": integer(0),
    "keepalive_timeout": _POSITIVE,
    "keepalive_requests": integer(1),
    "max_fails": integer(0),
    "fail_timeout": _POSITIVE,
    "health_check": NESTED,
}

PEER: dict[str, Validator] = {
    "addr": peer_address,
    "weight": integer(1),
    "backup": boolean,
    "max_fails": integer(0),
    "fail_timeout": _POSITIVE,
}

HEALTH_CHECK: dict[str, Validator] = {
    "path": http_path,
    "interval": _POSITIVE,
    "timeout": _POSITIVE,
    "healthy": integer(1),
    "unhealthy": integer(1),
    "valid_statuses": http_statuses,
    "host": host_header,
}

STATUS: dict[str, Validator] = {"listen": listen}

SERVER: dict[str, Validator] = {
    "listen": listens,
    "server_name": server_names,
    "access_log": text,
    "keepalive_timeout": duration(positive=False),  # 0 turns keepalive off, as in nginx
    "keepalive_requests": integer(1),
    "client_max_body_size": size(),  # 0 turns the check off, as in nginx
    "client_body_buffer_size": size(1, "1"),
    "client_header_timeout": _POSITIVE,
    "client_body_timeout": _POSITIVE,
    "send_timeout": _POSITIVE,
    "ssl_certificate": text,
    "ssl_certificate_key": text,
    "ssl_protocols": ssl_protocols,
    "ssl_ciphers": text,
    "http2": boolean,
    "location": NESTED,
}

LOCATION: dict[str, Validator] = {
    "path": location_path,
    **{phase: handler for phase in PHASES},
    "proxy_pass": proxy_pass,
    "proxy_next_upstream": next_upstream,
    "proxy_connect_timeout": _POSITIVE,
    "proxy_read_timeout": _POSITIVE,
    "proxy_send_timeout": _POSITIVE,
    "proxy_set_header": proxy_set_header,
    "proxy_request_buffering": boolean,
    "proxy_next_upstream_tries": integer(0),
    "proxy_next_upstream_timeout": duration(positive=False),
    "proxy_http_version": one_of(("1.0", "1.1")),
    "proxy_ssl_verify": boolean,
    "proxy_ssl_trusted_certificate": text,
    "proxy_ssl_server_name": boolean,
    "proxy_ssl_name": ssl_name,
    "root": text,
    "index": strings(min_items=1),
    "client_max_body_size": size(),
    "client_body_buffer_size": size(1, "1"),
    "limit_req": NESTED,
    "limit_conn": NESTED,
    "limit_count": NESTED,
    "limit_status": status_code(400, 599),   # nginx's limit_req_status range
    "limit_headers": boolean,
    "limit_log_level": one_of(LIMIT_LOG_LEVELS),
    "limit_fail": one_of(LIMIT_FAIL),
}

# [limit_req.NAME], [limit_conn.NAME], [limit_count.NAME]: where and by what
LIMIT_ZONES: dict[str, dict[str, Validator]] = {
    "req": {"dict": text, "key": limit_key, "rate": limit_rate},
    "conn": {"dict": text, "key": limit_key},
    "count": {"dict": text, "key": limit_key, "limit": integer(1), "window": _POSITIVE},
}
LIMIT_ZONE_REQUIRED: dict[str, tuple[str, ...]] = {
    "req": ("dict", "key", "rate"),
    "conn": ("dict", "key"),
    "count": ("dict", "key", "limit", "window"),
}

# a location's limit_req / limit_conn / limit_count = { zone = "NAME", ... }
LIMIT_USES: dict[str, dict[str, Validator]] = {
    "req": {"zone": text, "burst": integer(0), "nodelay": boolean, "delay": integer(0)},
    "conn": {"zone": text, "max": integer(1)},
    "count": {"zone": text},
}
LIMIT_USE_REQUIRED: dict[str, tuple[str, ...]] = {
    "req": ("zone",),
    "conn": ("zone", "max"),
    "count": ("zone",),
}
