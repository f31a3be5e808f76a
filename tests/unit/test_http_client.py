"""HTTP/1.1 client role (pyresty/http/client.py): request heads, response parsing rules."""
from __future__ import annotations

import pytest

from pyresty.http.client import BodyWriter, ForwardHead, ResponseParser, UpstreamError, request_head
from pyresty.http.headers import Headers

pytestmark = pytest.mark.timeout(30)


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_interim(self, status, fields):
        self.events.append(("interim", status))

    parser: ResponseParser | None = None     # the parser feeding it, for the version

    def on_response(self, status, fields, keep_alive):
        version = self.parser.http_version() if self.parser is not None else None
        self.events.append(("response", status, version, dict(fields), keep_alive))

    def on_body(self, data):
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def on_end(self):
        self.events.append(("end",))

    def on_upgrade(self, fields, rest):
        self.events.append(("upgrade", dict(fields), rest))


def run(method: str, wire: bytes, step: int = 0, eof: bool = False) -> tuple[Sink, ResponseParser]:
    sink = Sink()
    parser = sink.parser = ResponseParser(sink)
    parser.expect(method)
    step = step or len(wire)
    for i in range(0, len(wire), step):
        parser.feed(wire[i:i + step])
    if eof:
        parser.eof()
    return sink, parser


STEPS = pytest.mark.parametrize("step", [0, 1, 10])


@STEPS
def test_a_length_framed_response(step: int) -> None:
    sink, parser = run("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello", step)
    assert sink.events == [("response", 200, "1.1", {b"Content-Length": b"5", b"X": b"y"}, True),
                           ("body", b"hello"), ("end",)]
    assert parser.idle and parser.reusable


@STEPS
def test_a_chunked_response(step: int) -> None:
    sink, parser = run("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", step)
    assert [e[0] for e in sink.events] == ["response", "body", "end"]
    assert sink.events[1] == ("body", b"abcde") and parser.idle


@STEPS
@pytest.mark.parametrize("method, head", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 100\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
])
def test_bodiless_responses_end_at_their_head(step: int, method: str, head: bytes) -> None:
    sink, parser = run(method, head, step)
    assert [e[0] for e in sink.events] == ["response", "end"]
    assert sink.events[0][4] is True and parser.idle and parser.reusable
    parser.expect("GET")                            # the connection can carry the next one
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.events[-2:] == [("body", b"ok"), ("end",)]


def test_interim_responses_come_before_the_final_one() -> None:
    sink, _ = run("POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                          b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 7)
    assert [e[:2] for e in sink.events] == [("interim", 100), ("interim", 103),
                                            ("response", 201), ("body", b"ok"), ("end",)]


SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


@STEPS
@pytest.mark.parametrize("rest", [b"", b"\x81\x02hi", b"\x81\x02hi\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"])
def test_101_hands_its_fields_and_the_rest_to_the_tunnel(step: int, rest: bytes) -> None:
    """The bytes after the 101's head are the tunnel's, never parsed as HTTP even
    when they look like it: those that came in the head's read go to
    ``on_upgrade``, the owner takes later ones from the socket (tunnel.py)."""
    sink = Sink()
    parser = sink.parser = ResponseParser(sink)
    parser.expect("GET")
    wire = SWITCH + rest
    step = step or len(wire)
    later = b""
    for i in range(0, len(wire), step):
        if parser.done:
            later += wire[i:i + step]
        else:
            parser.feed(wire[i:i + step])
    assert parser.done and len(sink.events) == 1
    kind, fields, first = sink.events[0]
    assert kind == "upgrade" and fields == {
        b"Upgrade": b"websocket", b"Connection": b"Upgrade",
        b"Sec-WebSocket-Accept": b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}
    assert first + later == rest
    with pytest.raises(UpstreamError):
        parser.feed(b"more")


def test_interim_responses_before_a_101_are_not_the_switch() -> None:
    sink, parser = run("GET", b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCH + b"\x88\x00")
    assert [e[0] for e in sink.events] == ["interim", "upgrade"] and parser.done
    assert sink.events[-1][2] == b"\x88\x00"


def test_a_close_delimited_body_ends_at_eof_and_is_not_reusable() -> None:
    sink, _ = run("GET", b"HTTP/1.1 200 OK\r\n\r\nall of it", eof=True)
    assert sink.events[0][4] is False
    assert sink.events[1:] == [("body", b"all of it"), ("end",)]


@pytest.mark.parametrize("wire, keep", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
])
def test_keep_alive_follows_version_and_connection(wire: bytes, keep: bool) -> None:
    assert run("GET", wire)[0].events[0][4] is keep


def test_a_truncated_body_is_an_error_at_eof() -> None:
    with pytest.raises(UpstreamError, match="mid-body"):
        run("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", eof=True)


def test_bytes_past_the_response_make_the_connection_not_reusable() -> None:
    sink, parser = run("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert sink.events[-2:] == [("body", b"ok"), ("end",)]
    assert not parser.reusable
    sink, parser = run("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert not parser.reusable


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"NOT HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"v" * 9000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: " + b"v" * 50000,
])
def test_malformed_responses_are_refused(wire: bytes) -> None:
    with pytest.raises(UpstreamError):
        run("GET", wire, eof=True)


def test_request_heads() -> None:
    fields = Headers([("X-Forwarded-For", "1.2.3.4"), ("Connection", "close"),
                      ("Transfer-Encoding", "gzip")])
    head, chunked = request_head("POST", "/api?x=1", "backend:9001", fields, None)
    assert head == (b"POST /api?x=1 HTTP/1.1\r\nHost: backend:9001\r\n"
                    b"X-Forwarded-For: 1.2.3.4\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: keep-alive\r\n\r\n") and chunked
    head, chunked = request_head("GET", "/", "h", Headers([("Host", "api.internal")]), 0)
    assert head == b"GET / HTTP/1.1\r\nHost: api.internal\r\nConnection: keep-alive\r\n\r\n"
    assert request_head("PUT", "/x", "h", None, 3)[0].count(b"Content-Length: 3") == 1
    for target in ("/a b", "/a\r\nX: y", ""):
        with pytest.raises(ValueError):
            request_head("GET", target, "h", None, None)
    with pytest.raises(ValueError):
        request_head("GET", "/", "h", Headers([("X", "a\r\nY: b")]), None)


@pytest.mark.parametrize("pieces", [[b"abc"], [b"a", b"", b"bc"], [b"x" * 70000, b"y"]])
def test_a_body_of_unknown_length_goes_in_chunks(pieces: list[bytes]) -> None:
    writer = BodyWriter(None)
    wire = b"".join(writer.frame(p) for p in pieces) + writer.end()
    assert writer.frame(b"") == b""        # an empty piece is no chunk (it would end the body)
    # what goes out parses as the chunked body it announces
    sink, _ = run("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire, 7)
    assert sink.events[1:] == [("body", b"".join(pieces)), ("end",)]
    assert wire.endswith(b"0\r\n\r\n") and wire.count(b"0\r\n\r\n") == 1


def test_a_body_of_known_length_goes_as_it_is() -> None:
    writer = BodyWriter(5)
    assert writer.frame(b"ab") + writer.frame(b"") + writer.frame(b"cde") == b"abcde"
    assert writer.end() == b""
    assert BodyWriter(0).end() == b""


def test_a_body_that_breaks_its_length_is_refused() -> None:
    """More or fewer bytes than Content-Length would desynchronise the upstream
    (the excess read as another request): an error, never sent."""
    writer = BodyWriter(3)
    with pytest.raises(ValueError, match="Content-Length"):
        writer.frame(b"abcd")
    writer.frame(b"ab")
    with pytest.raises(ValueError, match="short"):
        writer.end()


def test_forward_heads_frame_as_the_body_writer_does() -> None:
    forward = ForwardHead(b"backend", [], True)
    fields = [(b"Host", b"client.example"), (b"Transfer-Encoding", b"chunked"),
              (b"Content-Length", b"9")]
    chunked = forward.build("POST", "/up", fields, "10.0.0.1", "http", None)
    assert b"Transfer-Encoding: chunked\r\n" in chunked and b"Content-Length" not in chunked
    assert BodyWriter(None).chunked
    sized = forward.build("POST", "/up", fields, "10.0.0.1", "http", 9)
    assert b"Content-Length: 9\r\n" in sized and b"Transfer-Encoding" not in sized
    assert not BodyWriter(9).chunked


def test_an_upgrade_request_head() -> None:
    forward = ForwardHead(b"backend:9001", [(b"X-Set", b"1")], True)
    fields = [(b"Host", b"client.example"), (b"Upgrade", b"websocket"),
              (b"Connection", b"keep-alive, Upgrade"), (b"Sec-WebSocket-Key", b"k"),
              (b"Sec-WebSocket-Version", b"13")]
    head = forward.build("GET", "/chat?room=1", fields, "10.0.0.1", "https", 0, b"websocket")
    assert head == (b"GET /chat?room=1 HTTP/1.1\r\nHost: backend:9001\r\nX-Set: 1\r\n"
                    b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n"
                    b"X-Real-IP: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.1\r\n"
                    b"X-Forwarded-Proto: https\r\n"
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    # without an upgrade, the same request asks for keep-alive framing only
    plain = forward.build("GET", "/chat?room=1", fields, "10.0.0.1", "https", 0)
    assert plain.endswith(b"X-Forwarded-Proto: https\r\n\r\n") and b"Upgrade" not in plain


@pytest.mark.parametrize("wire, version, keep", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "1.1", True),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "1.0", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", "1.0", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "1.1", False),
    (b"HTTP/1.1 200 OK\r\n\r\n", "1.1", False),                 # close-delimited
    (b"HTTP/1.1 204 No Content\r\n\r\n", "1.1", False),          # as before: no length
])
def test_the_version_comes_with_the_keep_alive_verdict(wire: bytes, version: str, keep: bool) -> None:
    event = run("GET", wire)[0].events[0]
    assert event[2] == version and event[4] is keep


@pytest.mark.parametrize("step", [0, 1, 7])
def test_one_parser_serves_a_connections_responses_in_turn(step: int) -> None:
    """The parser stays with its connection: length, chunked, HEAD (cut at its
    head), interim and bodiless responses one after the other, each asked for."""
    sink = Sink()
    parser = sink.parser = ResponseParser(sink)
    exchanges = [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", [("body", b"abc")]),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", []),
        ("POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", [("body", b"ok")]),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", []),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", [("body", b"hi")]),
    ]
    for method, wire, body in exchanges:
        sink.events.clear()
        parser.expect(method)
        each = step or len(wire)
        for i in range(0, len(wire), each):
            parser.feed(wire[i:i + each])
        finals = [e for e in sink.events if e[0] == "response"]
        assert len(finals) == 1 and finals[0][4] is True, (method, sink.events)
        assert [e for e in sink.events if e[0] == "body"] == body
        assert sink.events[-1] == ("end",) and parser.idle and parser.reusable


@pytest.mark.parametrize("spell", [bytes.lower, bytes.upper, bytes.title])
def test_forwarded_heads_drop_and_merge_fields_whatever_their_case(spell) -> None:
    """ForwardHead finds the fields it drops or merges by comparing spellings
    (no lower() per field): the head is the same in any case of the names."""
    forward = ForwardHead(b"backend", [(b"X-Set", b"1"), (b"Accept", b"")], True)
    fields = [(spell(b"Host"), b"client"), (spell(b"X-Forwarded-For"), b"10.0.0.9"),
              (spell(b"Connection"), b"keep-alive, X-Hop"), (spell(b"X-Hop"), b"h"),
              (spell(b"TE"), b"trailers"), (spell(b"Accept"), b"*/*"), (spell(b"X-Set"), b"2"),
              (spell(b"X-Real-IP"), b"1.2.3.4"), (spell(b"User-Agent"), b"ua"),
              (spell(b"Expect"), b"100-continue"), (spell(b"Content-Length"), b"3")]
    head = forward.build("POST", "/p", fields, "10.0.0.1", "https", 3)
    assert head == (b"POST /p HTTP/1.1\r\nHost: backend\r\nX-Set: 1\r\n"
                    + spell(b"User-Agent") + b": ua\r\n"
                    b"X-Real-IP: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.9, 10.0.0.1\r\n"
                    b"X-Forwarded-Proto: https\r\nContent-Length: 3\r\n\r\n")
