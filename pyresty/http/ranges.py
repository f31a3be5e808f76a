"""Range requests (RFC 9110 §14): Range and If-Range -> 200, 206 or 416,
and the ``multipart/byteranges`` body for several ranges.

Theory of operation: once the preconditions say "proceed"
(``conditional.evaluate_preconditions``), ``evaluate_range`` takes the method,
the Range and If-Range values as received, and the representation's length and
validators, and returns a ``RangeDecision``: the whole representation (200),
the spans to send (206), or 416. For one span the caller sends
``Content-Range: span.content_range(size)``; for several,
``multipart_byteranges`` lays out the body around the spans; for 416 it sends
``Content-Range: unsatisfied_range(size)``. Nothing here reads the data.

Rules (§14.2 unless noted):

- Range is looked at only for GET, the one method range handling is defined
  for; with any other method it is ignored (so HEAD gets the 200 head).
- If-Range (§13.1.5) is looked at only with a Range. It holds when it is an
  entity tag equal to the current one by *strong* comparison (a weak tag never
  holds), or an HTTP-date exactly equal to Last-Modified. When it does not
  hold, Range is ignored and the whole representation is sent with 200.
- Only the ``bytes`` unit is known (compared case-insensitively, §14.1); any
  other unit, and a Range that is not a valid ``bytes=`` range set, is
  ignored: §14.1.1 says a recipient MUST ignore a range set with an invalid
  range-spec (``bytes=5-2``, ``bytes=a-b``). nginx answers 416 to those; we
  follow the RFC. The set is a #list (§5.6.1): OWS around elements and empty
  elements are allowed.
- A range-spec is ``first-last`` (inclusive), ``first-`` (to the end) or
  ``-n`` (the last n bytes). A last position past the end is clamped to the
  end; so is a suffix longer than the representation (§14.1.2). Positions of
  any number of digits are accepted (and clamped), never fed whole to int().
- A range-spec is unsatisfiable when its first position is at or past the
  end, or it is ``-0``; every spec of a zero-length representation is. Those
  are dropped. None left -> 416 with ``Content-Range: bytes */<length>``
  (§14.4, §15.5.17). nginx agrees, except that for a zero-length file it sends
  the (empty) file with 200 when a spec starts at 0; we answer 416 as §14.2
  says for an unsatisfiable set.
- One span left -> 206 with that span.
- Several spans -> 206 ``multipart/byteranges`` with the parts in the order
  the client listed them (§14.6), as nginx does; unless they add up to more
  bytes than the representation has (overlapping ranges: nginx's rule against
  the amplification §14.2 warns of) or there are more than ``MAX_RANGES`` of
  them (Apache httpd's ``MaxRanges`` default): then the whole representation
  with 200, which is always allowed (a server MAY ignore Range).

No sockets, no clocks: the caller passes ``now``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pyresty.http.dates import parse_http_date

__all__ = [
    "FULL", "MAX_RANGES", "UNSATISFIABLE", "ByteRange", "Multipart", "RangeDecision",
    "RangeSpec", "evaluate_range", "if_range_holds", "multipart_byteranges",
    "parse_range", "resolve_ranges", "unsatisfied_range",
]

# More ranges than this in one request get the whole representation. Apache
# httpd's MaxRanges defaults to 200 (its answer to CVE-2011-3192); nginx's
# max_ranges is unlimited by default and relies on the byte-total rule alone.
MAX_RANGES: Final = 200

# Larger than any representation; keeps int() away from 4300-digit strings.
_HUGE: Final = 10 ** 18

_RANGE_SPEC: Final = re.compile(r"([0-9]*)-([0-9]*)")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``first`` through ``last`` (both inclusive) of a representation."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        """The Content-Range value for this span of ``size`` bytes (§14.4)."""
        return f"bytes {self.first}-{self.last}/{size}"


@dataclass(frozen=True, slots=True)
class RangeDecision:
    """What to send: ``status`` 200 (everything), 206 (``spans``) or 416."""

    status: int
    spans: tuple[ByteRange, ...] = ()

    @property
    def multipart(self) -> bool:
        """Several spans: the body is ``multipart/byteranges``."""
        return len(self.spans) > 1


FULL: Final = RangeDecision(200)
UNSATISFIABLE: Final = RangeDecision(416)

# (first, last) as written: (5, None) is "5-", (None, 3) is "-3" (a suffix).
RangeSpec = tuple[int | None, int | None]


def unsatisfied_range(size: int) -> str:
    """The Content-Range value of a 416: ``bytes */<size>`` (§14.4)."""
    return f"bytes */{size}"


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def parse_range(value: str) -> tuple[RangeSpec, ...] | None:
    """The range-specs of a ``Range: bytes=...`` value, or ``None`` to ignore it.

    ``None`` for another unit and for anything that is not a valid range set
    (a malformed spec, ``last < first``, no spec at all). Checks syntax only;
    ``resolve_ranges`` applies a length.
    """
    unit, eq, ranges = value.partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    for element in ranges.split(","):
        element = element.strip(" \t")
        if not element:
            continue    # #list: empty elements are allowed (§5.6.1.2)
        m = _RANGE_SPEC.fullmatch(element)
        if m is None:
            return None
        first_digits, last_digits = m.groups()
        first = _number(first_digits) if first_digits else None
        last = _number(last_digits) if last_digits else None
        if first is None:
            if last is None:
                return None
        elif last is not None and last < first:
            return None
        specs.append((first, last))
    return tuple(specs) if specs else None


def resolve_ranges(specs: Sequence[RangeSpec], size: int,
                   max_ranges: int = MAX_RANGES) -> RangeDecision:
    """Apply range-specs to a representation of ``size`` bytes (see the rules)."""
    spans: list[ByteRange] = []
    total = 0
    for first, last in specs:
        if first is None:
            assert last is not None
            if last == 0 or size == 0:
                continue
            span = ByteRange(max(0, size - last), size - 1)
        else:
            if first >= size:
                continue
            span = ByteRange(first, size - 1 if last is None else min(last, size - 1))
        spans.append(span)
        total += span.length
    if not spans:
        return UNSATISFIABLE
    if len(spans) > 1 and (total > size or len(spans) > max_ranges):
        return FULL
    return RangeDecision(206, tuple(spans))


def if_range_holds(value: str, etag: str | None, last_modified: int | None,
                   now: float) -> bool:
    """Whether If-Range lets Range apply (§13.1.5): a strong entity tag equal
    to ``etag``, or an HTTP-date equal to ``last_modified``."""
    value = value.strip(" \t")
    if value.startswith('"'):
        return etag is not None and value == etag
    if value.startswith("W/"):
        return False    # a weak tag never matches by strong comparison
    return last_modified is not None and parse_http_date(value, now) == last_modified


def evaluate_range(method: str, range_field: str | None, if_range_field: str | None, *,
                   size: int, etag: str | None, last_modified: int | None,
                   now: float) -> RangeDecision:
    """The answer to Range and If-Range for a representation of ``size`` bytes.

    Call it only when the response would otherwise be a 200 with the whole
    representation (§13.2.2 step 5, §14.2). Never raises.
    """
    if range_field is None or method != "GET":
        return FULL
    if if_range_field is not None and not if_range_holds(if_range_field, etag,
                                                         last_modified, now):
        return FULL
    specs = parse_range(range_field)
    if specs is None:
        return FULL
    return resolve_ranges(specs, size)


# --- multipart/byteranges (§14.6) ------------------------------------------------

@dataclass(frozen=True, slots=True)
class Multipart:
    """The layout of a ``multipart/byteranges`` body.

    The body is, for each ``(head, span)`` of ``parts``, ``head`` then the
    span's bytes; then ``closing``. ``length`` is its Content-Length and
    ``content_type`` the response's Content-Type.
    """

    content_type: str
    parts: tuple[tuple[bytes, ByteRange], ...]
    closing: bytes
    length: int


# RFC 2046 §5.1.1: 1 to 70 characters, these, and not ending in a space.
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")   # RFC 9110 §5.6.2


def multipart_byteranges(spans: Sequence[ByteRange], size: int, content_type: str,
                         boundary: str) -> Multipart:
    """Lay out the parts of a 206 ``multipart/byteranges`` answer.

    Each part carries the representation's ``content_type`` and its own
    Content-Range. ``boundary`` must not occur in the data; the caller picks it
    (at random: this module has no randomness either). Raises ``ValueError``
    for a boundary RFC 2046 does not allow.
    """
    if _BOUNDARY.fullmatch(boundary) is None:
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    type_line = b"\r\nContent-Type: " + content_type.encode("latin-1")
    parts = []
    length = 0
    for span in spans:
        head = (delimiter + type_line + b"\r\nContent-Range: "
                + span.content_range(size).encode("ascii") + b"\r\n\r\n")
        parts.append((head, span))
        length += len(head) + span.length
    closing = delimiter + b"--\r\n"
    length += len(closing)
    # a parameter value is a token or a quoted-string (§5.6.6)
    parameter = boundary if _TOKEN.fullmatch(boundary) else '"' + boundary + '"'
    return Multipart(f"multipart/byteranges; boundary={parameter}", tuple(parts), closing, length)
