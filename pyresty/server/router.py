"""Virtual hosts and locations, chosen the way nginx chooses them.

Theory of operation: a ``Router`` is built once per process from the config's
servers; everything that can be decided up front (name tables, compiled
regexes, prefix tables) is decided then, so the two per-request calls are a
few dict lookups and, only when regex locations exist, a scan of them.

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

from pyresty.config.model import Listen, Location, Server

_Search = Callable[[str], "re.Match[str] | None"]


class _LocationTable:
    """One server's locations, precompiled for ``Router.match``."""

    __slots__ = ("server", "exact", "prefixes", "prefix_lengths", "regexes")

    def __init__(self, server: Server) -> None:
        self.server = server  # keeps id(server) valid while the table lives
        self.exact: dict[str, Location] = {}
        self.prefixes: dict[str, Location] = {}
        regexes: list[tuple[_Search, Location]] = []
        for loc in server.locations:
            if loc.kind == "=":
                self.exact.setdefault(loc.pattern, loc)
            elif loc.kind in ("", "^~"):
                self.prefixes.setdefault(loc.pattern, loc)
            elif loc.kind in ("~", "~*"):
                flags = re.IGNORECASE if loc.kind == "~*" else 0
                regexes.append((re.compile(loc.pattern, flags).search, loc))
            else:
                raise ValueError(f"{loc.key}: unknown location kind {loc.kind!r}")
        # Longest first: the first length whose slice is a known prefix is the
        # longest match, found with one dict lookup per distinct length.
        self.prefix_lengths = tuple(sorted({len(p) for p in self.prefixes}, reverse=True))
        self.regexes = tuple(regexes)

    def match(self, path: str) -> Location | None:
        exact = self.exact.get(path)
        if exact is not None:
            return exact
        prefix = self._longest_prefix(path)
        if prefix is not None and prefix.kind == "^~":
            return prefix
        for search, loc in self.regexes:
            if search(path) is not None:
                return loc
        return prefix

    def _longest_prefix(self, path: str) -> Location | None:
        size = len(path)
        prefixes = self.prefixes
        for length in self.prefix_lengths:
            if length <= size:
                loc = prefixes.get(path[:length])
                if loc is not None:
                    return loc
        return None


# Hosts remembered per listen address. Real traffic repeats a handful of Host
# values; a client sending random ones only makes the cache restart from empty.
HOST_CACHE_SIZE = 1024


class _NameTable:
    """The servers of one listen address, indexed by ``server_name``."""

    __slots__ = ("default", "only", "exact", "leading", "trailing", "regexes", "cache")

    def __init__(self, servers: Sequence[Server]) -> None:
        self.default = servers[0]
        self.only = len(servers) == 1
        self.exact: dict[str, Server] = {}
        self.leading: dict[str, Server] = {}    # "*.example.com" stored as ".example.com"
        self.trailing: dict[str, Server] = {}   # "mail.*" stored as "mail."
        regexes: list[tuple[_Search, Server]] = []
        for server in servers:
            for name in server.server_name:
                self._add(name, server, regexes)
        self.regexes = tuple(regexes)
        self.cache: dict[str, Server] = {}

    def _add(self, name: str, server: Server,
             regexes: list[tuple[_Search, Server]]) -> None:
        if name.startswith("~"):
            regexes.append((re.compile(name[1:]).search, server))
            return
        name = name.lower().rstrip(".")
        if name.startswith("*."):
            self.leading.setdefault(name[1:], server)
        elif name.startswith("."):
            self.exact.setdefault(name[1:], server)
            self.leading.setdefault(name, server)
        elif name.endswith(".*"):
            self.trailing.setdefault(name[:-1], server)
        else:
            self.exact.setdefault(name, server)

    def lookup(self, host: str) -> Server:
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
        for search, server in self.regexes:
            if search(host) is not None:
                return server
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


class Router:
    """Chooses the server for a connection's ``Host`` and the location for a path."""

    __slots__ = ("_names", "_locations")

    def __init__(self, servers: Sequence[Server]) -> None:
        """Precompile every table; raises ``re.error`` for a bad regex, ``ValueError``
        for an unknown location kind (the config loader rejects both first)."""
        by_listen: dict[Listen, list[Server]] = {}
        for server in servers:
            for listen in server.listen:
                by_listen.setdefault(listen, []).append(server)
        self._names = {listen: _NameTable(group) for listen, group in by_listen.items()}
        # Keyed by id(): hashing a frozen Server hashes every field, per request.
        self._locations = {id(s): _LocationTable(s) for s in servers}

    def server_for(self, listen: Listen, host: str | None) -> Server:
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

    def match(self, server: Server, path: str) -> Location | None:
        """The location of ``server`` for ``path``, or ``None`` when none matches."""
        table = self._locations.get(id(server))
        if table is None or table.server is not server:
            table = self._locations[id(server)] = _LocationTable(server)
        return table.match(path)
