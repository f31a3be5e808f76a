"""Listening sockets: bound once by the master, inherited by every worker.

One shared socket per address (not SO_REUSEPORT): the socket lives in the
master across reloads, so a connection waiting in the accept queue while an
old worker stops is taken by a new one instead of being reset -- closing a
SO_REUSEPORT socket drops its queue, which is exactly the loss a reload must
not cause.
"""
from __future__ import annotations

import socket

from pyresty.config.model import BACKLOG, Listen


class ListenError(OSError):
    """An address that cannot be bound: ``cannot listen on 127.0.0.1:8080: address
    already in use`` (what the operator needs to read on the terminal)."""

    def __init__(self, listen: Listen, exc: OSError, role: str = "") -> None:
        reason = exc.strerror or str(exc)
        reason = reason[:1].lower() + reason[1:]
        super().__init__(exc.errno, f"cannot listen on {listen}{role}: {reason}")
        self.listen = listen

    def __str__(self) -> str:
        return str(self.strerror)


def bind(listen: Listen, role: str = "") -> socket.socket:
    """A non-blocking listening TCP socket for ``listen``; raises ListenError naming
    the address (and ``role``, e.g. " (the status listener)")."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(listen, exc, role) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise ListenError(listen, exc, role) from exc
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
