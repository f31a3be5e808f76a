"""TLS on the server's listeners: one ``SSLContext`` per server and address, SNI, ALPN.

Theory of operation
-------------------
``open_tls(config)`` runs in each worker before it drops privileges (keys
are often readable by root only) and builds, for every ``ssl`` address, a
context per server listening there. The address's default server's context
is the one the listener starts each handshake with; its SNI callback moves
the handshake to the context of the server whose ``server_name`` matches the
client's SNI name (the same matching as for ``Host``), and leaves the
default one for an unknown name or none, as nginx does.

Rules
-----
1. Modern defaults: TLS 1.2 and 1.3 only (``ssl_protocols`` narrows them),
   no compression (CRIME), no renegotiation, the server's cipher order, and
   ``ssl_ciphers`` (nginx's default ``HIGH:!aNULL:!MD5``) for TLS 1.2.
2. ALPN offers ``h2`` before ``http/1.1`` when the server has ``http2 =
   true`` or the address the ``http2`` flag; a client that offers neither
   speaks HTTP/1.1 (RFC 7301 §3.2 lets a server go on without ALPN).
3. Session tickets are encrypted with keys OpenSSL draws when a context is
   made: each worker of each generation has its own, so a reload rotates
   them (nginx rotates them per reload too). A client resuming on another
   worker gets a full handshake.
4. The certificate and key were checked by the config loader in the master
   (config/certificates.py); a failure here is a boot error of the worker.
"""
from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from pyresty.server.router import Router

if TYPE_CHECKING:
    from pyresty.config.model import Config, Listen, Server

__all__ = ["H2", "HTTP11", "open_tls", "server_context"]

H2 = "h2"
HTTP11 = "http/1.1"

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def offers_h2(server: Server, listen: Listen) -> bool:
    return server.http2 or listen.http2


def server_context(server: Server, listen: Listen) -> ssl.SSLContext:
    """The context of ``server`` on ``listen`` (rules 1-3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = sorted(_VERSIONS[name] for name in server.ssl_protocols)
    ctx.minimum_version = versions[0]
    ctx.maximum_version = versions[-1]
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE)
    ctx.set_ciphers(server.ssl_ciphers)
    assert server.ssl_certificate is not None and server.ssl_certificate_key is not None
    ctx.load_cert_chain(server.ssl_certificate, server.ssl_certificate_key)
    ctx.set_alpn_protocols([H2, HTTP11] if offers_h2(server, listen) else [HTTP11])
    return ctx


def open_tls(config: Config) -> dict[Listen, ssl.SSLContext]:
    """The listening context of every ``ssl`` address, SNI included (module docstring)."""
    router = Router(config.servers)
    found: dict[Listen, ssl.SSLContext] = {}
    contexts: dict[tuple[Listen, int], ssl.SSLContext] = {}
    for server in config.servers:
        for listen in server.listen:
            if listen.ssl:
                contexts[(listen, id(server))] = server_context(server, listen)
                found.setdefault(listen, contexts[(listen, id(server))])
    for listen, ctx in found.items():
        ctx.sni_callback = _sni_callback(router, listen, contexts)
    return found


def _sni_callback(router: Router, listen: Listen,
                  contexts: dict[tuple[Listen, int], ssl.SSLContext]):  # type: ignore[no-untyped-def]
    def choose(sock: ssl.SSLObject, name: str | None, default: ssl.SSLContext) -> None:
        if name is None:
            return None    # no SNI: the default server (rule of the module docstring)
        server = router.server_for(listen, name)
        ctx = contexts.get((listen, id(server)))
        if ctx is not None and ctx is not default:
            sock.context = ctx
        return None
    return choose
