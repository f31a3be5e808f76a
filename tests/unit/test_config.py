"""The config loader: SPEC §3 in, frozen objects or every problem out."""
from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from pyresty.config import (
    Config,
    HealthCheck,
    Hooks,
    Listen,
    Location,
    Peer,
    Server,
    SharedDictSpec,
    Status,
    Upstream,
    builtin,
    load,
)
from pyresty.config.model import HEALTH_DICT, HEALTH_DICT_SIZE
from pyresty.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

FULL = """\
workers = 4
worker_shutdown_timeout = "10s"
privileged_agent = false
user = "nobody"
pid = "logs/pyresty.pid"
error_log = "logs/error.log"
error_log_level = "info"
code_path = ["."]
max_pending_timers = 1024
max_running_timers = 256

[hooks]
init_worker = "app.jobs:start"
exit_worker = "app.jobs:stop"

[shared]
cache = "10m"
limits = { backend = "redis://127.0.0.1:6379/0" }

[upstream.backend]
servers = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2, backup = true }]
balancer = "round_robin"
keepalive = 32
keepalive_timeout = "60s"
keepalive_requests = 1000
max_fails = 1
fail_timeout = "10s"
health_check = { path = "/healthz", interval = "2s", timeout = "1s", healthy = 2, unhealthy = 3 }

[status]
listen = "127.0.0.1:9145"

[[server]]
listen = ["127.0.0.1:8080"]
server_name = ["example.com"]
access_log = "logs/access.log"
keepalive_timeout = "75s"
client_max_body_size = "1m"

[[server.location]]
path = "/"
access = "app.auth:check"
proxy_pass = "http://backend"
proxy_next_upstream = ["error", "timeout"]

[[server.location]]
path = "= /hello"
content = "app.hello:hello"

[[server.location]]
path = "/static/"
root = "public"
"""

SERVER = '[[server]]\nlisten = "127.0.0.1:8080"\n'
LOC = SERVER + '[[server.location]]\npath = "/"\n'
UP = '[upstream.api]\nservers = ["127.0.0.1:9001"]\n'
HOST_PORT = '"host:port", "port" or "[ipv6]:port"'
DURATION = 'a duration like "500ms", "10s", "2m", "1h", "1m30s" or a number of seconds'
SIZE = 'a size like "512k", "10m", "1g" or a number of bytes'
HANDLER = '"module.path:function"'
PROXY = '"http://upstream-name[/uri]" or "http://host:port[/uri]"'
LOCATION_PATH = 'a path starting with "/", after "=", "^~" or nothing; or "~ regex" / "~* regex"'
BACKEND = '"embedded" or a "redis://host:port/db", "rediss://..." or "unix:///path" URL'
NEXT = ("some of error, timeout, invalid_header, http_500, http_502, http_503, http_504, "
        "http_403, http_404, http_429, non_idempotent, off")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside a temp folder so the file is named "pyresty.toml" as given."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str, name: str = "pyresty.toml") -> str:
    (folder / name).write_text(text)
    return name


def problems(folder: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(write(folder, text))
    return caught.value.problems


# --- a valid file ---------------------------------------------------------------

def test_full_spec_example(folder: Path) -> None:
    config = load(write(folder, FULL))
    base = str(folder)
    assert config == Config(
        path=str(folder / "pyresty.toml"),
        prefix=base,
        workers=4,
        worker_shutdown_timeout=10.0,
        privileged_agent=False,
        user="nobody",
        pid=f"{base}/logs/pyresty.pid",
        client_body_temp_path=f"{base}/client_body_temp",
        error_log=f"{base}/logs/error.log",
        error_log_level="info",
        code_path=(base,),
        max_pending_timers=1024,
        max_running_timers=256,
        hooks=Hooks(init_worker="app.jobs:start", exit_worker="app.jobs:stop"),
        shared=(
            SharedDictSpec("cache", capacity=10 * 1024 * 1024, backend="embedded"),
            SharedDictSpec("limits", capacity=0, backend="redis://127.0.0.1:6379/0"),
            # added because an upstream has a health_check: where verdicts are published
            SharedDictSpec(HEALTH_DICT, capacity=HEALTH_DICT_SIZE, backend="embedded"),
        ),
        upstreams=(
            Upstream(
                name="backend",
                servers=(Peer("127.0.0.1", 9001), Peer("127.0.0.1", 9002, weight=2, backup=True)),
                balancer="round_robin",
                keepalive=32,
                keepalive_timeout=60.0,
                keepalive_requests=1000,
                max_fails=1,
                fail_timeout=10.0,
                health_check=HealthCheck("/healthz", interval=2.0, timeout=1.0, healthy=2, unhealthy=3),
            ),
        ),
        status=Status(listen=Listen("127.0.0.1", 9145)),
        servers=(
            Server(
                listen=(Listen("127.0.0.1", 8080),),
                server_name=("example.com",),
                access_log=f"{base}/logs/access.log",
                keepalive_timeout=75.0,
                client_max_body_size=1024 * 1024,
                key="server[0]",
                locations=(
                    Location("", "/", access="app.auth:check", proxy_pass="http://backend",
                             proxy_next_upstream=("error", "timeout"), key="server[0].location[0]"),
                    Location("=", "/hello", content="app.hello:hello", key="server[0].location[1]"),
                    Location("", "/static/", root=f"{base}/public", key="server[0].location[2]"),
                ),
            ),
        ),
    )


def test_the_health_dict_exists_only_with_a_health_check(folder: Path) -> None:
    assert load(write(folder, UP + SERVER)).shared == ()
    checked = UP + 'health_check = { path = "/ping" }\n' + SERVER
    assert [spec.name for spec in load(write(folder, checked)).shared] == [HEALTH_DICT]
    # a user's dict cannot take its name
    assert problems(folder, f'[shared]\n"{HEALTH_DICT}" = "1m"\n' + SERVER) == [
        f'pyresty.toml: shared."{HEALTH_DICT}": invalid name (expected a letter or "_", then '
        'letters, digits, "_" or "-")']


@pytest.mark.parametrize("path", ['"healthz"', '"/health check"', '"/a\\tb"', "1"])
def test_a_health_check_path_is_a_request_target(folder: Path, path: str) -> None:
    found = problems(folder, UP + f"health_check = {{ path = {path} }}\n" + SERVER)
    assert len(found) == 1 and found[0].startswith("pyresty.toml: upstream.api.health_check.path: ")
    assert found[0].endswith('(expected a path starting with "/", without spaces or control '
                             'characters)')


def test_a_health_check_may_name_its_statuses_and_host(folder: Path) -> None:
    checked = UP + 'health_check = { valid_statuses = [200, 204, 200], host = "api.internal" }\n'
    up = load(write(folder, checked + SERVER)).upstreams[0]
    assert up.health_check == HealthCheck(valid_statuses=(200, 204), host="api.internal")
    assert problems(folder, UP + "health_check = { valid_statuses = [200, 600] }\n" + SERVER) == [
        "pyresty.toml: upstream.api.health_check.valid_statuses: invalid value [200, 600] "
        "(expected an array of status codes 100..599)"]
    assert problems(folder, UP + 'health_check = { host = "a b" }\n' + SERVER) == [
        'pyresty.toml: upstream.api.health_check.host: invalid value "a b" '
        "(expected a host name, without spaces or control characters)"]


def test_config_is_frozen(folder: Path) -> None:
    config = load(write(folder, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.servers[0].locations[0].content = "x:y"  # type: ignore[misc]


def test_handler_strings_of_full_example(folder: Path) -> None:
    config = load(write(folder, FULL))
    assert config.handler_strings() == [
        ("hooks.init_worker", "app.jobs:start"),
        ("hooks.exit_worker", "app.jobs:stop"),
        ("server[0].location[0].access", "app.auth:check"),
        ("server[0].location[1].content", "app.hello:hello"),
    ]


def test_minimal_file_takes_model_defaults(folder: Path) -> None:
    config = load(write(folder, SERVER))
    base = str(folder)
    assert config.workers == 1
    assert config.pid == f"{base}/logs/pyresty.pid"
    assert config.error_log == f"{base}/logs/error.log"
    assert config.code_path == (base,)
    assert config.hooks == Hooks() and config.shared == () and config.upstreams == ()
    assert config.status == Status()
    assert config.servers == (Server(listen=(Listen("127.0.0.1", 8080),), key="server[0]"),)


def _server(config: Config) -> Server:
    return config.servers[0]


def _location(config: Config) -> Location:
    return config.servers[0].locations[0]


def _upstream(config: Config) -> Upstream:
    return config.upstreams[0]


VALID: list[tuple[str, Callable[[Config], Any], Any]] = [
    ('workers = "auto"\n' + SERVER, lambda c: c.workers, os.cpu_count() or 1),
    ("workers = 0\n" + SERVER, lambda c: c.workers, 0),
    ('worker_shutdown_timeout = "1m30s"\n' + SERVER, lambda c: c.worker_shutdown_timeout, 90.0),
    ("worker_shutdown_timeout = 2.5\n" + SERVER, lambda c: c.worker_shutdown_timeout, 2.5),
    ('error_log = "stderr"\n' + SERVER, lambda c: c.error_log, "stderr"),
    ('error_log_level = "emerg"\n' + SERVER, lambda c: c.error_log_level, "emerg"),
    ("code_path = []\n" + SERVER, lambda c: c.code_path, ()),
    ("privileged_agent = true\n" + SERVER, lambda c: c.privileged_agent, True),
    ('[[server]]\nlisten = "8080"\n', lambda c: _server(c).listen, (Listen("0.0.0.0", 8080),)),
    ("[[server]]\nlisten = 8080\n", lambda c: _server(c).listen, (Listen("0.0.0.0", 8080),)),
    ('[[server]]\nlisten = "*:80"\n', lambda c: _server(c).listen, (Listen("0.0.0.0", 80),)),
    ('[[server]]\nlisten = "[::1]:8080"\n', lambda c: _server(c).listen, (Listen("::1", 8080),)),
    ('[[server]]\nlisten = "localhost:0"\n', lambda c: _server(c).listen, (Listen("localhost", 0),)),
    ('[[server]]\nlisten = ["127.0.0.1:1", "[::]:1"]\n', lambda c: _server(c).listen,
     (Listen("127.0.0.1", 1), Listen("::", 1))),
    (SERVER + 'server_name = "Example.COM"\n', lambda c: _server(c).server_name, ("example.com",)),
    (SERVER + 'server_name = ["a.com", "~^(www\\\\.)?B\\\\.com$"]\n', lambda c: _server(c).server_name,
     ("a.com", "~^(www\\.)?B\\.com$")),
    (SERVER + 'access_log = "off"\n', lambda c: _server(c).access_log, None),
    (SERVER + "keepalive_timeout = 0\n", lambda c: _server(c).keepalive_timeout, 0.0),
    (SERVER + 'client_max_body_size = "0"\n', lambda c: _server(c).client_max_body_size, 0),
    (SERVER + 'send_timeout = "500ms"\n', lambda c: _server(c).send_timeout, 0.5),
    (SERVER + '[[server.location]]\npath = "= /x"\n', lambda c: (_location(c).kind, _location(c).pattern), ("=", "/x")),
    (SERVER + '[[server.location]]\npath = "=/x"\n', lambda c: (_location(c).kind, _location(c).pattern), ("=", "/x")),
    (SERVER + '[[server.location]]\npath = "^~ /p/"\n', lambda c: (_location(c).kind, _location(c).pattern), ("^~", "/p/")),
    (SERVER + '[[server.location]]\npath = \'~ \\.php$\'\n', lambda c: (_location(c).kind, _location(c).pattern), ("~", "\\.php$")),
    (SERVER + '[[server.location]]\npath = \'~* \\.JPG$\'\n', lambda c: (_location(c).kind, _location(c).pattern), ("~*", "\\.JPG$")),
    (SERVER + '[[server.location]]\npath = "/p"\n', lambda c: (_location(c).kind, _location(c).pattern), ("", "/p")),
    (LOC + 'proxy_pass = "http://127.0.0.1:9000/api/"\n', lambda c: _location(c).proxy_pass, "http://127.0.0.1:9000/api/"),
    (LOC + 'proxy_pass = "http://[::1]:9000"\n', lambda c: _location(c).proxy_pass, "http://[::1]:9000"),
    (UP + LOC + 'proxy_pass = "http://api/v1"\n', lambda c: _location(c).proxy_pass, "http://api/v1"),
    (LOC + 'proxy_next_upstream = "off"\n', lambda c: _location(c).proxy_next_upstream, ("off",)),
    (LOC + 'proxy_next_upstream = ["error", "http_502", "error"]\n', lambda c: _location(c).proxy_next_upstream,
     ("error", "http_502")),
    (LOC + 'index = "home.html"\n', lambda c: _location(c).index, ("home.html",)),
    (LOC + 'client_max_body_size = "10m"\n', lambda c: _location(c).client_max_body_size, 10 * 1024**2),
    (LOC + 'proxy_read_timeout = "2m"\n', lambda c: _location(c).proxy_read_timeout, 120.0),
    (LOC + "".join(f'{p} = "app.h:{p}"\n' for p in ("rewrite", "access", "content", "header_filter", "body_filter", "log")),
     lambda c: (_location(c).rewrite, _location(c).body_filter), ("app.h:rewrite", "app.h:body_filter")),
    ('[upstream.api]\nservers = ["h:1"]\nbalancer = "hash"\nhash_key = "remote_addr"\n' + SERVER,
     lambda c: (_upstream(c).balancer, _upstream(c).hash_key), ("hash", "remote_addr")),
    ('[upstream.api]\nservers = ["h:1"]\nbalancer = "app.lb:pick"\nhash_key = "request_uri"\n' + SERVER,
     lambda c: (_upstream(c).balancer, _upstream(c).hash_key), ("app.lb:pick", "request_uri")),
    (UP + "keepalive = 0\n" + SERVER, lambda c: _upstream(c).keepalive, 0),
    ('[upstream.api]\nservers = [{ addr = "[::1]:81", max_fails = 0, fail_timeout = "30s" }]\n' + SERVER,
     lambda c: _upstream(c).servers, (Peer("::1", 81, max_fails=0, fail_timeout=30.0),)),
    (UP + 'health_check = { path = "/ping" }\n' + SERVER, lambda c: _upstream(c).health_check, HealthCheck("/ping")),
    ('[upstream."api.v2"]\nservers = ["h:1"]\n' + SERVER, lambda c: _upstream(c).name, "api.v2"),
    ('[shared]\nc = { size = "10m" }\n' + SERVER, lambda c: c.shared, (SharedDictSpec("c", 10 * 1024**2),)),
    ('[shared]\nc = { backend = "embedded", size = "8k" }\n' + SERVER, lambda c: c.shared, (SharedDictSpec("c", 8192),)),
    ("[shared]\nc = 65536\n" + SERVER, lambda c: c.shared, (SharedDictSpec("c", 65536),)),
    ('[shared]\nc = { backend = "unix:///run/redis.sock", size = "1m" }\n' + SERVER, lambda c: c.shared,
     (SharedDictSpec("c", 1024**2, "unix:///run/redis.sock"),)),
    ('[status]\nlisten = "9145"\n' + SERVER, lambda c: c.status.listen, Listen("0.0.0.0", 9145)),
]


@pytest.mark.parametrize(("text", "get", "expected"), VALID)
def test_valid_values(folder: Path, text: str, get: Callable[[Config], Any], expected: Any) -> None:
    assert get(load(write(folder, text))) == expected


# --- one bad value, one exact line ------------------------------------------------

PHASE_CASES = [
    (LOC + f'{phase} = "{value}"\n', f'server[0].location[0].{phase}: invalid value "{value}" (expected {HANDLER})')
    for phase in ("rewrite", "access", "content", "header_filter", "body_filter", "log")
    for value in ("app", "app.auth:", ":check", "app..auth:check", "app.auth:check:x", "app.class:check", "app.auth:1x")
]

BAD: list[tuple[str, str]] = [
    # top level
    ("workers = -1\n" + SERVER, 'workers: invalid value -1 (expected an integer >= 0 or "auto")'),
    ('workers = "4"\n' + SERVER, 'workers: invalid value "4" (expected an integer >= 0 or "auto")'),
    ("workers = true\n" + SERVER, 'workers: invalid value true (expected an integer >= 0 or "auto")'),
    ("workers = 2.0\n" + SERVER, 'workers: invalid value 2.0 (expected an integer >= 0 or "auto")'),
    ('worker_shutdown_timeout = "0s"\n' + SERVER, 'worker_shutdown_timeout: invalid value "0s" (expected a duration > 0)'),
    ('worker_shutdown_timeout = "10x"\n' + SERVER, f'worker_shutdown_timeout: invalid value "10x" (expected {DURATION})'),
    ('privileged_agent = "yes"\n' + SERVER, 'privileged_agent: invalid value "yes" (expected true or false)'),
    ("privileged_agent = 1\n" + SERVER, "privileged_agent: invalid value 1 (expected true or false)"),
    ("user = 0\n" + SERVER, "user: invalid value 0 (expected a non-empty string)"),
    ('pid = ""\n' + SERVER, 'pid: invalid value "" (expected a non-empty string)'),
    ("error_log = 5\n" + SERVER, "error_log: invalid value 5 (expected a non-empty string)"),
    ('error_log_level = "warning"\n' + SERVER,
     'error_log_level: invalid value "warning" (expected one of debug, info, notice, warn, error, crit, alert, emerg)'),
    ("code_path = [1]\n" + SERVER, "code_path: invalid value [1] (expected a string or an array of strings)"),
    ("max_pending_timers = 0\n" + SERVER, "max_pending_timers: invalid value 0 (expected an integer >= 1)"),
    ("max_running_timers = 1.5\n" + SERVER, "max_running_timers: invalid value 1.5 (expected an integer >= 1)"),
    ("max_running_timers = false\n" + SERVER, "max_running_timers: invalid value false (expected an integer >= 1)"),
    ("servers = 1\n" + SERVER, 'servers: unknown key (did you mean "server"?)'),
    ("worker = 1\n" + SERVER, 'worker: unknown key (did you mean "workers"?)'),
    ("colour = 1\n" + SERVER, "colour: unknown key (known: client_body_temp_path, code_path, error_log, "
     "error_log_level, hooks, limit_conn, limit_count, limit_req, loop_block_warn, max_pending_timers, "
     "max_running_timers, pid, privileged_agent, server, shared, status, upstream, user, "
     "worker_connections, worker_max_rss, worker_rlimit_nofile, worker_shutdown_timeout, worker_spare, workers)"),
    ("workers = 1\n", "server: at least one [[server]] is required"),
    ("server = []\n", "server: at least one [[server]] is required"),
    ("server = 1\n", "server: invalid value 1 (expected [[server]] tables)"),
    ('[server]\nlisten = "8080"\n', 'server: invalid value { listen = "8080" } (expected [[server]] tables)'),
    # hooks
    ("hooks = 1\n" + SERVER, "hooks: invalid value 1 (expected a table)"),
    ('[hooks]\ninit_worker = "app.jobs"\n' + SERVER, f'hooks.init_worker: invalid value "app.jobs" (expected {HANDLER})'),
    ('[hooks]\nexit_worker = ["a:b"]\n' + SERVER, f'hooks.exit_worker: invalid value ["a:b"] (expected {HANDLER})'),
    ('[hooks]\ninit_workers = "a:b"\n' + SERVER, 'hooks.init_workers: unknown key (did you mean "init_worker"?)'),
    # shared
    ("shared = 1\n" + SERVER, "shared: invalid value 1 (expected a table of dictionaries)"),
    ('[shared]\ncache = "4k"\n' + SERVER, 'shared.cache: invalid value "4k" (expected a size >= 8k)'),
    ("[shared]\ncache = 8191\n" + SERVER, "shared.cache: invalid value 8191 (expected a size >= 8k)"),
    ('[shared]\ncache = "10q"\n' + SERVER, f'shared.cache: invalid value "10q" (expected {SIZE})'),
    ('[shared]\n"my cache" = "10m"\n' + SERVER,
     'shared."my cache": invalid name (expected a letter or "_", then letters, digits, "_" or "-")'),
    ('[shared]\ncache = { backend = "mysql://x" }\n' + SERVER,
     f'shared.cache.backend: invalid value "mysql://x" (expected {BACKEND})'),
    ('[shared]\ncache = { backend = "redis://h:99999/0" }\n' + SERVER,
     f'shared.cache.backend: invalid value "redis://h:99999/0" (expected {BACKEND})'),
    ('[shared]\ncache = { backend = "redis:///0" }\n' + SERVER,
     f'shared.cache.backend: invalid value "redis:///0" (expected {BACKEND})'),
    ("[shared]\ncache = {}\n" + SERVER,
     'shared.cache: missing required key "size" (the embedded backend needs a capacity)'),
    ('[shared]\ncache = { backend = "redis://h", size = "1k" }\n' + SERVER,
     'shared.cache.size: invalid value "1k" (expected a size >= 8k)'),
    # upstreams
    ("upstream = 1\n" + SERVER, "upstream: invalid value 1 (expected [upstream.NAME] tables)"),
    ('[[upstream]]\nservers = ["h:1"]\n' + SERVER,
     'upstream: invalid value [{ servers = ["h:1"] }] (expected [upstream.NAME] tables)'),
    ('[upstream]\napi = 1\n' + SERVER, "upstream.api: invalid value 1 (expected a table)"),
    ('[upstream."a:b"]\nservers = ["h:1"]\n' + SERVER,
     'upstream."a:b": invalid upstream name (expected a letter or "_", then letters, digits, "_", "-" or ".")'),
    (UP + "keepalive = -1\n" + SERVER, "upstream.api.keepalive: invalid value -1 (expected an integer >= 0)"),
    (UP + 'keepalive_timeout = "0"\n' + SERVER, 'upstream.api.keepalive_timeout: invalid value "0" (expected a duration > 0)'),
    (UP + "keepalive_requests = 0\n" + SERVER, "upstream.api.keepalive_requests: invalid value 0 (expected an integer >= 1)"),
    (UP + "max_fails = -1\n" + SERVER, "upstream.api.max_fails: invalid value -1 (expected an integer >= 0)"),
    (UP + 'fail_timeout = "soon"\n' + SERVER, f'upstream.api.fail_timeout: invalid value "soon" (expected {DURATION})'),
    (UP + 'keepalive_timout = "1s"\n' + SERVER, 'upstream.api.keepalive_timout: unknown key (did you mean "keepalive_timeout"?)'),
    (UP + 'balancer = "random"\n' + SERVER,
     'upstream.api.balancer: invalid value "random" (expected round_robin, least_conn, hash or "module:function")'),
    (UP + 'balancer = "hash"\n' + SERVER, 'upstream.api: missing required key "hash_key" (balancer = "hash" hashes it)'),
    (UP + 'hash_key = "remote_addr"\n' + SERVER, 'upstream.api.hash_key: only used with balancer = "hash", not "round_robin"'),
    (UP + 'balancer = "hash"\nhash_key = ""\n' + SERVER, 'upstream.api.hash_key: invalid value "" (expected remote_addr, uri, request_uri, "header:NAME", "arg:NAME" or "cookie:NAME")'),
    ('[upstream.api]\nkeepalive = 1\n' + SERVER, 'upstream.api: missing required key "servers"'),
    ('[upstream.api]\nservers = []\n' + SERVER,
     'upstream.api.servers: invalid value [] (expected an array of "host:port" or { addr = "host:port", ... })'),
    ('[upstream.api]\nservers = "h:1"\n' + SERVER,
     'upstream.api.servers: invalid value "h:1" (expected an array of "host:port" or { addr = "host:port", ... })'),
    ('[upstream.api]\nservers = ["127.0.0.1:"]\n' + SERVER, 'upstream.api.servers[0]: invalid value "127.0.0.1:" (expected "host:port")'),
    ('[upstream.api]\nservers = ["h:1", 5]\n' + SERVER, "upstream.api.servers[1]: invalid value 5 (expected a table)"),
    ('[upstream.api]\nservers = ["127.0.0.1:0"]\n' + SERVER, 'upstream.api.servers[0]: invalid value "127.0.0.1:0" (expected a port 1..65535)'),
    ('[upstream.api]\nservers = ["::1:80"]\n' + SERVER,
     'upstream.api.servers[0]: invalid value "::1:80" (expected an IPv6 address in brackets, e.g. "[::1]:8080")'),
    ('[upstream.api]\nservers = ["[::x]:80"]\n' + SERVER, 'upstream.api.servers[0]: invalid value "[::x]:80" (expected "host:port")'),
    ('[upstream.api]\nservers = [{ addr = "h:1", weight = 0 }]\n' + SERVER,
     "upstream.api.servers[0].weight: invalid value 0 (expected an integer >= 1)"),
    ('[upstream.api]\nservers = [{ addr = "h:1", backup = "no" }, "h:2"]\n' + SERVER,
     'upstream.api.servers[0].backup: invalid value "no" (expected true or false)'),
    ('[upstream.api]\nservers = [{ addr = "h:1", max_fails = -2 }]\n' + SERVER,
     "upstream.api.servers[0].max_fails: invalid value -2 (expected an integer >= 0)"),
    ('[upstream.api]\nservers = [{ addr = "h:1", fail_timeout = 0 }]\n' + SERVER,
     "upstream.api.servers[0].fail_timeout: invalid value 0 (expected a duration > 0)"),
    ('[upstream.api]\nservers = [{ addr = "h:1", backup = true }]\n' + SERVER,
     "upstream.api.servers: at least one server must not be a backup"),
    ('[upstream.api]\nservers = [{ weight = 2 }]\n' + SERVER, 'upstream.api.servers[0]: missing required key "addr"'),
    ('[upstream.api]\nservers = [{ addr = "h:1", wieght = 2 }]\n' + SERVER,
     'upstream.api.servers[0].wieght: unknown key (did you mean "weight"?)'),
    ('[upstream.api]\nservers = ["h:1", { addr = "h:2", backup = true }]\nbalancer = "hash"\nhash_key = "uri"\n' + SERVER,
     'upstream.api.servers[1].backup: backup servers do not work with balancer = "hash"'),
    (UP + "health_check = true\n" + SERVER, "upstream.api.health_check: invalid value true (expected a table)"),
    (UP + 'health_check = { interval = "0s" }\n' + SERVER,
     'upstream.api.health_check.interval: invalid value "0s" (expected a duration > 0)'),
    (UP + "health_check = { timeout = -1 }\n" + SERVER, f"upstream.api.health_check.timeout: invalid value -1 (expected {DURATION})"),
    (UP + 'health_check = { path = "healthz" }\n' + SERVER,
     'upstream.api.health_check.path: invalid value "healthz" (expected a path starting with "/", without spaces or control characters)'),
    (UP + "health_check = { healthy = 0 }\n" + SERVER, "upstream.api.health_check.healthy: invalid value 0 (expected an integer >= 1)"),
    (UP + "health_check = { unhealthy = 0 }\n" + SERVER, "upstream.api.health_check.unhealthy: invalid value 0 (expected an integer >= 1)"),
    (UP + "health_check = { helthy = 2 }\n" + SERVER, 'upstream.api.health_check.helthy: unknown key (did you mean "healthy"?)'),
    # status
    ("status = 1\n" + SERVER, "status: invalid value 1 (expected a table)"),
    ('[status]\nlisten = "127.0.0.1:70000"\n' + SERVER, 'status.listen: invalid value "127.0.0.1:70000" (expected a port 0..65535)'),
    ('[status]\nlisten_on = "9145"\n' + SERVER, 'status.listen_on: unknown key (did you mean "listen"?)'),
    ('[status]\nlisten = "127.0.0.1:8080"\n' + SERVER, "status.listen: 127.0.0.1:8080 is also a listen of server[0]"),
    # servers
    ('[[server]]\nserver_name = "a"\n', 'server[0]: missing required key "listen"'),
    ('[[server]]\nlisten = "localhost"\n', f'server[0].listen: invalid value "localhost" (expected {HOST_PORT})'),
    ('[[server]]\nlisten = "1.2.3.256:80"\n', f'server[0].listen: invalid value "1.2.3.256:80" (expected {HOST_PORT})'),
    ('[[server]]\nlisten = "[::1"\n', f'server[0].listen: invalid value "[::1" (expected {HOST_PORT})'),
    ('[[server]]\nlisten = "a b:80"\n', f'server[0].listen: invalid value "a b:80" (expected {HOST_PORT})'),
    ('[[server]]\nlisten = "h:http"\n', f'server[0].listen: invalid value "h:http" (expected {HOST_PORT})'),
    ('[[server]]\nlisten = "99999"\n', 'server[0].listen: invalid value "99999" (expected a port 0..65535)'),
    ("[[server]]\nlisten = -1\n", "server[0].listen: invalid value -1 (expected a port 0..65535)"),
    ("[[server]]\nlisten = true\n", f"server[0].listen: invalid value true (expected {HOST_PORT})"),
    ("[[server]]\nlisten = []\n", f"server[0].listen: invalid value [] (expected {HOST_PORT})"),
    ('[[server]]\nlisten = ["127.0.0.1:8080", "127.0.0.1:8080"]\n', "server[0].listen: duplicate listen 127.0.0.1:8080"),
    (SERVER + 'server_name = "a b"\n', 'server[0].server_name: invalid value "a b" (expected a server name without spaces)'),
    (SERVER + "server_name = 1\n", "server[0].server_name: invalid value 1 (expected a string or an array of strings)"),
    (SERVER + 'server_name = "~("\n',
     'server[0].server_name: invalid regex "(": missing ), unterminated subpattern at position 0'),
    (SERVER + 'access_log = ""\n', 'server[0].access_log: invalid value "" (expected a non-empty string)'),
    (SERVER + "keepalive_timeout = -1\n", f"server[0].keepalive_timeout: invalid value -1 (expected {DURATION})"),
    (SERVER + "keepalive_requests = 0\n", "server[0].keepalive_requests: invalid value 0 (expected an integer >= 1)"),
    (SERVER + 'client_max_body_size = "1.5m"\n', f'server[0].client_max_body_size: invalid value "1.5m" (expected {SIZE})'),
    (SERVER + "client_header_timeout = 0\n", "server[0].client_header_timeout: invalid value 0 (expected a duration > 0)"),
    (SERVER + 'client_body_timeout = "1y"\n', f'server[0].client_body_timeout: invalid value "1y" (expected {DURATION})'),
    (SERVER + "send_timeout = false\n", f"server[0].send_timeout: invalid value false (expected {DURATION})"),
    (SERVER + 'keepalive_timeot = "1s"\n', 'server[0].keepalive_timeot: unknown key (did you mean "keepalive_timeout"?)'),
    (SERVER + 'locations = []\n', 'server[0].locations: unknown key (did you mean "location"?)'),
    (SERVER + "location = 1\n", "server[0].location: invalid value 1 (expected [[server.location]] tables)"),
    (SERVER + 'server_name = "a.com"\n' + SERVER + 'server_name = ["b.com", "A.com"]\n',
     'server[1].server_name: "a.com" on 127.0.0.1:8080 is already used by server[0]'),
    (SERVER + SERVER, "server[1].listen: 127.0.0.1:8080 already has a server without server_name (server[0])"),
    # locations
    (SERVER + '[[server.location]]\ncontent = "a:b"\n', 'server[0].location[0]: missing required key "path"'),
    (SERVER + '[[server.location]]\npath = "static"\n', f'server[0].location[0].path: invalid value "static" (expected {LOCATION_PATH})'),
    (SERVER + '[[server.location]]\npath = "= x"\n', f'server[0].location[0].path: invalid value "= x" (expected {LOCATION_PATH})'),
    (SERVER + '[[server.location]]\npath = "^~"\n', f'server[0].location[0].path: invalid value "^~" (expected {LOCATION_PATH})'),
    (SERVER + '[[server.location]]\npath = "@named"\n', f'server[0].location[0].path: invalid value "@named" (expected {LOCATION_PATH})'),
    (SERVER + "[[server.location]]\npath = 5\n", f"server[0].location[0].path: invalid value 5 (expected {LOCATION_PATH})"),
    (SERVER + '[[server.location]]\npath = "~ ("\n',
     'server[0].location[0].path: invalid regex "(": missing ), unterminated subpattern at position 0'),
    (SERVER + '[[server.location]]\npath = "~*"\n', 'server[0].location[0].path: invalid value "~*" (expected a regex after "~*")'),
    (LOC + 'proxy_pas = "http://h:1"\n', 'server[0].location[0].proxy_pas: unknown key (did you mean "proxy_pass"?)'),
    ('[upstream.backend]\nservers = ["h:1"]\n' + LOC + 'proxy_pass = "http://backnd"\n',
     'server[0].location[0].proxy_pass: unknown upstream "backnd" (known: backend)'),
    ('[upstream.b]\nservers = ["h:1"]\n[upstream.a]\nservers = ["h:1"]\n' + LOC + 'proxy_pass = "http://c/x"\n',
     'server[0].location[0].proxy_pass: unknown upstream "c" (known: a, b)'),
    (LOC + 'proxy_pass = "http://backend"\n', 'server[0].location[0].proxy_pass: unknown upstream "backend" (known: none)'),
    (LOC + 'proxy_pass = "ftp://h:1"\n', f'server[0].location[0].proxy_pass: invalid value "ftp://h:1" (expected {PROXY})'),
    (LOC + 'proxy_pass = "http://"\n', f'server[0].location[0].proxy_pass: invalid value "http://" (expected {PROXY})'),
    (LOC + 'proxy_pass = "http://api?x=1"\n', f'server[0].location[0].proxy_pass: invalid value "http://api?x=1" (expected {PROXY})'),
    (LOC + 'proxy_pass = "http://h:0"\n', 'server[0].location[0].proxy_pass: invalid value "h:0" (expected a port 1..65535)'),
    (LOC + 'proxy_next_upstream = ["error", "http_501"]\n',
     f'server[0].location[0].proxy_next_upstream: invalid value "http_501" (expected {NEXT})'),
    (LOC + 'proxy_next_upstream = ["off", "error"]\n',
     'server[0].location[0].proxy_next_upstream: invalid value ["off", "error"] (expected "off" alone, or conditions without "off")'),
    (LOC + "proxy_next_upstream = []\n",
     "server[0].location[0].proxy_next_upstream: invalid value [] (expected a string or an array of strings)"),
    (LOC + 'proxy_connect_timeout = "0ms"\n', 'server[0].location[0].proxy_connect_timeout: invalid value "0ms" (expected a duration > 0)'),
    (LOC + 'proxy_send_timeout = "x"\n', f'server[0].location[0].proxy_send_timeout: invalid value "x" (expected {DURATION})'),
    (LOC + "root = 1\n", "server[0].location[0].root: invalid value 1 (expected a non-empty string)"),
    (LOC + "index = []\n", "server[0].location[0].index: invalid value [] (expected a string or an array of strings)"),
    (LOC + "client_max_body_size = -1\n", f"server[0].location[0].client_max_body_size: invalid value -1 (expected {SIZE})"),
    (LOC + 'content = "a:b"\nroot = "x"\n',
     "server[0].location[0]: content, proxy_pass and root exclude each other (found content and root)"),
    (LOC + 'content = "a:b"\nproxy_pass = "http://h:1"\nroot = "x"\n',
     "server[0].location[0]: content, proxy_pass and root exclude each other (found content and proxy_pass and root)"),
    (LOC + '[[server.location]]\npath = "/"\n', 'server[0].location[1].path: duplicate location "/" (same as server[0].location[0])'),
    (LOC + '[[server.location]]\npath = "^~ /"\n', 'server[0].location[1].path: duplicate location "^~ /" (same as server[0].location[0])'),
    (SERVER + '[[server.location]]\npath = "= /a"\n[[server.location]]\npath = "=/a"\n',
     'server[0].location[1].path: duplicate location "= /a" (same as server[0].location[0])'),
    *PHASE_CASES,
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[line.split(": ")[0] for _, line in BAD])
def test_bad_value_is_one_exact_line(folder: Path, text: str, expected: str) -> None:
    assert problems(folder, text) == [f"pyresty.toml: {expected}"]


def test_exact_and_prefix_on_the_same_path_are_not_duplicates(folder: Path) -> None:
    text = SERVER + '[[server.location]]\npath = "= /a"\n[[server.location]]\npath = "/a"\n'
    text += '[[server.location]]\npath = "~ ^/a"\n[[server.location]]\npath = "~ ^/a"\n'
    assert [loc.kind for loc in load(write(folder, text)).servers[0].locations] == ["=", "", "~", "~"]


def test_same_name_on_different_listens_is_fine(folder: Path) -> None:
    text = SERVER + 'server_name = "a.com"\n[[server]]\nlisten = "127.0.0.1:8081"\nserver_name = "a.com"\n'
    assert len(load(write(folder, text)).servers) == 2


# --- every problem at once ---------------------------------------------------------

def test_every_problem_is_reported_at_once(folder: Path) -> None:
    text = textwrap.dedent("""\
        workers = -1
        wokers = 2
        [shared]
        cache = { sise = "10m" }
        [upstream.backend]
        servers = ["127.0.0.1:9001"]
        keepalive = -1
        [[server]]
        listen = "127.0.0.1:99999"
        [[server.location]]
        path = "/"
        proxy_pass = "http://backnd"
        proxy_next_upstrem = ["error"]
        [[server.location]]
        path = "nope"
        """)
    assert problems(folder, text) == [
        "pyresty.toml: workers: invalid value -1 (expected an integer >= 0 or \"auto\")",
        'pyresty.toml: wokers: unknown key (did you mean "workers"?)',
        'pyresty.toml: shared.cache.sise: unknown key (did you mean "size"?)',
        'pyresty.toml: shared.cache: missing required key "size" (the embedded backend needs a capacity)',
        "pyresty.toml: upstream.backend.keepalive: invalid value -1 (expected an integer >= 0)",
        'pyresty.toml: server[0].listen: invalid value "127.0.0.1:99999" (expected a port 0..65535)',
        'pyresty.toml: server[0].location[0].proxy_next_upstrem: unknown key (did you mean "proxy_next_upstream"?)',
        'pyresty.toml: server[0].location[0].proxy_pass: unknown upstream "backnd" (known: backend)',
        f'pyresty.toml: server[0].location[1].path: invalid value "nope" (expected {LOCATION_PATH})',
    ]


def test_a_bad_upstream_is_not_also_unknown(folder: Path) -> None:
    text = '[upstream.api]\nservers = []\n' + LOC + 'proxy_pass = "http://api"\n'
    assert len(problems(folder, text)) == 1


def test_a_refused_balancer_does_not_also_refuse_hash_key(folder: Path) -> None:
    text = UP + 'balancer = "hsh"\nhash_key = "uri"\n' + SERVER
    assert problems(folder, text) == [
        'pyresty.toml: upstream.api.balancer: invalid value "hsh" '
        '(expected round_robin, least_conn, hash or "module:function")'
    ]


def test_error_message_joins_problems_without_traceback(folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(folder, "workers = -1\nuser = 1\n" + SERVER))
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 2


# --- the file itself -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workers = ", "end of file: invalid TOML: Invalid value"),
        ("[server\n", "line 1, column 8: invalid TOML: Expected ']' at the end of a table declaration"),
        ('workers = 1\nuser = "a\n', "line 2, column 10: invalid TOML: Illegal character '\\n'"),
    ],
)
def test_toml_syntax_error_names_file_and_line(folder: Path, text: str, expected: str) -> None:
    assert problems(folder, text) == [f"pyresty.toml: {expected}"]


def test_missing_file(folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load("conf/missing.toml")
    assert caught.value.problems == ["conf/missing.toml: cannot read the config file: No such file or directory"]


def test_directory_instead_of_file(folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(".")
    assert caught.value.problems == [".: cannot read the config file: Is a directory"]


def test_not_utf8(folder: Path) -> None:
    (folder / "pyresty.toml").write_bytes(b'user = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load("pyresty.toml")
    assert caught.value.problems == ["pyresty.toml: the config file is not UTF-8 text (byte 8)"]


# --- prefix ------------------------------------------------------------------------------

PATHS = (
    'pid = "run/p.pid"\nerror_log = "../logs/e.log"\ncode_path = [".", "lib", "/opt/app"]\n'
    + SERVER + 'access_log = "a.log"\n[[server.location]]\npath = "/"\nroot = "./public/"\n'
)


def test_prefix_defaults_to_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc" / "pyresty"
    conf.mkdir(parents=True)
    (conf / "p.toml").write_text(PATHS)
    monkeypatch.chdir("/")
    config = load(str(conf / "p.toml"))
    assert config.prefix == str(conf)
    assert config.pid == f"{conf}/run/p.pid"
    assert config.error_log == f"{tmp_path}/etc/logs/e.log"
    assert config.code_path == (str(conf), f"{conf}/lib", "/opt/app")
    assert config.servers[0].access_log == f"{conf}/a.log"
    assert config.servers[0].locations[0].root == f"{conf}/public"


def test_prefix_given_relative_is_made_absolute(folder: Path) -> None:
    (folder / "srv").mkdir()
    config = load(write(folder, PATHS), prefix="srv")
    assert config.prefix == f"{folder}/srv"
    assert config.pid == f"{folder}/srv/run/p.pid"
    assert config.servers[0].locations[0].root == f"{folder}/srv/public"
    assert config.path == f"{folder}/pyresty.toml"


def test_absolute_paths_stay(folder: Path) -> None:
    text = 'pid = "/run/pyresty.pid"\nerror_log = "/var/log/e.log"\n' + SERVER + 'access_log = "/dev/stdout"\n'
    config = load(write(folder, text), prefix="/srv")
    assert (config.pid, config.error_log, config.servers[0].access_log) == (
        "/run/pyresty.pid", "/var/log/e.log", "/dev/stdout")


def test_problems_name_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text("workers = -1\n" + SERVER)
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert caught.value.problems[0].startswith(f"{path}: workers: ")


# --- builtin -----------------------------------------------------------------------------

def test_builtin_welcome_config() -> None:
    config = builtin()
    assert config.path == "<builtin>"
    assert config.workers == 0
    assert config.error_log == "stderr"
    assert os.path.isabs(config.pid) and config.pid.endswith("pyresty-welcome.pid")
    (server,) = config.servers
    assert server.listen == (Listen("127.0.0.1", 8080),)
    assert server.access_log is None
    (location,) = server.locations
    assert (location.kind, location.pattern, location.content) == ("", "/", "pyresty.server.welcome:page")
    assert location.key == "server[0].location[0]" and server.key == "server[0]"
    assert config.handler_strings() == [("server[0].location[0].content", "pyresty.server.welcome:page")]


def test_builtin_port() -> None:
    assert builtin(9999).servers[0].listen == (Listen("127.0.0.1", 9999),)
