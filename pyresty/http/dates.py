"""HTTP dates (RFC 9110 §5.6.7): format one, parse the three forms.

Rules:

- A sender generates only the IMF-fixdate form, always in GMT:
  ``Sun, 06 Nov 1994 08:49:37 GMT``.
- A recipient accepts all three forms: IMF-fixdate, the obsolete RFC 850 form
  ``Sunday, 06-Nov-94 08:49:37 GMT`` and ANSI C's asctime
  ``Sun Nov  6 08:49:37 1994`` (§5.6.7 "recipients ... MUST accept all three").
- HTTP-date is case-sensitive and has no optional parts, so the parser is
  strict and answers ``None`` for anything else: every field that carries a
  date (If-Modified-Since, If-Unmodified-Since, If-Range) tells its recipient
  to *ignore* an invalid date, never to guess one (§13.1.3, §13.1.4, §13.1.5).
  Leading and trailing whitespace is the field's OWS and is dropped.
- A two-digit RFC 850 year that would lie more than 50 years in the future is
  the most recent past year with those digits (§5.6.7). That needs the
  current time, which this module does not read: the caller passes ``now``
  (seconds since the epoch), as it passes every other fact it knows.

No sockets, no clocks: values in, values out.
"""
from __future__ import annotations

import datetime
import re
import time
from typing import Final

__all__ = ["format_http_date", "parse_http_date"]

_WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")   # tm_wday order
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(timestamp: float) -> str:
    """The IMF-fixdate for ``timestamp`` (seconds since the epoch, UTC).

    Fractions of a second are dropped: HTTP dates have one-second resolution.
    """
    t = time.gmtime(timestamp)
    return (f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


_DAY_NAME = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY_NAME = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME = "(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_FORMS: Final = (
    # IMF-fixdate: day-name "," SP day SP month SP year SP time SP "GMT"
    re.compile(f"{_DAY_NAME}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT"),
    # rfc850-date: day-name-l "," SP day "-" month "-" 2DIGIT SP time SP "GMT"
    re.compile(f"{_LONG_DAY_NAME}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT"),
    # asctime-date: day-name SP month SP ( 2DIGIT / ( SP DIGIT )) SP time SP year
    re.compile(f"{_DAY_NAME} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})"),
)


def parse_http_date(value: str, now: float) -> int | None:
    """Seconds since the epoch for an HTTP-date in any of its three forms.

    ``now`` (seconds since the epoch) places a two-digit RFC 850 year. Returns
    ``None`` for anything that is not exactly an HTTP-date, including dates
    that do not exist (``31 Feb``, hour 24, second 60); never raises.
    """
    value = value.strip(" \t")
    for form in _FORMS:
        m = form.fullmatch(value)
        if m is not None:
            return _seconds(m, now)
    return None


def _seconds(m: re.Match[str], now: float) -> int | None:
    digits = m["year"]
    year = int(digits)
    if len(digits) == 2:
        this_year = time.gmtime(now).tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    try:
        moment = datetime.datetime(year, _MONTHS.index(m["month"]) + 1, int(m["day"]),
                                   int(m["hour"]), int(m["minute"]), int(m["second"]),
                                   tzinfo=datetime.timezone.utc)
    except ValueError:    # no such day, hour, minute or second; year 0000
        return None
    return int(moment.timestamp())
