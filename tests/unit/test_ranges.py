"""Range requests (RFC 9110 §14): Range, If-Range, 206, 416, multipart/byteranges.

The tables give nginx 1.22's answer for the same request on a 10-byte file
(``root`` location, defaults) next to ours; they differ only where the RFC
says otherwise, and the comment says which rule.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresty.http.ranges import (
    FULL, MAX_RANGES, UNSATISFIABLE, ByteRange, RangeDecision, evaluate_range, if_range_holds,
    multipart_byteranges, parse_range, resolve_ranges, unsatisfied_range,
)

pytestmark = pytest.mark.timeout(60)

MTIME = 784111777                       # Sun, 06 Nov 1994 08:49:37 GMT
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
NOW = MTIME + 3600
ETAG = '"2ebc3ea1-a"'


def decide(value: str, size: int = 10) -> RangeDecision:
    return evaluate_range("GET", value, None, size=size, etag=ETAG, last_modified=MTIME, now=NOW)


def partial(*spans: tuple[int, int]) -> RangeDecision:
    return RangeDecision(206, tuple(ByteRange(first, last) for first, last in spans))


@pytest.mark.parametrize("value, expected", [                    # nginx 1.22:
    ("bytes=0-4", partial((0, 4))),                               # 206 0-4
    ("bytes=2-2", partial((2, 2))),
    ("bytes=5-", partial((5, 9))),                                # open-ended
    ("bytes=0-", partial((0, 9))),
    ("bytes=-3", partial((7, 9))),                                # suffix
    ("bytes=-10", partial((0, 9))),
    ("bytes=-100", partial((0, 9))),                              # suffix past the start: all
    ("bytes=5-100", partial((5, 9))),                             # last past the end: clamped
    ("bytes=9-9", partial((9, 9))),
    ("bytes=01-02", partial((1, 2))),                             # 206 1-2
    ("BYTES=1-2", partial((1, 2))),                               # 206: unit is case-insensitive
    ("bytes= 1-2 ", partial((1, 2))),                             # 206: OWS around elements
    ("bytes=\t1-2", partial((1, 2))),                             # 416 (nginx skips only SP)
    ("bytes=1-2,", partial((1, 2))),                              # 416: #list allows empty
    ("bytes=,1-2", partial((1, 2))),                              # 416:   elements (§5.6.1.2)
    ("bytes=0-99999999999999999999999", partial((0, 9))),         # 416 (overflow); §14.1.2 clamps
    ("bytes=-" + "9" * 5000, partial((0, 9))),                    # no int() on 5000 digits
    # unsatisfiable: 416 with Content-Range: bytes */10
    ("bytes=10-", UNSATISFIABLE),                                 # 416: first at the end
    ("bytes=10-20", UNSATISFIABLE),                               # 416
    ("bytes=99999999999999999999-", UNSATISFIABLE),               # 416
    ("bytes=" + "9" * 5000 + "-", UNSATISFIABLE),
    ("bytes=-0", UNSATISFIABLE),                                  # 416
    ("bytes=20-30,40-50", UNSATISFIABLE),                         # 416: none satisfiable
    ("bytes=20-30,-0", UNSATISFIABLE),                            # 416
    # several: multipart/byteranges in the client's order
    ("bytes=0-1,3-4", partial((0, 1), (3, 4))),                   # 206 multipart
    ("bytes=0-1, 3-4", partial((0, 1), (3, 4))),                  # 206 multipart
    ("bytes=-5,0-1", partial((5, 9), (0, 1))),                    # 206 multipart, same order
    ("bytes=9-,0-0", partial((9, 9), (0, 0))),                    # 206 multipart
    ("bytes=0-1,0-1", partial((0, 1), (0, 1))),                   # 206 multipart, twice
    ("bytes=0-1,20-30", partial((0, 1))),                         # 206 0-1: the rest dropped
    ("bytes=0-1,-0", partial((0, 1))),                            # 206 0-1
    ("bytes=0-5,3-8", FULL),                                      # 200: overlap adds up past 10
    ("bytes=0-9,0-9", FULL),                                      # 200
    # ignored: the whole file with 200
    ("bytes=5-2", FULL),                                          # 416: §14.1.1 MUST ignore
    ("bytes=5-2,0-1", FULL),                                      # 206 0-1: §14.1.1 MUST ignore
    ("bytes=a-b", FULL),                                          # 416: §14.1.1 MUST ignore
    ("bytes=0-1,a", FULL),                                        # 416: §14.1.1
    ("bytes=+1-2", FULL),                                         # 416: §14.1.1
    ("bytes=1 - 2", FULL),                                        # 206: no OWS inside a spec
    ("bytes=-", FULL),                                            # 416: §14.1.1
    ("bytes=1-2-3", FULL),
    ("bytes=\u0661-2", FULL),                                     # a non-ASCII digit
    ("bytes=", FULL),                                             # 200
    ("bytes=,", FULL),                                            # 416: no range-spec at all
    ("bytes 0-1", FULL),
    ("bytes =0-1", FULL),                                         # 200
    ("items=0-1", FULL),                                          # 200: unknown unit
    ("", FULL),
])
def test_ranges_of_ten_bytes(value: str, expected: RangeDecision) -> None:
    assert decide(value) == expected


@pytest.mark.parametrize("value, expected", [
    # nginx answers these with the whole (empty) file and 200 (a spec that starts at 0
    # "declines" in ngx_http_range_parse); no byte of an empty file can be given, so the
    # set is unsatisfiable and §14.2 says 416
    ("bytes=0-", UNSATISFIABLE),
    ("bytes=-5", UNSATISFIABLE),
    ("bytes=0-0", UNSATISFIABLE),
    ("bytes=-0", UNSATISFIABLE),
    ("bytes=1-", UNSATISFIABLE),                                  # nginx 416 too
    ("bytes=5-2", FULL),                                          # invalid: ignored
])
def test_ranges_of_an_empty_file(value: str, expected: RangeDecision) -> None:
    assert decide(value, size=0) == expected


def test_many_ranges_get_the_whole_file() -> None:
    spans = ",".join(f"{i}-{i}" for i in range(MAX_RANGES))
    assert len(decide("bytes=" + spans, size=1000).spans) == MAX_RANGES
    spans = ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1))
    assert decide("bytes=" + spans, size=1000) == FULL
    assert resolve_ranges(((0, 0), (2, 2), (4, 4)), 10, max_ranges=2) == FULL


@pytest.mark.parametrize("value, expected", [
    ("bytes=1-2", ((1, 2),)),
    ("bytes=1-", ((1, None),)),
    ("bytes=-2", ((None, 2),)),
    ("bytes=1-2,,-3, 4-", ((1, 2), (None, 3), (4, None))),
    ("bytes=2-1", None),
    ("bytes=", None),
    ("octets=1-2", None),
])
def test_parse_range(value: str, expected: object) -> None:
    assert parse_range(value) == expected


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "OPTIONS"])
def test_range_is_for_get_only(method: str) -> None:
    """§14.2: GET is the only method range handling is defined for.

    nginx 1.22 answers ``HEAD`` with ``Range: bytes=0-1`` with a 206 head.
    """
    assert evaluate_range(method, "bytes=0-1", None, size=10, etag=ETAG, last_modified=MTIME,
                          now=NOW) == FULL


@pytest.mark.parametrize("range_field, if_range, expected", [
    (None, None, FULL),
    (None, ETAG, FULL),
    ("bytes=0-1", None, partial((0, 1))),
    ("bytes=0-1", ETAG, partial((0, 1))),              # If-Range with the current tag
    ("bytes=0-1", f" {ETAG} ", partial((0, 1))),
    ("bytes=0-1", '"other"', FULL),                    # changed: whole file
    ("bytes=0-1", "W/" + ETAG, FULL),                  # weak tags never match
    ("bytes=0-1", DATE, partial((0, 1))),              # exact Last-Modified
    ("bytes=0-1", "Sunday, 06-Nov-94 08:49:37 GMT", partial((0, 1))),
    ("bytes=0-1", "Sun, 06 Nov 1994 08:49:38 GMT", FULL),   # not equal: whole file
    ("bytes=0-1", "Sun, 06 Nov 1994 08:49:36 GMT", FULL),
    ("bytes=0-1", "not a date", FULL),
    ("bytes=50-", ETAG, UNSATISFIABLE),
    ("bytes=50-", '"other"', FULL),                    # If-Range first: whole file, not 416
    ("bytes=0-1,3-4", ETAG, partial((0, 1), (3, 4))),
])
def test_if_range(range_field: str | None, if_range: str | None,
                  expected: RangeDecision) -> None:
    assert evaluate_range("GET", range_field, if_range, size=10, etag=ETAG,
                          last_modified=MTIME, now=NOW) == expected


def test_if_range_without_validators() -> None:
    assert not if_range_holds(ETAG, None, MTIME, NOW)
    assert not if_range_holds(DATE, ETAG, None, NOW)
    assert not if_range_holds('W/"a"', 'W/"a"', None, NOW)   # weak: never, even equal


def test_content_range_values() -> None:
    assert ByteRange(0, 4).content_range(10) == "bytes 0-4/10"
    assert ByteRange(3, 3).length == 1
    assert unsatisfied_range(10) == "bytes */10"
    assert unsatisfied_range(0) == "bytes */0"


# --- multipart/byteranges ------------------------------------------------------------

def assemble(spans: tuple[ByteRange, ...], data: bytes, content_type: str,
             boundary: str) -> tuple[str, bytes]:
    body = multipart_byteranges(spans, len(data), content_type, boundary)
    out = b"".join(head + data[span.first:span.last + 1] for head, span in body.parts)
    out += body.closing
    assert len(out) == body.length
    assert [span for _, span in body.parts] == list(spans)
    return body.content_type, out


def test_multipart_layout_is_nginx_s() -> None:
    """Byte for byte what nginx 1.22 sends for ``bytes=0-1,3-4`` of "0123456789",
    with its boundary (a 20-digit counter) in place of ours."""
    ctype, body = assemble((ByteRange(0, 1), ByteRange(3, 4)), b"0123456789", "text/plain",
                           "00000000000000000001")
    assert ctype == "multipart/byteranges; boundary=00000000000000000001"
    assert body == (b"\r\n--00000000000000000001\r\n"
                    b"Content-Type: text/plain\r\n"
                    b"Content-Range: bytes 0-1/10\r\n\r\n"
                    b"01"
                    b"\r\n--00000000000000000001\r\n"
                    b"Content-Type: text/plain\r\n"
                    b"Content-Range: bytes 3-4/10\r\n\r\n"
                    b"34"
                    b"\r\n--00000000000000000001--\r\n")
    assert len(body) == 198                      # nginx's Content-Length for it


@pytest.mark.parametrize("boundary, parameter", [
    ("abc", "abc"),
    ("a'b+c_d-e.f", "a'b+c_d-e.f"),              # a token
    ("a b", '"a b"'),                            # not a token: quoted
    ("a:b/c=d?", '"a:b/c=d?"'),
    ("x" * 70, "x" * 70),
])
def test_multipart_boundary_parameter(boundary: str, parameter: str) -> None:
    body = multipart_byteranges((ByteRange(0, 0),), 1, "text/plain", boundary)
    assert body.content_type == f"multipart/byteranges; boundary={parameter}"


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends in space ", 'q"uote', "semi;colon",
                                      "caf\u00e9", "new\nline"])
def test_multipart_refuses_bad_boundaries(boundary: str) -> None:
    with pytest.raises(ValueError):
        multipart_byteranges((ByteRange(0, 0),), 1, "text/plain", boundary)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """A reader of multipart/byteranges written from RFC 2046, independent of the writer."""
    m = re.fullmatch(r'multipart/byteranges; boundary="?([^"]+)"?', content_type)
    assert m is not None
    delimiter = b"\r\n--" + m[1].encode()
    assert body.endswith(delimiter + b"--\r\n")
    chunks = body[:-len(delimiter) - 4].split(delimiter)
    assert chunks[0] == b""                      # empty preamble
    parts = []
    for chunk in chunks[1:]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        parts.append((fields[b"Content-Range"].decode(), data))
    return parts


@given(st.binary(min_size=1, max_size=300), st.data())
def test_multipart_parts_carry_their_bytes(data: bytes, draw: st.DataObject) -> None:
    size = len(data)
    positions = st.integers(min_value=0, max_value=size - 1)
    pairs = draw.draw(st.lists(st.tuples(positions, positions), min_size=2, max_size=6))
    spans = tuple(ByteRange(min(a, b), max(a, b)) for a, b in pairs)
    ctype, body = assemble(spans, data, "application/octet-stream", "3d6b6a416f9b5")
    assert parse_multipart(ctype, body) == [
        (span.content_range(size), data[span.first:span.last + 1]) for span in spans]


# --- properties of the decision --------------------------------------------------------

SPEC = st.one_of(
    st.tuples(st.integers(0, 30), st.none()),
    st.tuples(st.none(), st.integers(0, 30)),
    st.tuples(st.integers(0, 30), st.integers(0, 30)).map(lambda t: (min(t), max(t))),
)


def render(spec: tuple[int | None, int | None]) -> str:
    first, last = spec
    return f"{'' if first is None else first}-{'' if last is None else last}"


@given(st.lists(SPEC, min_size=1, max_size=8), st.integers(0, 20))
def test_decision_invariants(specs: list[tuple[int | None, int | None]], size: int) -> None:
    decision = decide("bytes=" + ",".join(render(s) for s in specs), size=size)
    assert decision.status in (200, 206, 416)
    if decision.status == 416:
        assert not decision.spans
        assert all((first is not None and first >= size) or last == 0 or size == 0
                   for first, last in specs)
    elif decision.status == 206:
        assert 1 <= len(decision.spans) <= len(specs)
        for span in decision.spans:
            assert 0 <= span.first <= span.last < size
        if decision.multipart:
            assert sum(span.length for span in decision.spans) <= size
    else:
        assert len(specs) > 1 and not decision.spans
