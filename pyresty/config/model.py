"""Frozen config objects: what the loader returns and everything else reads.

Durations are float seconds, sizes are int bytes, relative paths are already
resolved against the prefix. Nothing here can be mutated after loading.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


# nginx's default listen backlog (``listen ... backlog=``): the master listens with
# it and the workers' servers keep it
BACKLOG: Final = 511


@dataclass(frozen=True, slots=True)
class Listen:
    """An address and its flags: ``"0.0.0.0:8443 ssl"``, ``"127.0.0.1:8080 http2"``.

    The flags are not part of equality or hash: an address is one socket
    whatever a server says about it (the loader refuses servers that
    disagree), and ``str()`` is the address alone.
    """

    host: str
    port: int
    ssl: bool = field(default=False, compare=False)      # terminate TLS here
    http2: bool = field(default=False, compare=False)    # h2 by ALPN (ssl) or prior knowledge (h2c)

    @property
    def flags(self) -> str:
        """``" ssl http2"``, ``" ssl"``, ``""``: the flags as written in the config."""
        return (" ssl" if self.ssl else "") + (" http2" if self.http2 else "")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LimitZone:
    """One ``[limit_req.NAME]``, ``[limit_conn.NAME]`` or ``[limit_count.NAME]`` (SPEC §8c)."""

    kind: str                                # "req" | "conn" | "count"
    name: str
    dict: str                                # the shared dict holding its state
    key: str                                 # "remote_addr" | "header:NAME" | "arg:NAME" | "module:function"
    rate: float = 0.0                        # req: requests per second
    limit: int = 0                           # count: requests per window
    window: float = 0.0                      # count: seconds, aligned to the clock


@dataclass(frozen=True, slots=True)
class LimitUse:
    """One zone applied to a location: ``limit_req = { zone = "api", burst = 20 }``."""

    zone: str
    burst: int = 0                           # req: excess requests queued (nginx's burst)
    nodelay: bool = False                    # req: serve the burst at once
    delay: int = 0                           # req: excess requests served without delay (nginx's delay=)
    max: int = 0                             # conn: concurrent requests per key


@dataclass(frozen=True, slots=True)
class Location:
    """One ``[[server.location]]``; ``kind`` is "=", "^~", "~", "~*" or "" (plain prefix)."""

    kind: str
    pattern: str
    rewrite: str | None = None
    access: str | None = None
    content: str | None = None
    header_filter: str | None = None
    body_filter: str | None = None
    log: str | None = None
    proxy_pass: str | None = None           # "http://upstream-name/optional-uri" or "http://host:port"
    proxy_next_upstream: tuple[str, ...] = ("error", "timeout")
    proxy_connect_timeout: float = 60.0
    proxy_read_timeout: float = 60.0
    proxy_send_timeout: float = 60.0
    proxy_set_header: tuple[tuple[str, str], ...] = ()   # ("Host", "api.internal"); "" removes
    proxy_request_buffering: bool = True     # read the whole body before the first try
    proxy_next_upstream_tries: int = 0       # 0: as many tries as the upstream has peers
    proxy_next_upstream_timeout: float = 0.0  # 0: no bound on the time spent trying
    proxy_http_version: str = "1.1"          # "1.1" keeps upstream connections alive
    proxy_ssl_verify: bool = True            # https:// upstreams: check the certificate and name
    proxy_ssl_trusted_certificate: str | None = None   # PEM CA bundle instead of the system store
    proxy_ssl_server_name: bool = True       # send proxy_ssl_name as SNI (nginx's default is off)
    proxy_ssl_name: str | None = None        # SNI and name checked; None: proxy_pass's host/upstream
    root: str | None = None
    index: tuple[str, ...] = ("index.html",)
    client_max_body_size: int | None = None  # None: inherit the server's
    client_body_buffer_size: int | None = None   # None: inherit the server's
    limit_req: tuple[LimitUse, ...] = ()
    limit_conn: tuple[LimitUse, ...] = ()
    limit_count: tuple[LimitUse, ...] = ()
    limit_status: int = 429
    limit_headers: bool = True               # RateLimit-Limit / -Remaining / -Reset
    limit_log_level: str = "warn"
    limit_fail: str = "open"                 # a redis:// dict that fails: "open" admits, "closed" rejects
    key: str = ""                            # "server[0].location[2]", for messages

    @property
    def limited(self) -> bool:
        return bool(self.limit_req or self.limit_conn or self.limit_count)


@dataclass(frozen=True, slots=True)
class Server:
    listen: tuple[Listen, ...]
    server_name: tuple[str, ...] = ()
    access_log: str | None = None            # None means "off"
    keepalive_timeout: float = 75.0
    keepalive_requests: int = 1000
    client_max_body_size: int = 1024 * 1024
    client_body_buffer_size: int = 16 * 1024   # larger bodies go to client_body_temp_path
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    ssl_certificate: str | None = None       # PEM chain, leaf first (resolved path)
    ssl_certificate_key: str | None = None   # PEM key, unencrypted (resolved path)
    ssl_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ssl_ciphers: str = "HIGH:!aNULL:!MD5"    # TLS 1.2 suites (OpenSSL syntax); nginx's default
    http2: bool = False                      # offer h2 by ALPN on this server's ssl addresses
    locations: tuple[Location, ...] = ()
    key: str = ""                            # "server[0]"

    @property
    def ssl(self) -> bool:
        """Whether any of the server's addresses terminates TLS."""
        return any(listen.ssl for listen in self.listen)


# The internal shared dict where active health checks publish their verdicts
# (pyresty/upstream/health.py); the loader adds it when an upstream has a
# health_check. A user's dict cannot take this name (dict names have no ".").
HEALTH_DICT: Final = "pyresty.health"
HEALTH_DICT_SIZE: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    max_fails: int | None = None             # None: the upstream's
    fail_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = "/healthz"
    interval: float = 2.0
    timeout: float = 1.0
    healthy: int = 2
    unhealthy: int = 3
    valid_statuses: tuple[int, ...] = ()     # () : any 2xx or 3xx
    host: str | None = None                  # the checks' Host; None: the peer's address


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    servers: tuple[Peer, ...]
    balancer: str = "round_robin"            # round_robin | least_conn | hash | "module:function"
    hash_key: str | None = None              # "remote_addr" | "uri" | "request_uri" | "header:NAME" | "arg:NAME" | "cookie:NAME"
    keepalive: int = 32
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000
    max_fails: int = 1
    fail_timeout: float = 10.0
    health_check: HealthCheck | None = None


@dataclass(frozen=True, slots=True)
class SharedDictSpec:
    name: str
    capacity: int = 0                        # bytes, embedded backend
    backend: str = "embedded"                # "embedded" or a "redis://..." / "unix://..." URL


@dataclass(frozen=True, slots=True)
class Hooks:
    init_worker: str | None = None
    exit_worker: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    listen: Listen | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: str                                # the config file ("<builtin>" for the welcome page)
    prefix: str
    workers: int = 1                         # 0 = single process
    worker_shutdown_timeout: float = 10.0
    privileged_agent: bool = False
    user: str | None = None
    pid: str = "logs/pyresty.pid"
    error_log: str = "logs/error.log"
    error_log_level: str = "info"
    code_path: tuple[str, ...] = (".",)
    max_pending_timers: int = 1024
    max_running_timers: int = 256
    worker_connections: int = 10240          # client connections per worker (nginx's name)
    worker_rlimit_nofile: int | None = None  # None: raise the soft fd limit to the hard one
    client_body_temp_path: str = "client_body_temp"   # resolved against the prefix
    worker_max_rss: int = 0                  # bytes; a worker above is replaced (0 = off)
    loop_block_warn: float = 1.0             # s the event loop may stall before a [warn]; 0 = off
    worker_spare: bool = False               # a booted spare per generation, promoted on a crash
    hooks: Hooks = field(default_factory=Hooks)
    shared: tuple[SharedDictSpec, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    status: Status = field(default_factory=Status)
    limit_zones: tuple[LimitZone, ...] = ()
    servers: tuple[Server, ...] = ()

    @property
    def control_socket(self) -> str:
        """The master's control socket (``pyresty status``/``drain``), beside the pid file."""
        return self.pid.rsplit(".", 1)[0] + ".sock" if self.pid.endswith(".pid") else self.pid + ".sock"

    def limit_zone(self, kind: str, name: str) -> LimitZone:
        """The zone ``[limit_<kind>.<name>]``; KeyError if there is none."""
        for zone in self.limit_zones:
            if zone.kind == kind and zone.name == name:
                return zone
        raise KeyError(f"no limit_{kind} zone {name!r}")

    def handler_strings(self) -> list[tuple[str, str]]:
        """Every ``(key path, "module:function")`` the config names, for import checks."""
        found: list[tuple[str, str]] = []
        for hook in ("init_worker", "exit_worker"):
            value = getattr(self.hooks, hook)
            if value:
                found.append((f"hooks.{hook}", value))
        for zone in self.limit_zones:
            if ":" in zone.key and not zone.key.startswith(("header:", "arg:")):
                found.append((f"limit_{zone.kind}.{zone.name}.key", zone.key))
        for up in self.upstreams:
            if ":" in up.balancer:
                found.append((f"upstream.{up.name}.balancer", up.balancer))
        for server in self.servers:
            for loc in server.locations:
                for phase in ("rewrite", "access", "content", "header_filter", "body_filter", "log"):
                    value = getattr(loc, phase)
                    if value:
                        found.append((f"{loc.key}.{phase}", value))
        return found
