"""The sans-IO WebSocket layer (http/websocket.py): handshakes and the Session, as tables."""
from __future__ import annotations

import tracemalloc

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from pyresty.http.websocket import Accept, Closed, Refusal, Session, check_handshake

KEY = (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")
GOOD = [(b"host", b"x"), (b"upgrade", b"WebSocket"), (b"connection", b"keep-alive, Upgrade"),
        KEY, (b"sec-websocket-version", b"13")]


def _without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [f for f in GOOD if f[0] != name]


@pytest.mark.parametrize("method, version, fields, status, reason", [
    ("POST", "1.1", GOOD, 400, "GET request"),
    ("GET", "1.0", GOOD, 400, "HTTP/1.1"),
    ("GET", "1.1", _without(b"upgrade"), 400, "Upgrade: websocket"),
    ("GET", "1.1", _without(b"connection"), 400, "Connection: Upgrade"),
    ("GET", "1.1", _without(b"sec-websocket-key"), 400, "Sec-WebSocket-Key"),
    ("GET", "1.1", [*_without(b"sec-websocket-key"), (b"sec-websocket-key", b"c2hvcnQ=")], 400,
     "16 bytes"),
    ("GET", "1.1", [*_without(b"sec-websocket-key"), (b"sec-websocket-key", b"not base64!!")], 400,
     "16 bytes"),
    ("GET", "1.1", _without(b"sec-websocket-version"), 426, "13"),
    ("GET", "1.1", [*_without(b"sec-websocket-version"), (b"sec-websocket-version", b"8, 13")], 426,
     "13"),
])
def test_refusals(method, version, fields, status, reason):
    result = check_handshake(method, version, fields)
    assert isinstance(result, Refusal) and result.status == status and reason in result.reason
    if status == 426:
        assert ("Sec-WebSocket-Version", "13") in result.fields


def test_accept_token_is_rfc6455s_example():
    result = check_handshake("GET", "1.1", GOOD)
    assert isinstance(result, Accept)
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in result.fields   # §1.3


@pytest.mark.parametrize("offers, ours, chosen", [
    (b"chat, superchat", ("superchat", "chat"), "superchat"),
    (b"chat", ("superchat",), None),
    (b"", ("chat",), None),
])
def test_subprotocol_is_the_servers_preference(offers, ours, chosen):
    result = check_handshake("GET", "1.1", [*GOOD, (b"sec-websocket-protocol", offers)], ours)
    assert isinstance(result, Accept) and result.subprotocol == chosen


@pytest.mark.parametrize("offer, accepted", [
    (b"permessage-deflate", "permessage-deflate"),
    (b"permessage-deflate; client_max_window_bits", "permessage-deflate; client_max_window_bits=15"),
    (b"permessage-deflate; server_max_window_bits=10",
     "permessage-deflate; server_max_window_bits=10"),
    (b"permessage-deflate; server_max_window_bits", None),          # needs a value
    (b"permessage-deflate; foo=1", None),                          # unknown parameter
    (b"permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    (b"permessage-deflate; foo, permessage-deflate", "permessage-deflate"),  # the next offer
    (b"x-webkit-deflate-frame", None),
])
def test_deflate_offers(offer, accepted):
    result = check_handshake("GET", "1.1", [*GOOD, (b"sec-websocket-extensions", offer)],
                             compress=True)
    assert isinstance(result, Accept)
    value = dict(result.fields).get("Sec-WebSocket-Extensions")
    assert value == accepted and (result.deflate is not None) is (accepted is not None)


def test_no_deflate_unless_asked():
    result = check_handshake("GET", "1.1", [*GOOD, (b"sec-websocket-extensions",
                                                     b"permessage-deflate")])
    assert isinstance(result, Accept) and result.deflate is None


def _client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def test_session_reassembles_answers_pings_and_limits_size():
    session, client = Session(max_message_size=10), _client()
    data = (client.send(TextMessage(data="ab", message_finished=False))
            + client.send(Ping(payload=b"p")) + client.send(TextMessage(data="cd")))
    assert session.receive(data) == ["abcd"]
    assert session.outgoing          # the pong
    session.outgoing.clear()
    out = session.receive(client.send(BytesMessage(data=b"x" * 11)))
    assert out == [Closed(1009, "message over 10 bytes", False)]
    assert session.close_code == 1009 and not session.open and session.outgoing
    assert session.receive(client.send(BytesMessage(data=b"late"))) == []   # dropped after a failure


def test_session_closing_handshake_from_the_peer_and_from_us():
    session, client = Session(), _client()
    assert session.receive(client.send(CloseConnection(code=4000, reason="done"))) == \
        [Closed(4000, "done", True)]
    assert session.outgoing and session.finished and session.close_code == 4000
    session, client = Session(), _client()
    frame = session.close(1001, "going away")
    assert frame and not session.open and not session.finished
    client.receive_data(frame)
    answer = next(iter(client.events()))
    assert isinstance(answer, CloseConnection) and answer.code == 1001
    assert session.receive(client.send(answer.response()))[0].code == 1001
    assert session.finished and session.close_code == 1001
    assert session.close() == b""     # one close frame only


def test_eof_without_a_close_frame_is_1006():
    session = Session()
    assert session.receive_eof() == Closed(1006, "", True)
    assert session.receive_eof() is None


def _deflate_pair(max_message_size: int, offer: bytes = b"permessage-deflate"
                  ) -> tuple[Session, Connection]:
    """A session and a client that negotiated permessage-deflate."""
    from wsproto.extensions import PerMessageDeflate
    result = check_handshake("GET", "1.1", [*GOOD, (b"sec-websocket-extensions", offer)],
                             compress=True)
    assert isinstance(result, Accept) and result.deflate is not None
    session = Session(result.deflate, max_message_size=max_message_size)
    ours = PerMessageDeflate()
    answer = dict(result.fields)["Sec-WebSocket-Extensions"]
    ours.finalize(answer)
    return session, Connection(ConnectionType.CLIENT, [ours])


@pytest.mark.parametrize("offer", [b"permessage-deflate",
                                   b"permessage-deflate; client_no_context_takeover"])
def test_compressed_messages_inflate_one_after_another(offer):
    session, client = _deflate_pair(1024, offer)
    messages = ["hello " * 20, "hello " * 20 + "again", "x" * 1024]
    for message in messages:          # the second one reuses the first's window
        data = client.send(TextMessage(data=message))
        assert len(data) < len(message)
        assert session.receive(data) == [message]
    fragmented = (client.send(BytesMessage(data=b"a" * 600, message_finished=False))
                  + client.send(BytesMessage(data=b"b" * 400)))
    assert session.receive(fragmented) == [b"a" * 600 + b"b" * 400]


def test_a_deflate_bomb_closes_with_1009_without_inflating_it():
    """64 MiB of zeros deflate to ~64 KiB: the session stops inflating past the limit."""
    session, client = _deflate_pair(1024 * 1024)
    bomb = client.send(BytesMessage(data=bytes(64 * 1024 * 1024)))
    assert len(bomb) < 128 * 1024
    tracemalloc.start()
    try:
        out = session.receive(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out and isinstance(out[0], Closed) and out[0].code == 1009
    assert peak < 8 * 1024 * 1024, f"inflating took {peak} bytes"   # 64 MiB unbounded
    assert session.close_code == 1009 and not session.open
