"""Checks of a server's certificate and key, run wherever the config is loaded.

The master loads the config at start, at ``-t`` and at every reload, so a
certificate that cannot serve is refused before any worker tries it, and a
renewed one is read again by the reload that follows the renewal (nginx reads
them in the master at each reload too).

``check(certificate, key)`` returns ``(errors, warnings)``: reasons only, the
loader adds the file and key path. An error is a file that is missing or
unreadable, that holds no PEM certificate, a key that is encrypted (a worker
cannot ask for a passphrase), or a key that does not belong to the
certificate. An expired (or not yet valid) certificate is a warning: a server
whose renewal came late should still start and say why clients complain.
"""
from __future__ import annotations

import datetime
import ssl

from cryptography import x509

__all__ = ["check"]

_ENCRYPTED = "{}: the key is encrypted (workers cannot ask for a passphrase; decrypt it with openssl)"


class _Encrypted(Exception):
    """OpenSSL asked for a passphrase: the key is encrypted."""


def _refuse_passphrase() -> bytes:
    raise _Encrypted


def check(certificate: str, key: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Errors and warnings about ``certificate`` and ``key`` as ``(which, reason)``,
    ``which`` being ``"ssl_certificate"`` or ``"ssl_certificate_key"``."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    pem = _read(certificate, "ssl_certificate", errors)
    key_pem = _read(key, "ssl_certificate_key", errors)
    if pem is None or key_pem is None:
        return errors, warnings
    try:
        leaf = x509.load_pem_x509_certificate(pem)
    except ValueError:
        errors.append(("ssl_certificate", f"{certificate}: no PEM certificate in the file"))
        return errors, warnings
    if b"ENCRYPTED" in key_pem.split(b"-----END", 1)[0]:
        errors.append(("ssl_certificate_key", _ENCRYPTED.format(key)))
        return errors, warnings
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key,
                                                                password=_refuse_passphrase)
    except _Encrypted:
        errors.append(("ssl_certificate_key", _ENCRYPTED.format(key)))
    except ssl.SSLError as exc:
        errors.append(("ssl_certificate_key", _ssl_reason(certificate, key, exc)))
    _check_validity(leaf, certificate, warnings)
    return errors, warnings


def _read(path: str, which: str, errors: list[tuple[str, str]]) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        errors.append((which, f"cannot read {path}: {(exc.strerror or str(exc)).lower()}"))
        return None


def _ssl_reason(certificate: str, key: str, exc: ssl.SSLError) -> str:
    reason = exc.reason or str(exc)
    if reason == "KEY_VALUES_MISMATCH":
        return f"{key} is not the key of {certificate}"
    return f"{key}: cannot use the key with {certificate} ({reason})"


def _check_validity(leaf: x509.Certificate, certificate: str,
                    warnings: list[tuple[str, str]]) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc < now:
        when = leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        warnings.append(("ssl_certificate", f"{certificate} expired on {when}"))
    elif leaf.not_valid_before_utc > now:
        when = leaf.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        warnings.append(("ssl_certificate", f"{certificate} is not valid before {when}"))
