"""TLS for the connections pyresty opens: upstreams (``proxy_pass https://``) and
cosockets (``connect(..., ssl=True)``).

``client_context`` makes the ``SSLContext`` such a connection is wrapped with;
the caller passes the server name at wrap time (``server_hostname=``), which
sends SNI and is the name the certificate is checked against.

Rules
-----
1. Verification is on by default (nginx's ``proxy_ssl_verify`` is off by
   default, which has let many gateways talk to anyone; here turning it off
   is a decision written in the config): the system CA store, or
   ``trusted_certificate`` (a PEM bundle, nginx's
   ``proxy_ssl_trusted_certificate``) instead of it, and the host name.
2. TLS 1.2 at least, as on the listeners.
3. Contexts are cached by their settings: one per (verify, trusted file, ALPN)
   in a process, so pooled connections share the session cache and a
   keepalive pool can key its connections by ``(host, port, server name)``.
"""
from __future__ import annotations

import ssl
from functools import lru_cache

__all__ = ["client_context"]


def client_context(*, verify: bool = True, trusted_certificate: str | None = None,
                   alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """The context for an outgoing TLS connection (module rules).

    Raises ``OSError`` when ``trusted_certificate`` cannot be read and
    ``ssl.SSLError`` when it holds no usable certificate.
    """
    return _context(verify, trusted_certificate, alpn)


@lru_cache(maxsize=16)
def _context(verify: bool, trusted_certificate: str | None, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if trusted_certificate is not None:
            ctx.load_verify_locations(cafile=trusted_certificate)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
