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
5. A handshake that fails is counted by its reason (``/metrics``
   ``pyresty_tls_handshake_failures_total{reason}``): OpenSSL's reason in
   lower case without its alert prefix (``no_shared_cipher``,
   ``unsupported_protocol``, ``unknown_ca`` for the client's alert,
   ``http_request`` for plain HTTP on the TLS port), ``eof`` for a client
   that closed, ``reset``, ``timeout`` (the default server's
   ``client_header_timeout`` bounds the handshake, as in nginx), ``error``
   otherwise. The exception comes from uvloop's ``connect_accepted_socket``
   (server/acceptor.py), off the path of connections that succeed. Each
   failure is logged at ``info`` in nginx's words (``SSL_do_handshake()
   failed (...) while SSL handshaking, client: ..., server: ...``), at most
   one line a second with the count of those left out.
6. Plain HTTP on a TLS port is answered as nginx does: the acceptor peeks at
   the first byte (``looks_like_tls``); a connection that does not start a
   TLS record has its request head read and gets 400 "The plain HTTP
   request was sent to HTTPS port", then is closed, counted as
   ``http_request`` (negotiation.PlainOnTls).
"""
from __future__ import annotations

import errno
import logging
import ssl
from typing import TYPE_CHECKING, Any

from pyresty.runtime.throttle import LogThrottle
from pyresty.server.router import Router

if TYPE_CHECKING:
    from pyresty.config.model import Config, Listen, Server
    from pyresty.server.state import ServerState

__all__ = ["H2", "HTTP11", "PlainHttpRequest", "failure_reason", "handshake_failed",
           "looks_like_tls", "open_tls", "server_context"]

log = logging.getLogger("pyresty.http")

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


_ALERT_PREFIXES = ("sslv3_alert_", "tlsv1_alert_", "tlsv13_alert_")
_lines = LogThrottle(log, logging.INFO)


class PlainHttpRequest(OSError):
    """A client spoke plain HTTP to a TLS port (answered 400 by negotiation.PlainOnTls)."""


def looks_like_tls(first: bytes) -> bool:
    """Whether a connection's first byte starts a TLS handshake record (0x16), or an
    SSLv2-style hello (high bit set), as nginx's ``ngx_http_ssl_handshake`` checks;
    anything else on a TLS port is taken for plain HTTP (rule 6)."""
    return not first or first[0] == 0x16 or bool(first[0] & 0x80)


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of a failed handshake (rule 5)."""
    if isinstance(exc, PlainHttpRequest):
        return "http_request"
    if isinstance(exc, ssl.SSLError):
        if isinstance(exc, ssl.SSLEOFError):
            return "eof"
        reason = (exc.reason or "").lower()
        for prefix in _ALERT_PREFIXES:
            if reason.startswith(prefix):
                return reason[len(prefix):]
        return reason or "error"
    if isinstance(exc, ConnectionAbortedError):
        return "timeout"        # uvloop's ssl_handshake_timeout
    if isinstance(exc, ConnectionResetError):
        return "reset" if exc.errno == errno.ECONNRESET else "eof"
    return "error"


def handshake_failed(state: ServerState, listen: Listen, exc: BaseException, client: Any) -> None:
    """Count and log one failed handshake on ``listen`` (rule 5)."""
    reason = failure_reason(exc)
    state.count_handshake_failure(reason)
    host = client[0] if isinstance(client, tuple) and client else "-"
    if reason == "http_request" and not isinstance(exc, ssl.SSLError):
        what = "client sent plain HTTP request to HTTPS port"
    elif reason == "timeout":
        what = "client timed out (110: Connection timed out)"
    elif reason in ("eof", "reset"):
        what = "peer closed connection in SSL handshake"
    elif isinstance(exc, ssl.SSLError):
        what = f"SSL_do_handshake() failed ({exc.strerror or exc})"   # "[SSL: REASON] text"
    else:
        what = f"SSL_do_handshake() failed ({exc})"
    _lines.report("%s while SSL handshaking, client: %s, server: %s:%d", what, host,
                  listen.host, listen.port)
