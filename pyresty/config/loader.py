"""Read a TOML config file into frozen ``Config`` objects, or report every problem.

Theory of operation: ``tomllib`` turns the file into plain dicts and lists;
``_Loader`` walks them section by section with the key tables of
``schema.py``. A section first reports keys it does not know (with a "did you
mean" hint), then runs each value through its validator; a validator that
refuses a value raises ``ValueError(reason)`` and the walk goes on, so one run
finds every problem. Checks that need the whole file (``proxy_pass`` naming an
upstream, duplicate locations, two servers with one name) run once the
sections are read. Any problem at all means ``ConfigError`` with every line;
a caller never gets a half-valid ``Config``.

Relative paths (``pid``, ``error_log``, ``access_log``, ``root``,
``code_path``) resolve against the prefix: the config file's folder unless
``pyresty -p`` gives one, as nginx resolves against its ``-p`` prefix.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
import tomllib
from typing import Any

from pyresty.config import schema
from pyresty.config.model import (
    HEALTH_DICT,
    HEALTH_DICT_SIZE,
    Config,
    HealthCheck,
    Hooks,
    LimitUse,
    LimitZone,
    Listen,
    Location,
    Peer,
    Server,
    SharedDictSpec,
    Status,
    Upstream,
)
from pyresty.config.problems import Problems, invalid, join_key, show, unknown_key
from pyresty.errors import ConfigError

__all__ = ["WELCOME_HANDLER", "builtin", "load"]

WELCOME_HANDLER = "pyresty.server.welcome:page"

log = logging.getLogger("pyresty.config")

_SECTIONS = ("hooks", "shared", "upstream", "status", "limit_req", "limit_conn", "limit_count",
             "server")
_LIMIT_KINDS = ("req", "conn", "count")
_PEERS_EXPECTED = 'an array of "host:port" or { addr = "host:port", ... }'
_TOML_POSITION = re.compile(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", re.DOTALL)


def load(path: str, prefix: str | None = None) -> Config:
    """Load and validate the config at ``path``; relative paths resolve against ``prefix``.

    ``prefix`` defaults to the folder of the config file. Raises ``ConfigError``
    whose ``problems`` list every problem found, one line each, starting with
    ``path`` as given.
    """
    problems = Problems(path)
    document = _read_toml(path, problems)
    if document is None:
        raise ConfigError(problems.lines)
    absolute = os.path.abspath(path)
    base = os.path.abspath(prefix if prefix is not None else os.path.dirname(absolute))
    config = _Loader(problems, base).config(document, absolute)
    if problems:
        raise ConfigError(problems.lines)
    return config


def builtin(port: int = 8080) -> Config:
    """The config ``pyresty`` runs without ``-c``: a welcome page on 127.0.0.1, one process."""
    runtime = tempfile.gettempdir()
    welcome = Location(kind="", pattern="/", content=WELCOME_HANDLER, key="server[0].location[0]")
    server = Server(
        listen=(Listen("127.0.0.1", port),),
        access_log=None,
        locations=(welcome,),
        key="server[0]",
    )
    return Config(
        path="<builtin>",
        prefix=runtime,
        workers=0,
        pid=os.path.join(runtime, "pyresty-welcome.pid"),
        error_log="stderr",
        code_path=(),
        servers=(server,),
    )


def _read_toml(path: str, problems: Problems) -> dict[str, Any] | None:
    """The parsed document, or None after recording why the file cannot be used."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        problems.add("", f"cannot read the config file: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        problems.add("", f"the config file is not UTF-8 text (byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        problems.add("", _syntax_reason(str(exc)))
    return None


def _syntax_reason(message: str) -> str:
    """``Expected '=' ... (at line 3, column 5)`` -> ``line 3, column 5: invalid TOML: Expected '=' ...``."""
    match = _TOML_POSITION.fullmatch(message)
    if match is None:
        return f"invalid TOML: {message}"
    reason, line, column = match.groups()
    where = f"line {line}, column {column}" if line else "end of file"
    return f"{where}: invalid TOML: {reason}"


def _tls_versions(server: Server) -> tuple[tuple[str, ...], str]:
    return server.ssl_protocols, server.ssl_ciphers


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default, so the model stays the one place defaults live."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            return item.default
    raise KeyError(name)


class _Loader:
    """Walks one parsed document; every problem goes to ``problems``.

    A builder returns None exactly when it (or a section below it) recorded a
    problem; ``load`` raises then, so no half-built object escapes.
    """

    def __init__(self, problems: Problems, prefix: str) -> None:
        self.problems = problems
        self.prefix = prefix

    # --- mechanics -------------------------------------------------------------

    def mark(self) -> int:
        return len(self.problems.lines)

    def clean_since(self, mark: int) -> bool:
        return len(self.problems.lines) == mark

    def table(self, raw: Any, key: str, spec: dict[str, schema.Validator]) -> dict[str, Any]:
        """Validated values of the keys present in ``raw``; NESTED keys are passed through raw."""
        if not isinstance(raw, dict):
            self.problems.add(key, str(invalid(raw, "a table")))
            return {}
        values: dict[str, Any] = {}
        for name, value in raw.items():
            where = join_key(key, name)
            check = spec.get(name)
            if check is None:
                self.problems.add(where, unknown_key(name, spec))
            elif check is schema.NESTED:
                values[name] = value
            else:
                values[name] = self.value(where, check, value)
        return values

    def value(self, where: str, check: schema.Validator, raw: Any) -> Any:
        """``check(raw)``, or None after recording why it was refused."""
        try:
            return check(raw)
        except ValueError as exc:
            self.problems.add(where, str(exc))
            return None

    def require(self, raw: Any, key: str, name: str, why: str = "") -> None:
        if isinstance(raw, dict) and name not in raw:
            self.problems.add(key, f'missing required key "{name}"' + (f" ({why})" if why else ""))

    def array_of_tables(self, raw: Any, key: str, header: str) -> list[dict[str, Any]]:
        if isinstance(raw, list) and all(isinstance(item, dict) for item in raw):
            return raw
        self.problems.add(key, str(invalid(raw, f"{header} tables")))
        return []

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.prefix, path))

    # --- top level -----------------------------------------------------------

    def config(self, document: dict[str, Any], path: str) -> Config:
        values = self.table(document, "", schema.TOP)
        sections = {name: values.pop(name) for name in _SECTIONS if name in values}
        hooks = self.hooks(sections.get("hooks", {}))
        shared = self.shared(sections.get("shared", {}))
        upstreams = self.upstreams(sections.get("upstream", {}))
        status = self.status(sections.get("status", {}))
        known = sorted(sections["upstream"]) if isinstance(sections.get("upstream"), dict) else []
        self.zones = self.limit_zones(sections, shared)
        if any(up.health_check is not None for up in upstreams):
            # where active health checks publish their verdicts (pyresty/upstream/health.py)
            shared += (SharedDictSpec(HEALTH_DICT, capacity=HEALTH_DICT_SIZE),)
        servers = self.servers(sections.get("server"), known)
        self.check_status_listen(status, servers)
        paths = self.paths(values)
        return Config(
            path=path,
            prefix=self.prefix,
            hooks=hooks,
            shared=shared,
            upstreams=upstreams,
            status=status,
            limit_zones=tuple(zone for zone in self.zones.values() if zone is not None),
            servers=servers,
            **paths,
            **{name: value for name, value in values.items() if value is not None},
        )

    def paths(self, values: dict[str, Any]) -> dict[str, Any]:
        """Pop the paths (pid, error_log, code_path, client_body_temp_path) from ``values``,
        resolved (defaults included)."""
        pid = values.pop("pid", None) or _default(Config, "pid")
        error_log = values.pop("error_log", None) or _default(Config, "error_log")
        code_path = values.pop("code_path", _default(Config, "code_path")) or ()
        body_temp = values.pop("client_body_temp_path", None) or _default(Config, "client_body_temp_path")
        return {
            "client_body_temp_path": self.resolve(body_temp),
            "pid": self.resolve(pid),
            "error_log": error_log if error_log == "stderr" else self.resolve(error_log),
            "code_path": tuple(self.resolve(folder) for folder in code_path),
        }

    def hooks(self, raw: Any) -> Hooks:
        mark = self.mark()
        values = self.table(raw, "hooks", schema.HOOKS)
        return Hooks(**values) if self.clean_since(mark) else Hooks()

    def status(self, raw: Any) -> Status:
        mark = self.mark()
        values = self.table(raw, "status", schema.STATUS)
        return Status(**values) if self.clean_since(mark) else Status()

    def check_status_listen(self, status: Status, servers: tuple[Server, ...]) -> None:
        for server in servers:
            if status.listen is not None and status.listen in server.listen:
                self.problems.add("status.listen", f"{status.listen} is also a listen of {server.key}")

    # --- shared dicts ----------------------------------------------------------

    def shared(self, raw: Any) -> tuple[SharedDictSpec, ...]:
        if not isinstance(raw, dict):
            self.problems.add("shared", str(invalid(raw, "a table of dictionaries")))
            return ()
        found = [self.shared_entry(name, value, join_key("shared", name)) for name, value in raw.items()]
        return tuple(spec for spec in found if spec is not None)

    def shared_entry(self, name: str, raw: Any, key: str) -> SharedDictSpec | None:
        """``name = "10m"`` (embedded) or ``name = { backend = "redis://...", size = "10m" }``."""
        mark = self.mark()
        self.value(key, schema.dict_name, name)
        if isinstance(raw, dict):
            values = self.table(raw, key, schema.SHARED_ENTRY)
            if raw.get("backend", "embedded") == "embedded":
                self.require(raw, key, "size", "the embedded backend needs a capacity")
        else:
            values = {"size": self.value(key, schema.SHARED_ENTRY["size"], raw)}
        if not self.clean_since(mark):
            return None
        return SharedDictSpec(name, capacity=values.get("size", 0), backend=values.get("backend", "embedded"))

    # --- traffic control ---------------------------------------------------------

    def limit_zones(self, sections: dict[str, Any],
                    shared: tuple[SharedDictSpec, ...]) -> dict[tuple[str, str], LimitZone | None]:
        """Every ``[limit_<kind>.NAME]``, by (kind, name); None for a zone that was refused
        (its uses are then not reported again as unknown)."""
        zones: dict[tuple[str, str], LimitZone | None] = {}
        owners: dict[str, str] = {}
        dicts = [spec.name for spec in shared]
        for kind in _LIMIT_KINDS:
            section = f"limit_{kind}"
            raw = sections.get(section, {})
            if not isinstance(raw, dict):
                self.problems.add(section, str(invalid(raw, f"[{section}.NAME] tables")))
                continue
            for name, table in raw.items():
                key = join_key(section, name)
                zones[(kind, name)] = self.limit_zone(kind, name, table, key, dicts)
                first = owners.setdefault(name, section)
                if first != section:
                    # nginx names every shared memory zone in one namespace; so do
                    # metrics and log lines here
                    self.problems.add(key, f"zone name {show(name)} is also used by [{first}.{name}]")
        return zones

    def limit_zone(self, kind: str, name: str, raw: Any, key: str,
                   dicts: list[str]) -> LimitZone | None:
        mark = self.mark()
        self.value(key, schema.dict_name, name)
        values = self.table(raw, key, schema.LIMIT_ZONES[kind])
        for required in schema.LIMIT_ZONE_REQUIRED[kind]:
            self.require(raw, key, required)
        dict_name = values.get("dict")
        if dict_name is not None and dict_name not in dicts:
            known = ", ".join(dicts) if dicts else "none; add one under [shared]"
            self.problems.add(join_key(key, "dict"), f"unknown shared dict {show(dict_name)} (known: {known})")
        if not self.clean_since(mark):
            return None
        return LimitZone(kind=kind, name=name, **values)

    def location_limits(self, raw: dict[str, Any], values: dict[str, Any], key: str) -> None:
        """Turn the location's limit_req/limit_conn/limit_count into LimitUse tuples, in place."""
        zones = getattr(self, "zones", {})
        for kind in _LIMIT_KINDS:
            field = f"limit_{kind}"
            if field not in raw:
                continue
            where = join_key(key, field)
            items = raw[field]
            tables = items if isinstance(items, list) else [items]
            if not tables or not all(isinstance(t, dict) for t in tables):
                expected = "{ zone = \"NAME\", ... } or an array of them"
                self.problems.add(where, str(invalid(items, expected)))
                values.pop(field, None)
                continue
            uses = []
            for i, table in enumerate(tables):
                at = f"{where}[{i}]" if isinstance(items, list) else where
                use = self.limit_use(kind, table, at, zones)
                if use is not None:
                    uses.append(use)
            values[field] = tuple(uses)

    def limit_use(self, kind: str, raw: dict[str, Any], key: str,
                  zones: dict[tuple[str, str], LimitZone | None]) -> LimitUse | None:
        mark = self.mark()
        values = self.table(raw, key, schema.LIMIT_USES[kind])
        for required in schema.LIMIT_USE_REQUIRED[kind]:
            self.require(raw, key, required)
        zone = values.get("zone")
        if zone is not None and (kind, zone) not in zones:
            names = sorted(name for k, name in zones if k == kind)
            known = ", ".join(names) if names else f"none; define one as [limit_{kind}.NAME]"
            self.problems.add(join_key(key, "zone"), f"unknown limit_{kind} zone {show(zone)} (known: {known})")
        if values.get("nodelay") and values.get("delay"):
            self.problems.add(join_key(key, "delay"), "delay and nodelay exclude each other")
        if not self.clean_since(mark):
            return None
        return LimitUse(**values)

    # --- upstreams -------------------------------------------------------------

    def upstreams(self, raw: Any) -> tuple[Upstream, ...]:
        if not isinstance(raw, dict):
            self.problems.add("upstream", str(invalid(raw, "[upstream.NAME] tables")))
            return ()
        found = [self.upstream(name, value, join_key("upstream", name)) for name, value in raw.items()]
        return tuple(up for up in found if up is not None)

    def upstream(self, name: str, raw: Any, key: str) -> Upstream | None:
        mark = self.mark()
        self.value(key, schema.upstream_name, name)
        values = self.table(raw, key, schema.UPSTREAM)
        self.require(raw, key, "servers")
        peers = self.peers(values.pop("servers"), join_key(key, "servers")) if "servers" in values else ()
        if "health_check" in values:
            values["health_check"] = self.health_check(values["health_check"], join_key(key, "health_check"))
        self.check_balancer(raw, values, peers or (), key)
        if not self.clean_since(mark) or peers is None:
            return None
        return Upstream(name=name, servers=peers, **values)

    def peers(self, raw: Any, key: str) -> tuple[Peer, ...] | None:
        if not isinstance(raw, list) or not raw:
            self.problems.add(key, str(invalid(raw, _PEERS_EXPECTED)))
            return None
        found = [self.peer(item, f"{key}[{i}]") for i, item in enumerate(raw)]
        peers = tuple(peer for peer in found if peer is not None)
        if len(peers) != len(found):
            return None
        if all(peer.backup for peer in peers):
            self.problems.add(key, "at least one server must not be a backup")
            return None
        return peers

    def peer(self, raw: Any, key: str) -> Peer | None:
        mark = self.mark()
        if isinstance(raw, str):
            address = self.value(key, schema.peer_address, raw)
            return Peer(*address) if address else None
        values = self.table(raw, key, schema.PEER)
        self.require(raw, key, "addr")
        if not self.clean_since(mark):
            return None
        host, port = values.pop("addr")
        return Peer(host, port, **values)

    def check_balancer(self, raw: Any, values: dict[str, Any], peers: tuple[Peer, ...], key: str) -> None:
        """hash needs a key and, as in nginx, cannot fall back to backup servers."""
        balancer = values.get("balancer", "round_robin")
        if balancer is None:  # refused already; no second guess about hash_key
            return
        if balancer == "hash":
            self.require(raw, key, "hash_key", 'balancer = "hash" hashes it')
            for i, peer in enumerate(peers):
                if peer.backup:
                    reason = 'backup servers do not work with balancer = "hash"'
                    self.problems.add(f"{key}.servers[{i}].backup", reason)
        elif values.get("hash_key") and balancer in schema.BALANCERS:
            reason = f'only used with balancer = "hash", not {show(balancer)}'
            self.problems.add(join_key(key, "hash_key"), reason)

    def health_check(self, raw: Any, key: str) -> HealthCheck | None:
        mark = self.mark()
        values = self.table(raw, key, schema.HEALTH_CHECK)
        return HealthCheck(**values) if self.clean_since(mark) else None

    # --- servers and locations -------------------------------------------------

    def servers(self, raw: Any, upstreams: list[str]) -> tuple[Server, ...]:
        if raw is None or raw == []:
            self.problems.add("server", "at least one [[server]] is required")
            return ()
        tables = self.array_of_tables(raw, "server", "[[server]]")
        found = [self.server(item, f"server[{i}]", upstreams) for i, item in enumerate(tables)]
        servers = tuple(server for server in found if server is not None)
        self.check_server_names(servers)
        self.check_listen_flags(servers)
        return servers

    def check_listen_flags(self, servers: tuple[Server, ...]) -> None:
        """One address is one socket: every server on it must give it the same flags."""
        first: dict[Listen, Server] = {}
        for server in servers:
            for address in server.listen:
                owner = first.setdefault(address, server)
                seen = next(a for a in owner.listen if a == address)
                if owner is not server and address.ssl and _tls_versions(owner) != _tls_versions(server):
                    log.warning("%s: %s: ssl_protocols and ssl_ciphers of %s apply on %s, not "
                                "these (they are chosen before SNI names the server)",
                                self.problems.label, server.key, owner.key, address)
                if seen.flags != address.flags:
                    reason = (f'"{address}{address.flags}" differs from "{seen}{seen.flags}" '
                              f"in {owner.key} (an address has one set of flags)")
                    self.problems.add(f"{server.key}.listen", reason)

    def server(self, raw: dict[str, Any], key: str, upstreams: list[str]) -> Server | None:
        mark = self.mark()
        values = self.table(raw, key, schema.SERVER)
        self.require(raw, key, "listen")
        locations = self.locations(values.pop("location", []), join_key(key, "location"), upstreams)
        if not self.clean_since(mark):
            return None
        access_log = values.get("access_log")
        if access_log is not None:
            values["access_log"] = None if access_log == "off" else self.resolve(access_log)
        for name in ("ssl_certificate", "ssl_certificate_key"):
            if name in values:
                values[name] = self.resolve(values[name])
        server = Server(key=key, locations=locations, **values)
        return server if self.check_tls(server) else None

    def check_tls(self, server: Server) -> bool:
        """An ssl address needs a certificate and its key, both readable and
        matching (read here: at start, ``-t`` and every reload)."""
        mark = self.mark()
        cert, key = server.ssl_certificate, server.ssl_certificate_key
        if server.ssl and (cert is None or key is None):
            missing = "ssl_certificate" if cert is None else "ssl_certificate_key"
            self.problems.add(join_key(server.key, missing),
                              'required by a "ssl" listen address')
        elif (cert is None) != (key is None):
            given = "ssl_certificate" if key is None else "ssl_certificate_key"
            missing = "ssl_certificate_key" if key is None else "ssl_certificate"
            self.problems.add(join_key(server.key, missing), f"required with {given}")
        if cert is not None and key is not None:
            # only a TLS config pays for cryptography's import (~150 ms of every -s reload)
            from pyresty.config import certificates
            errors, warnings = certificates.check(cert, key)
            for which, reason in errors:
                self.problems.add(join_key(server.key, which), reason)
            for which, reason in warnings:
                log.warning("%s: %s: %s", self.problems.label, join_key(server.key, which), reason)
        return self.clean_since(mark)

    def locations(self, raw: Any, key: str, upstreams: list[str]) -> tuple[Location, ...]:
        tables = self.array_of_tables(raw, key, "[[server.location]]")
        found = [self.location(item, f"{key}[{j}]", upstreams) for j, item in enumerate(tables)]
        locations = tuple(loc for loc in found if loc is not None)
        self.check_duplicate_locations(locations)
        return locations

    def location(self, raw: dict[str, Any], key: str, upstreams: list[str]) -> Location | None:
        mark = self.mark()
        values = self.table(raw, key, schema.LOCATION)
        self.require(raw, key, "path")
        handlers = [name for name in ("content", "proxy_pass", "root") if name in raw]
        if len(handlers) > 1:
            found = " and ".join(handlers)
            self.problems.add(key, f"content, proxy_pass and root exclude each other (found {found})")
        if values.get("proxy_pass"):
            self.check_proxy_pass(values["proxy_pass"], join_key(key, "proxy_pass"), upstreams)
        self.location_limits(raw, values, key)
        if not self.clean_since(mark):
            return None
        kind, pattern = values.pop("path")
        if "root" in values:
            values["root"] = self.resolve(values["root"])
        if "proxy_ssl_trusted_certificate" in values:
            trusted = values["proxy_ssl_trusted_certificate"] = self.resolve(
                values["proxy_ssl_trusted_certificate"])
            if not os.access(trusted, os.R_OK):
                self.problems.add(join_key(key, "proxy_ssl_trusted_certificate"),
                                  f"cannot read {trusted}")
                return None
        return Location(kind=kind, pattern=pattern, key=key, **values)

    def check_proxy_pass(self, url: str, key: str, upstreams: list[str]) -> None:
        name = schema.proxy_upstream(url)
        if name is None or name in upstreams:
            return
        known = ", ".join(upstreams) if upstreams else "none"
        self.problems.add(key, f"unknown upstream {show(name)} (known: {known})")

    def check_duplicate_locations(self, locations: tuple[Location, ...]) -> None:
        """nginx refuses two prefix locations with one path ("^~" or not) and two exact ones."""
        seen: dict[tuple[bool, str], Location] = {}
        for loc in locations:
            if loc.kind in ("~", "~*"):
                continue
            first = seen.setdefault((loc.kind == "=", loc.pattern), loc)
            if first is not loc:
                shown = f"{loc.kind} {loc.pattern}".strip()
                reason = f"duplicate location {show(shown)} (same as {first.key})"
                self.problems.add(f"{loc.key}.path", reason)

    def check_server_names(self, servers: tuple[Server, ...]) -> None:
        """A second server with the same name on the same address could never be chosen."""
        owners: dict[tuple[Listen, str], Server] = {}
        for server in servers:
            for address in server.listen:
                for name in server.server_name or ("",):
                    first = owners.setdefault((address, name), server)
                    if first is not server:
                        self.report_name_clash(server, first, address, name)

    def report_name_clash(self, server: Server, first: Server, address: Listen, name: str) -> None:
        if name:
            reason = f"{show(name)} on {address} is already used by {first.key}"
            self.problems.add(f"{server.key}.server_name", reason)
        else:
            reason = f"{address} already has a server without server_name ({first.key})"
            self.problems.add(f"{server.key}.listen", reason)
