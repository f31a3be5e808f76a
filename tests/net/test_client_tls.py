"""The client-side TLS context (runtime/client_tls.py) against a real TLS
listener on 127.0.0.1: verification on by default, a trusted certificate
file, SNI and the host-name check, no SNI with the name checked after the
handshake, and ``verify=False`` as a decision."""
from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import pytest

from pyresty.runtime.client_tls import ClientTls, client_tls

sys.path.insert(0, str(Path(__file__).parents[1]))
from certs import Certs  # noqa: E402

pytestmark = pytest.mark.timeout(30)


async def _serve(certs: Certs) -> tuple[asyncio.AbstractServer, int, list[str | None]]:
    names: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert("a.test"), certs.key("a.test"))
    ctx.sni_callback = lambda sock, name, c: names.append(name)  # type: ignore[assignment,misc,func-returns-value]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], names


async def _fetch(port: int, tls: ClientTls) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.context, server_hostname=tls.server_hostname), 10)
    try:
        tls.check(writer.transport)
        return await reader.read()
    finally:
        writer.close()


def test_client_tls(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    ca = str(certs.ca_file)

    async def main() -> None:
        server, port, names = await _serve(certs)
        async with server:
            assert await _fetch(port, client_tls("a.test", trusted_certificate=ca)) == b"hello"
            assert names[-1] == "a.test"                       # SNI sent
            with pytest.raises(ssl.SSLCertVerificationError):  # the name is checked
                await _fetch(port, client_tls("b.test", trusted_certificate=ca))
            with pytest.raises(ssl.SSLCertVerificationError):  # the system store does not know the CA
                await _fetch(port, client_tls("a.test"))
            assert await _fetch(port, client_tls("a.test", verify=False)) == b"hello"
            # without SNI: nothing sent, the name still checked after the handshake
            assert await _fetch(port, client_tls("a.test", sni=False, trusted_certificate=ca)) \
                == b"hello"
            assert names[-1] is None
            with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
                await _fetch(port, client_tls("b.test", sni=False, trusted_certificate=ca))
            # an IP address is never sent as SNI (RFC 6066), but it is checked
            assert await _fetch(port, client_tls("127.0.0.1", trusted_certificate=ca)) == b"hello"
            assert names[-1] is None

    asyncio.run(main())
    assert client_tls("a.test").context is client_tls("b.test").context    # cached per settings
    assert client_tls("a.test").context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(OSError):
        client_tls("a.test", trusted_certificate=str(tmp_path / "missing.pem"))
