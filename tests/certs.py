"""Certificates for the TLS tests, made by ``trustme`` in the test's own prefix:
one CA, and a certificate with its key per name (``a.test``, ``b.test``, ...).
"""
from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class Certs:
    """A CA and the certificates it issued, as PEM files under ``folder``."""

    def __init__(self, folder: Path, names: tuple[str, ...] = ("a.test", "b.test")) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.files: dict[str, tuple[Path, Path]] = {}
        for name in names:
            issued = self.ca.issue_cert(name, "127.0.0.1")
            cert, key = folder / f"{name}.pem", folder / f"{name}.key"
            cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
            issued.private_key_pem.write_to_path(str(key))
            self.files[name] = (cert, key)

    def cert(self, name: str) -> str:
        return str(self.files[name][0])

    def key(self, name: str) -> str:
        return str(self.files[name][1])

    def client_context(self, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.set_alpn_protocols(list(alpn))
        return ctx
