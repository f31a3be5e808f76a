"""A proxied response's fields forwarded as their wire lines (http/client.py
``forward_fields``, http/response.py ``WireFields``/``wire_head``,
``Headers.from_wire``): the same head, byte for byte, whether the fields go
out as they came or as the ``Headers`` a header_filter reads (issue 12)."""
from __future__ import annotations

import pytest

from pyresty.http import response
from pyresty.http.client import ResponseParser, forward_fields
from pyresty.http.headers import Headers

pytestmark = pytest.mark.timeout(30)


class Sink:
    def __init__(self) -> None:
        self.status = 0
        self.fields: list[tuple[bytes, bytes]] = []

    def on_interim(self, status, fields):
        pass

    def on_response(self, status, fields, keep_alive):
        self.status, self.fields = status, fields

    def on_body(self, data):
        pass

    def on_end(self):
        pass

    def on_upgrade(self, fields, rest):
        pass


def parsed(head: bytes, method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and fields llhttp gives for an upstream's response head."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect(method)
    parser.feed(head)
    return sink.status, sink.fields


HEADS = {
    "nginx": b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 04:00:00 GMT\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\n",
    "repeated": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-One: 1\r\nset-cookie: b=2\r\n"
                b"Vary: Accept\r\nVARY: Origin\r\nContent-Length: 0\r\n\r\n",
    "listed": b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Foo\r\nX-Foo: secret\r\n"
              b"X-Bar: kept\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n"
               b"Trailer: X-T\r\n\r\n",
    "no type": b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
    "204": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 9\r\n\r\n",
    "no fields": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "empty value": b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaced:   v  \r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("drop_length", [False, True])
@pytest.mark.parametrize("length, http11, keep_alive",
                         [(6, True, True), (None, True, True), (None, False, True), (0, True, False)])
def test_the_wire_lines_make_the_head_the_headers_make(name, drop_length, length, http11,
                                                       keep_alive) -> None:
    status, fields = parsed(HEADS[name], "HEAD" if name == "304" else "GET")
    wire = forward_fields(fields, drop_length)
    fast = response.wire_head(status, wire, length, http11, keep_alive)
    assert fast == response.response_head(status, wire.headers(), length, http11, keep_alive)


def test_what_is_dropped_and_what_is_kept() -> None:
    _, fields = parsed(HEADS["listed"])
    wire = forward_fields(fields, False)
    assert wire.lines == b"X-Bar: kept\r\nContent-Length: 2\r\n"
    assert wire.has_length and not wire.has_type
    _, fields = parsed(HEADS["nginx"])
    wire = forward_fields(fields, True)        # a body filter frames the body itself
    assert wire.lines == b"Content-Type: text/plain\r\n"
    assert wire.has_type and not wire.has_length
    _, fields = parsed(HEADS["chunked"])
    assert forward_fields(fields, False).lines == b"Content-Type: text/html\r\n"


def test_repeated_fields_keep_their_order_and_spelling() -> None:
    _, fields = parsed(HEADS["repeated"])
    wire = forward_fields(fields, False)
    assert wire.lines == (b"Set-Cookie: a=1\r\nX-One: 1\r\nset-cookie: b=2\r\n"
                          b"Vary: Accept\r\nVARY: Origin\r\nContent-Length: 0\r\n")
    headers = wire.headers()
    assert headers.get_all("set-cookie") == ["a=1", "b=2"]
    assert headers["Vary"] == "Accept" and len(headers) == 4
    head = response.wire_head(200, wire, 0, True, True)[0]
    assert head.index(b"Set-Cookie: a=1") < head.index(b"X-One") < head.index(b"set-cookie: b=2")


def test_the_head_is_chunked_for_a_streamed_body_and_bodiless_for_204() -> None:
    status, fields = parsed(HEADS["chunked"])
    head, chunked, keep = response.wire_head(status, forward_fields(fields, False), None, True,
                                             True)
    assert chunked and keep and head.endswith(
        b"Content-Type: text/html\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
    status, fields = parsed(HEADS["204"])
    head, chunked, _ = response.wire_head(status, forward_fields(fields, False), 0, True, True)
    assert not chunked and b"Content-Length" not in head and b"Content-Type" not in head
    # HTTP/1.0 client, unknown length: the close ends the body
    status, fields = parsed(HEADS["chunked"])
    _, chunked, keep = response.wire_head(status, forward_fields(fields, False), None, False, True)
    assert not chunked and not keep


def test_headers_from_the_wire_send_their_lines_until_one_changes() -> None:
    _, fields = parsed(HEADS["repeated"])
    wire = forward_fields(fields, False)
    headers = wire.headers()
    assert headers.encode() == wire.lines
    assert headers.encoded_alone() is None     # they frame the body themselves
    headers["X-New"] = "n"                     # another field: the lines, then it
    assert headers.encode() == wire.lines + b"X-New: n\r\n"
    headers["X-One"] = "changed"               # one of theirs: encoded as usual
    encoded = headers.encode()
    assert b"X-One: changed\r\n" in encoded and b"X-One: 1" not in encoded
    assert encoded.count(b"Set-Cookie") + encoded.count(b"set-cookie") == 2
    again = wire.headers()
    del again["set-cookie"]
    assert b"ookie" not in again.encode()
    assert Headers.from_wire([], b"").encode() == b""


def test_set_encoded_after_from_wire_encodes_the_wire_fields_as_usual() -> None:
    _, fields = parsed(HEADS["nginx"])
    headers = forward_fields(fields, False).headers()
    headers.set_encoded(("x-rl",), ("X-RL",), ("1",), b"X-RL: 1\r\n")
    assert headers.encode() == b"X-RL: 1\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
    assert headers.encoded_alone() is None


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n  folded\r\nContent-Length: 0\r\n\r\n",    # obs-fold
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
])
def test_no_cr_lf_or_fold_reaches_the_wire_lines(head: bytes) -> None:
    """RFC 9112 §5.2: a proxy rejects obs-fold (or replaces it); llhttp refuses
    it, so a wire line can never carry a CR or LF into the client's head."""
    from pyresty.http.client import UpstreamError
    with pytest.raises(UpstreamError):
        parsed(head)
