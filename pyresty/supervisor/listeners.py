"""Listening sockets: bound once by the master, inherited by every worker.

One shared socket per address (not SO_REUSEPORT): the socket lives in the
master across reloads, so a connection waiting in the accept queue while an
old worker stops is taken by a new one instead of being reset -- closing a
SO_REUSEPORT socket drops its queue, which is exactly the loss a reload must
not cause.
"""
from __future__ import annotations

import socket

from pyresty.config.model import Listen

BACKLOG = 511


def bind(listen: Listen) -> socket.socket:
    """A non-blocking listening TCP socket for ``listen`` (raises OSError)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def bind_all(listens: list[Listen], keep: dict[Listen, socket.socket] | None = None
             ) -> dict[Listen, socket.socket]:
    """Sockets for every listen address, reusing those in ``keep`` (reload)."""
    keep = keep or {}
    bound: dict[Listen, socket.socket] = {}
    try:
        for listen in listens:
            if listen in bound:
                continue
            bound[listen] = keep[listen] if listen in keep else bind(listen)
    except OSError:
        for listen, sock in bound.items():
            if listen not in keep:
                sock.close()
        raise
    return bound


def listens_of(config) -> list[Listen]:  # type: ignore[no-untyped-def]
    """Every distinct listen address of every server, in file order."""
    seen: dict[Listen, None] = {}
    for server in config.servers:
        for listen in server.listen:
            seen.setdefault(listen, None)
    return list(seen)
