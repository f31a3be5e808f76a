"""TLS for the connections pyresty opens: upstreams (``proxy_pass https://``) and
cosockets (``connect(..., ssl=True)``).

``client_tls`` describes such a connection once (per location, per cosocket
call): the ``SSLContext`` it is wrapped with, the server name it is checked
against and whether that name goes out as SNI. ``upstream/pool.py`` opens
the connection with it.

Rules
-----
1. Verification is on by default (nginx's ``proxy_ssl_verify`` is off by
   default, which has let many gateways talk to anyone; here turning it off
   is a decision written in the config): the system CA store, or
   ``trusted_certificate`` (a PEM bundle, nginx's
   ``proxy_ssl_trusted_certificate``) instead of it, and the server name.
2. The server name (nginx's ``proxy_ssl_name``) is sent as SNI unless
   ``sni`` is false (``proxy_ssl_server_name = false``). With SNI, OpenSSL
   checks the name during the handshake; without it, Python cannot check a
   name it does not send, so ``check`` does it after the handshake on the
   verified certificate (RFC 6125: subjectAltName only, a wildcard only as
   the whole leftmost label; IP addresses against IP entries). An IP
   address is never sent as SNI (RFC 6066 §3), but is checked.
3. TLS 1.2 at least, as on the listeners.
4. Contexts are cached by their settings: one per (verify, trusted file,
   name check, ALPN) in a process, so pooled connections share the session
   cache. A keepalive pool keys TLS connections by server name as well
   (``ClientTls.pool_tag``): a connection made for one name is never reused
   for another.
"""
from __future__ import annotations

import ipaddress
import ssl
from functools import lru_cache
from typing import Any

__all__ = ["ClientTls", "check_name", "client_tls"]


class ClientTls:
    """How one kind of outgoing connection speaks TLS (module rules)."""

    __slots__ = ("context", "name", "sni", "verify", "pool_tag")

    def __init__(self, context: ssl.SSLContext, name: str, sni: bool, verify: bool,
                 trusted_certificate: str | None) -> None:
        self.context = context
        self.name = name
        self.sni = sni
        self.verify = verify
        # rule 4: part of the pool key, so verification and name are never mixed up
        self.pool_tag = (f"tls name={name} sni={'on' if sni else 'off'} "
                         f"verify={'on' if verify else 'off'} ca={trusted_certificate or 'system'}")

    @property
    def server_hostname(self) -> str:
        """What ``create_connection`` gets: the name, or "" for no SNI (rule 2)."""
        return self.name if self.sni else ""

    def check(self, transport: Any) -> None:
        """After the handshake: the name check OpenSSL could not do (rule 2).
        Raises ``ssl.SSLCertVerificationError``."""
        if self.verify and not self.sni:
            check_name(transport.get_extra_info("peercert") or {}, self.name)


def client_tls(name: str, *, sni: bool = True, verify: bool = True,
               trusted_certificate: str | None = None,
               alpn: tuple[str, ...] = ("http/1.1",)) -> ClientTls:
    """The TLS of connections to the server called ``name`` (module rules).

    Raises ``OSError`` when ``trusted_certificate`` cannot be read and
    ``ssl.SSLError`` when it holds no usable certificate.
    """
    context = _context(verify, trusted_certificate, verify and sni, alpn)
    return ClientTls(context, name, sni, verify, trusted_certificate)


@lru_cache(maxsize=16)
def _context(verify: bool, trusted_certificate: str | None, check_hostname: bool,
             alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
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


def check_name(cert: dict[str, Any], name: str) -> None:
    """Whether the verified certificate ``cert`` (``getpeercert()``) names ``name``
    (rule 2). Raises ``ssl.SSLCertVerificationError`` when it does not."""
    entries = cert.get("subjectAltName", ())
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        wanted = name.rstrip(".").lower()
        if any(kind == "DNS" and _dns_matches(value.lower(), wanted) for kind, value in entries):
            return
    else:
        if any(kind == "IP Address" and _ip_equals(value, address) for kind, value in entries):
            return
    raise ssl.SSLCertVerificationError(
        1, f"certificate verify failed: Hostname mismatch, certificate is not valid for {name!r}")


def _dns_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    first, dot, rest = pattern.partition(".")
    if first != "*" or not dot or "." not in rest:
        return False                 # "*" alone, or "*.com": too wide (RFC 6125 §6.4.3)
    head, dot, tail = name.partition(".")
    return bool(head) and dot == "." and tail == rest


def _ip_equals(value: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(value.strip()) == address
    except ValueError:
        return False
