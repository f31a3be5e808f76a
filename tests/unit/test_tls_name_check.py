"""The name check of outgoing TLS without SNI (runtime/client_tls.py rule 2),
and the pool tag that keeps connections for different names apart."""
from __future__ import annotations

import ssl

import pytest

from pyresty.runtime.client_tls import check_name, client_tls

pytestmark = pytest.mark.timeout(30)

CERT = {"subjectAltName": (("DNS", "api.example.com"), ("DNS", "*.apps.example.com"),
                           ("IP Address", "10.0.0.1"), ("IP Address", "2001:DB8:0:0:0:0:0:1"))}


@pytest.mark.parametrize("name", ["api.example.com", "API.Example.com", "api.example.com.",
                                  "x.apps.example.com", "10.0.0.1", "2001:db8::1"])
def test_names_the_certificate_holds(name: str) -> None:
    check_name(CERT, name)


@pytest.mark.parametrize("name", ["example.com", "www.api.example.com", "apps.example.com",
                                  "a.b.apps.example.com", "10.0.0.2", "2001:db8::2", "10.0.0.1.",
                                  "api.example.co"])
def test_names_it_does_not(name: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        check_name(CERT, name)


@pytest.mark.parametrize("pattern", ["*", "*.com", "a*.example.com", "*a.example.com"])
def test_wildcards_too_wide_or_partial_match_nothing(pattern: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        check_name({"subjectAltName": (("DNS", pattern),)}, "ab.example.com")


def test_the_common_name_is_not_a_fallback() -> None:
    cert = {"subject": ((("commonName", "api.example.com"),),)}
    with pytest.raises(ssl.SSLCertVerificationError):
        check_name(cert, "api.example.com")


def test_pool_tags_differ_by_name_sni_and_verification() -> None:
    tags = {client_tls("a.test").pool_tag, client_tls("b.test").pool_tag,
            client_tls("a.test", sni=False).pool_tag, client_tls("a.test", verify=False).pool_tag}
    assert len(tags) == 4
    assert client_tls("a.test").server_hostname == "a.test"
    assert client_tls("a.test", sni=False).server_hostname == ""
    # without SNI OpenSSL cannot check the name: the context leaves it to check()
    assert not client_tls("a.test", sni=False).context.check_hostname
    assert client_tls("a.test").context.check_hostname
