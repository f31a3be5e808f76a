"""HTTP dates (RFC 9110 §5.6.7): IMF-fixdate out, all three forms in."""
from __future__ import annotations

import calendar
import datetime
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresty.http.dates import format_http_date, parse_http_date

MTIME = 784111777                       # Sun, 06 Nov 1994 08:49:37 GMT
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
NOW = 1_800_000_000.5                   # Fri, 15 Jan 2027 08:00:00 GMT: "now" in these tests
Y2K_NOW = calendar.timegm((2000, 6, 1, 0, 0, 0))

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value, expected", [
    (DATE, MTIME),                                       # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", MTIME),           # obsolete RFC 850
    ("Sun Nov  6 08:49:37 1994", MTIME),                 # obsolete asctime, day " 6"
    ("Sun Nov 06 08:49:37 1994", MTIME),                 # asctime, day "06" (2DIGIT)
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
    ("Wed, 31 Dec 1969 23:59:59 GMT", -1),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799),
    ("Tue, 29 Feb 2000 12:00:00 GMT", 951825600),        # leap day
    ("  " + DATE + " ", MTIME),                          # OWS around the value
    ("\t" + DATE, MTIME),
    ("Mon, 06 Nov 1994 08:49:37 GMT", MTIME),            # a wrong day name is not checked
    # not HTTP-dates: None, so the field that carries it is ignored
    ("Sun, 06 Nov 1994 08:49:37 +0000", None),
    ("Sun, 06 Nov 1994 08:49:37 UTC", None),
    ("Sun, 06 Nov 1994 08:49:37", None),
    ("Sun, 06 Nov 1994 08:49:37 gmt", None),             # case-sensitive
    ("sun, 06 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06 nov 1994 08:49:37 GMT", None),
    ("Sun,  06 Nov 1994 08:49:37 GMT", None),
    ("Sun, 6 Nov 1994 08:49:37 GMT", None),              # IMF-fixdate's day has 2 digits
    ("Sun, 06 Nov 94 08:49:37 GMT", None),
    ("Sun, 32 Nov 1994 08:49:37 GMT", None),             # no such day
    ("Sun, 31 Nov 1994 08:49:37 GMT", None),
    ("Thu, 29 Feb 2001 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 24:00:00 GMT", None),
    ("Sun, 06 Nov 1994 08:60:00 GMT", None),
    ("Sat, 31 Dec 2016 23:59:60 GMT", None),             # a leap second
    ("Sun, 06 Nov 0000 08:49:37 GMT", None),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", None),   # non-ASCII digits
    ("Sun, 06-Nov-94 08:49:37 GMT", None),               # RFC 850 needs the long day name
    ("Sunday, 06-Nov-1994 08:49:37 GMT", None),
    ("Sun Nov 6 08:49:37 1994", None),                   # asctime pads the day
    (f"{DATE}, {DATE}", None),                           # a list of dates
    ("784111777", None),
    ("", None),
])
def test_parse_http_date(value: str, expected: int | None) -> None:
    assert parse_http_date(value, NOW) == expected


@pytest.mark.parametrize("now, value, year", [
    # §5.6.7: more than 50 years ahead means the past century
    (Y2K_NOW, "Thursday, 01-Jan-49 00:00:00 GMT", 2049),
    (Y2K_NOW, "Friday, 01-Jan-50 00:00:00 GMT", 2050),
    (Y2K_NOW, "Saturday, 01-Jan-51 00:00:00 GMT", 1951),
    (Y2K_NOW, "Friday, 01-Jan-99 00:00:00 GMT", 1999),
    (NOW, "Sunday, 06-Nov-94 08:49:37 GMT", 1994),
    (NOW, "Friday, 01-Jan-77 00:00:00 GMT", 2077),      # 2027 + 50
    (NOW, "Saturday, 01-Jan-78 00:00:00 GMT", 1978),
])
def test_rfc850_two_digit_year_follows_now(now: float, value: str, year: int) -> None:
    stamp = parse_http_date(value, now)
    assert stamp is not None
    assert datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).year == year


@pytest.mark.parametrize("stamp, expected", [
    (MTIME, DATE),
    (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
    (1700000000, "Tue, 14 Nov 2023 22:13:20 GMT"),
    (1700000000.999, "Tue, 14 Nov 2023 22:13:20 GMT"),   # one-second resolution
    (951825600, "Tue, 29 Feb 2000 12:00:00 GMT"),
])
def test_format_http_date(stamp: float, expected: str) -> None:
    assert format_http_date(stamp) == expected


# 0001-01-01 .. 9999-12-31 in seconds
STAMPS = st.integers(min_value=-62135596800, max_value=253402300799)


@given(STAMPS)
def test_format_then_parse_round_trips(stamp: int) -> None:
    assert parse_http_date(format_http_date(stamp), NOW) == stamp


@given(st.integers(min_value=0, max_value=253402300799))
def test_format_agrees_with_the_stdlib(stamp: int) -> None:
    assert format_http_date(stamp) == formatdate(stamp, usegmt=True)


@given(STAMPS)
def test_the_obsolete_forms_name_the_same_moment(stamp: int) -> None:
    moment = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    asctime = moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S ") \
        + f"{moment.year:04d}"
    assert parse_http_date(asctime, NOW) == stamp
    this_year = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).year
    if this_year - 49 <= moment.year <= this_year + 50:   # what two digits can name
        rfc850 = moment.strftime("%A, %d-%b-") + f"{moment.year % 100:02d}" \
            + moment.strftime(" %H:%M:%S GMT")
        assert parse_http_date(rfc850, NOW) == stamp


@given(st.text(max_size=40))
def test_parse_never_raises(value: str) -> None:
    result = parse_http_date(value, NOW)
    assert result is None or isinstance(result, int)
