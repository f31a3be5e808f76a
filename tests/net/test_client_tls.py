"""The client-side TLS context (runtime/client_tls.py) against a real TLS
listener on 127.0.0.1: verification on by default, a trusted certificate
file, SNI and the host-name check, and ``verify=False`` as a decision."""
from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import pytest

from pyresty.runtime.client_tls import client_context

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


async def _fetch(port: int, ctx: ssl.SSLContext, name: str) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name), 10)
    data = await reader.read()
    writer.close()
    return data


def test_client_context(tmp_path: Path) -> None:
    certs = Certs(tmp_path)

    async def main() -> None:
        server, port, names = await _serve(certs)
        async with server:
            trusted = client_context(trusted_certificate=str(certs.ca_file))
            assert await _fetch(port, trusted, "a.test") == b"hello"
            assert names[-1] == "a.test"                       # SNI sent
            with pytest.raises(ssl.SSLCertVerificationError):  # the name is checked
                await _fetch(port, trusted, "b.test")
            with pytest.raises(ssl.SSLCertVerificationError):  # the system store does not know the CA
                await _fetch(port, client_context(), "a.test")
            assert await _fetch(port, client_context(verify=False), "a.test") == b"hello"

    asyncio.run(main())
    assert client_context() is client_context()    # cached per settings
    assert client_context().verify_mode == ssl.CERT_REQUIRED and client_context().check_hostname
    with pytest.raises(OSError):
        client_context(trusted_certificate=str(tmp_path / "missing.pem"))
