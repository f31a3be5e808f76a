"""TLS and HTTP/2 in the config: listen flags, ssl_* keys, and the certificate
checks the loader runs (missing, unreadable, not PEM, encrypted key,
mismatched key: errors naming the file and key path; expired: a warning)."""
from __future__ import annotations

import datetime
import logging
import os
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from pyresty.config import Listen, load
from pyresty.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parents[1]))
from certs import Certs  # noqa: E402

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    certs = Certs(tmp_path / "certs")
    assert certs.cert("a.test").startswith(str(tmp_path))
    return tmp_path


def server(extra: str, listen: str = '["127.0.0.1:8443 ssl"]') -> str:
    return f"""
[[server]]
listen = {listen}
{extra}
[[server.location]]
path = "/"
content = "app:x"
"""


A = 'ssl_certificate = "certs/a.test.pem"\nssl_certificate_key = "certs/a.test.key"'
B = 'ssl_certificate = "certs/b.test.pem"\nssl_certificate_key = "certs/b.test.key"'


def problems(folder: Path, text: str) -> list[str]:
    (folder / "pyresty.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load("pyresty.toml")
    return caught.value.problems


def test_listen_flags_and_tls_keys(folder: Path) -> None:
    (folder / "pyresty.toml").write_text(server(
        A + '\nssl_protocols = ["TLSv1.3"]\nssl_ciphers = "ECDHE+AESGCM"\nhttp2 = true',
        '["127.0.0.1:8443 ssl http2", "8080 http2", "[::1]:9443 ssl"]'))
    srv = load("pyresty.toml").servers[0]
    first, second, third = srv.listen
    assert (first.ssl, first.http2, second.ssl, second.http2, third.ssl) == (True, True, False, True, True)
    assert str(first) == "127.0.0.1:8443" and first.flags == " ssl http2"
    assert first == Listen("127.0.0.1", 8443) and hash(first) == hash(Listen("127.0.0.1", 8443))
    assert srv.ssl_certificate == str(folder / "certs" / "a.test.pem")
    assert srv.ssl_protocols == ("TLSv1.3",) and srv.ssl_ciphers == "ECDHE+AESGCM" and srv.http2
    assert srv.ssl


def test_defaults_are_modern(folder: Path) -> None:
    (folder / "pyresty.toml").write_text(server(A))
    srv = load("pyresty.toml").servers[0]
    assert srv.ssl_protocols == ("TLSv1.2", "TLSv1.3") and srv.ssl_ciphers == "HIGH:!aNULL:!MD5"
    assert not srv.http2


BAD = [
    (server("", '["127.0.0.1:8443 tls"]'),
     'server[0].listen: unknown listen flag "tls" (expected ssl or http2)'),
    (server(""), 'server[0].ssl_certificate: required by a "ssl" listen address'),
    (server('ssl_certificate = "certs/a.test.pem"'),
     'server[0].ssl_certificate_key: required by a "ssl" listen address'),
    (server('ssl_certificate = "certs/a.test.pem"', '["127.0.0.1:8080"]'),
     "server[0].ssl_certificate_key: required with ssl_certificate"),
    (server(A + '\nssl_protocols = ["TLSv1.1"]'),
     'server[0].ssl_protocols: invalid value ["TLSv1.1"] (expected an array of "TLSv1.2" and "TLSv1.3")'),
    (server(A + "\nhttp2 = 1"), "server[0].http2: invalid value 1 (expected true or false)"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[line.split(": ")[0] for _, line in BAD])
def test_bad_values(folder: Path, text: str, expected: str) -> None:
    assert problems(folder, text) == [f"pyresty.toml: {expected}"]


def test_missing_and_unreadable_files_name_the_key(folder: Path) -> None:
    found = problems(folder, server('ssl_certificate = "certs/none.pem"\nssl_certificate_key = "certs/a.test.key"'))
    assert found == [f"pyresty.toml: server[0].ssl_certificate: cannot read {folder}/certs/none.pem: "
                     "no such file or directory"]
    if os.geteuid() != 0:   # root reads anything
        os.chmod(folder / "certs" / "a.test.key", 0)
        found = problems(folder, server(A))
        assert found[0].startswith("pyresty.toml: server[0].ssl_certificate_key: cannot read ")


def test_not_a_certificate(folder: Path) -> None:
    (folder / "certs" / "junk.pem").write_text("not a certificate\n")
    found = problems(folder, server('ssl_certificate = "certs/junk.pem"\nssl_certificate_key = "certs/a.test.key"'))
    assert found == [f"pyresty.toml: server[0].ssl_certificate: {folder}/certs/junk.pem: "
                     "no PEM certificate in the file"]


def test_a_key_of_another_certificate(folder: Path) -> None:
    found = problems(folder, server('ssl_certificate = "certs/a.test.pem"\nssl_certificate_key = "certs/b.test.key"'))
    assert found == [f"pyresty.toml: server[0].ssl_certificate_key: {folder}/certs/b.test.key "
                     f"is not the key of {folder}/certs/a.test.pem"]


def test_an_encrypted_key_is_refused(folder: Path) -> None:
    key = serialization.load_pem_private_key((folder / "certs" / "a.test.key").read_bytes(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    (folder / "certs" / "a.test.key").write_bytes(encrypted)
    found = problems(folder, server(A))
    assert found == [f"pyresty.toml: server[0].ssl_certificate_key: {folder}/certs/a.test.key: the key "
                     "is encrypted (workers cannot ask for a passphrase; decrypt it with openssl)"]


def test_an_expired_certificate_is_a_warning(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    old = ca.issue_cert("old.test", not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    old.cert_chain_pems[0].write_to_path(str(folder / "certs" / "old.pem"))
    old.private_key_pem.write_to_path(str(folder / "certs" / "old.key"))
    (folder / "pyresty.toml").write_text(server('ssl_certificate = "certs/old.pem"\nssl_certificate_key = "certs/old.key"'))
    with caplog.at_level(logging.WARNING, logger="pyresty.config"):
        load("pyresty.toml")
    assert [r.getMessage() for r in caplog.records] == [
        f"pyresty.toml: server[0].ssl_certificate: {folder}/certs/old.pem expired on 2020-01-01 00:00:00 UTC"]


def test_servers_must_agree_on_an_address_flags(folder: Path) -> None:
    text = server(A + '\nserver_name = ["a.test"]') + server(B + '\nserver_name = ["b.test"]', '["127.0.0.1:8443"]')
    assert problems(folder, text) == [
        'pyresty.toml: server[1].listen: "127.0.0.1:8443" differs from "127.0.0.1:8443 ssl" in '
        "server[0] (an address has one set of flags)"]


def test_tls_versions_of_a_second_server_on_an_address_are_a_warning(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "pyresty.toml").write_text(
        server(A + '\nserver_name = ["a.test"]') + server(B + '\nserver_name = ["b.test"]\nssl_protocols = ["TLSv1.3"]'))
    with caplog.at_level(logging.WARNING, logger="pyresty.config"):
        load("pyresty.toml")
    assert "ssl_protocols and ssl_ciphers of server[0] apply on 127.0.0.1:8443" in caplog.text


def test_proxy_pass_https_and_its_keys(folder: Path) -> None:
    (folder / "pyresty.toml").write_text('''
[[server]]
listen = "8080"
[[server.location]]
path = "/a/"
proxy_pass = "https://127.0.0.1:8443/"
proxy_ssl_trusted_certificate = "certs/ca.pem"
[[server.location]]
path = "/b/"
proxy_pass = "https://127.0.0.1:8443"
proxy_ssl_verify = false
''')
    a, b = load("pyresty.toml").servers[0].locations
    assert a.proxy_ssl_verify and a.proxy_ssl_trusted_certificate == str(folder / "certs" / "ca.pem")
    assert not b.proxy_ssl_verify and b.proxy_ssl_trusted_certificate is None


def test_proxy_ssl_name_and_proxy_ssl_server_name(folder: Path) -> None:
    (folder / "pyresty.toml").write_text('''
[[server]]
listen = "8080"
[[server.location]]
path = "/a/"
proxy_pass = "https://127.0.0.1:8443/"
proxy_ssl_name = "api.example.com"
proxy_ssl_server_name = false
[[server.location]]
path = "/b/"
proxy_pass = "https://127.0.0.1:8443"
''')
    a, b = load("pyresty.toml").servers[0].locations
    assert (a.proxy_ssl_name, a.proxy_ssl_server_name) == ("api.example.com", False)
    assert (b.proxy_ssl_name, b.proxy_ssl_server_name) == (None, True)   # SNI on by default


@pytest.mark.parametrize("value, shown", [
    ('"api.example.com:443"', '"api.example.com:443"'), ('"a b"', '"a b"'), ('""', '""'),
    ("1", "1"), ('"bad..name"', '"bad..name"')])
def test_proxy_ssl_name_errors_name_the_key(folder: Path, value: str, shown: str) -> None:
    text = f'''
[[server]]
listen = "8080"
[[server.location]]
path = "/"
proxy_pass = "https://127.0.0.1:8443"
proxy_ssl_name = {value}
proxy_ssl_server_name = "yes"
'''
    assert problems(folder, text) == [
        f"pyresty.toml: server[0].location[0].proxy_ssl_name: invalid value {shown} "
        "(expected a host name or IP address, without a port)",
        'pyresty.toml: server[0].location[0].proxy_ssl_server_name: invalid value "yes" '
        "(expected true or false)"]
