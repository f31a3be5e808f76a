"""Virtual hosts and locations, chosen the way nginx chooses them.

Theory of operation: a ``Router`` (server names) and one ``LocationTable``
per server are built once per process from the config; everything that can
be decided up front (name tables, compiled regexes, prefix tables) is decided
then, so the two per-request calls are a few dict lookups and, only when
regex locations exist, a scan of them. Both return what they were built with:
the router the object given for each server (the server itself by default;
the request path gives its compiled virtual servers), a location table the
value given for each location (the location itself by default; the request
path gives its compiled routes).

Server selection (nginx ``server_name``), among the servers that listen on the
address a connection was accepted on, by ``Host`` (port stripped, lowercased,
trailing dot stripped):

1. exact name;
2. longest leading wildcard (``*.example.com``; ``.example.com`` means both
   ``example.com`` and ``*.example.com``, as in nginx);
3. longest trailing wildcard (``mail.*``);
4. the first regex name (``~^www\\d+\\.example\\.com$``) that matches, in file order;
5. otherwise the listen's default server: the first one in file order.

A request without ``Host`` goes to the server named ``""`` if there is one
(nginx's idiom for it), else to the default server.

When two servers claim the same name the first in file order keeps it (nginx
warns "conflicting server name" and does the same).

Location selection (nginx ``location``), on the normalised, decoded path:

1. an ``=`` location equal to the path wins at once;
2. the longest matching prefix among ``^~`` and plain prefixes is remembered;
3. if that prefix is ``^~``, it is the answer, regexes are not tried;
4. regex locations (``~`` case-sensitive, ``~*`` case-insensitive) are tried
   in file order, the first that matches (anywhere in the path, as PCRE
   does unanchored) wins;
5. otherwise the remembered prefix, or ``None`` when nothing matched.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pyresty.config.model import Listen, Location, Server

_Search = Callable[[str], "re.Match[str] | None"]
V = TypeVar("V")
H = TypeVar("H")


class LocationTable(Generic[V]):
    """One server's locations, precompiled; ``match`` returns the value given
    for the chosen location (``values[i]`` for ``locations[i]``)."""

    __slots__ = ("exact", "prefixes", "prefix_lengths", "regexes")

    def __init__(self, locations: Sequence[Location], values: Sequence[V] | None = None) -> None:
        chosen: Sequence[Any] = locations if values is None else values
        self.exact: dict[str, V] = {}
        self.prefixes: dict[str, tuple[bool, V]] = {}    # pattern -> (is "^~", value)
        regexes: list[tuple[_Search, V]] = []
        for loc, value in zip(locations, chosen, strict=True):
            if loc.kind == "=":
                self.exact.setdefault(loc.pattern, value)
            elif loc.kind in ("", "^~"):
                self.prefixes.setdefault(loc.pattern, (loc.kind == "^~", value))
            elif loc.kind in ("~", "~*"):
                flags = re.IGNORECASE if loc.kind == "~*" else 0
                regexes.append((re.compile(loc.pattern, flags).search, value))
            else:
                raise ValueError(f"{loc.key}: unknown location kind {loc.kind!r}")
        # Longest first: the first length whose slice is a known prefix is the
        # longest match, found with one dict lookup per distinct length.
        self.prefix_lengths = tuple(sorted({len(p) for p in self.prefixes}, reverse=True))
        self.regexes = tuple(regexes)

    def match(self, path: str) -> V | None:
        exact = self.exact.get(path)
        if exact is not None:
            return exact
        prefix = self._longest_prefix(path)
        if prefix is not None and prefix[0]:
            return prefix[1]
        for search, value in self.regexes:
            if search(path) is not None:
                return value
        return None if prefix is None else prefix[1]

    def _longest_prefix(self, path: str) -> tuple[bool, V] | None:
        size = len(path)
        prefixes = self.prefixes
        for length in self.prefix_lengths:
            if length <= size:
                found = prefixes.get(path[:length])
                if found is not None:
                    return found
        return None


# Hosts remembered per listen address. Real traffic repeats a handful of Host
# values; a client sending random ones only makes the cache restart from empty.
HOST_CACHE_SIZE = 1024


class _NameTable(Generic[H]):
    """The servers of one listen address, indexed by ``server_name``."""

    __slots__ = ("default", "only", "exact", "leading", "trailing", "regexes", "cache")

    def __init__(self, servers: Sequence[tuple[Server, H]]) -> None:
        self.default = servers[0][1]
        self.only = len(servers) == 1
        self.exact: dict[str, H] = {}
        self.leading: dict[str, H] = {}    # "*.example.com" stored as ".example.com"
        self.trailing: dict[str, H] = {}   # "mail.*" stored as "mail."
        regexes: list[tuple[_Search, H]] = []
        for server, value in servers:
            for name in server.server_name:
                self._add(name, value, regexes)
        self.regexes = tuple(regexes)
        self.cache: dict[str, H] = {}

    def _add(self, name: str, value: H, regexes: list[tuple[_Search, H]]) -> None:
        if name.startswith("~"):
            regexes.append((re.compile(name[1:]).search, value))
            return
        name = name.lower().rstrip(".")
        if name.startswith("*."):
            self.leading.setdefault(name[1:], value)
        elif name.startswith("."):
            self.exact.setdefault(name[1:], value)
            self.leading.setdefault(name, value)
        elif name.endswith(".*"):
            self.trailing.setdefault(name[:-1], value)
        else:
            self.exact.setdefault(name, value)

    def lookup(self, host: str) -> H:
        found = self.exact.get(host)
        if found is not None:
            return found
        if self.leading:
            # ".b.example.com", then ".example.com", then ".com": longest first.
            dot = host.find(".")
            while dot != -1:
                found = self.leading.get(host[dot:])
                if found is not None:
                    return found
                dot = host.find(".", dot + 1)
        if self.trailing:
            # "mail.example.", then "mail.": longest first.
            dot = host.rfind(".")
            while dot != -1:
                found = self.trailing.get(host[:dot + 1])
                if found is not None:
                    return found
                dot = host.rfind(".", 0, dot)
        for search, value in self.regexes:
            if search(host) is not None:
                return value
        return self.default


def normalize_host(host: str) -> str:
    """``Host`` as a server name: port stripped, lowercased, no trailing dot.

    An IPv6 literal keeps its brackets (``[::1]:8080`` -> ``[::1]``), which is
    how nginx compares it with ``server_name``.
    """
    if host.startswith("["):
        end = host.find("]")
        host = host[:end + 1] if end != -1 else host
    else:
        colon = host.rfind(":")
        if colon != -1:
            host = host[:colon]
    return host.lower().rstrip(".")


class Router(Generic[H]):
    """Chooses the server for a connection's address and ``Host``."""

    __slots__ = ("_names",)

    def __init__(self, servers: Sequence[Server], hosts: Sequence[H] | None = None) -> None:
        """Precompile the name tables; ``server_for`` returns ``hosts[i]`` for
        ``servers[i]`` (the servers themselves without ``hosts``). Raises
        ``re.error`` for a bad regex name (the config loader rejects it first)."""
        chosen: Sequence[Any] = servers if hosts is None else hosts
        by_listen: dict[Listen, list[tuple[Server, H]]] = {}
        for server, value in zip(servers, chosen, strict=True):
            for listen in server.listen:
                by_listen.setdefault(listen, []).append((server, value))
        self._names = {listen: _NameTable(group) for listen, group in by_listen.items()}

    def default(self, listen: Listen) -> H:
        """The first server in file order listening on ``listen``."""
        return self._names[listen].default

    def shared(self, listen: Listen) -> bool:
        """Whether several servers listen on ``listen`` (so ``Host`` chooses)."""
        return not self._names[listen].only

    def server_for(self, listen: Listen, host: str | None) -> H:
        """The server for a connection accepted on ``listen`` with this ``Host``.

        Raises ``KeyError`` when no server listens on ``listen``.
        """
        table = self._names[listen]
        if table.only:
            return table.default
        if not host:
            # nginx: `server_name ""` claims requests without a Host.
            return table.exact.get("", table.default)
        cache = table.cache
        found = cache.get(host)
        if found is None:
            if len(cache) >= HOST_CACHE_SIZE:
                cache.clear()
            found = cache[host] = table.lookup(normalize_host(host))
        return found
