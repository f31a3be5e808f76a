"""Conditional requests (RFC 9110 §13): If-Match, If-None-Match,
If-Modified-Since, If-Unmodified-Since -> proceed, 304 or 412.

Theory of operation: the caller has selected a representation (a file, a
handler's or an upstream's 200 response) and knows its validators: its entity
tag and its Last-Modified time. ``evaluate_preconditions`` takes those, the
request method, the four field values as received, and the current time, and
answers what to do. It runs before the method is applied and before Range is
looked at (§13.2.2 step 5 is ``ranges.evaluate_range``).

Rules, in the order §13.2.2 evaluates them (the first that decides, wins):

1. If-Match present: false -> 412. True when it is ``*`` or lists a tag equal
   to the current one by *strong* comparison (§8.8.3.2: both strong, same
   opaque-tag). With If-Match present, If-Unmodified-Since is not looked at.
2. Else If-Unmodified-Since present with a valid date: false (modified after
   that date) -> 412.
3. If-None-Match present: false (``*``, or a tag equal by *weak* comparison)
   -> 304 for GET and HEAD, 412 for any other method. With If-None-Match
   present, If-Modified-Since is not looked at.
4. Else, for GET and HEAD only, If-Modified-Since present with a valid date:
   false (not modified since) -> 304.
5. Otherwise proceed.

What counts as a date here:

- An invalid date is ignored (§13.1.3, §13.1.4), as is a field holding a
  list of dates (it does not parse as one).
- "Not modified since" means Last-Modified at or before the given date
  (§13.1.3), not only an exact match (nginx's default ``if_modified_since
  exact``): a cache that stored the Date of its copy instead of Last-Modified
  still gets its 304. This is nginx's ``if_modified_since before``.
- An If-Modified-Since date *later than now* is ignored (RFC 2616 §14.25: "a
  date which is later than the server's current time is invalid"). No
  Last-Modified we send can be later than our Date (RFC 9110 §8.8.2.1), so
  such a date did not come from us, and a 304 for it could pin a cache to a
  stale copy until that date. nginx answers 200 there as well (it compares
  exactly).
- Without a Last-Modified (``last_modified=None``) the two date fields are
  ignored: there is nothing to compare.
- Without an entity tag (``etag=None``) only ``*`` matches.

Not decided here: §13.2.1 says the conditions apply only when the response
would otherwise be 2xx (or 412); the caller checks that first. For a
state-changing method whose change already happened (§13.1.1), the caller may
answer 2xx instead of 412; that needs knowledge only the caller has.

No sockets, no clocks: the caller passes ``now``.
"""
from __future__ import annotations

import re
from enum import IntEnum
from typing import Final

from pyresty.http.dates import parse_http_date

__all__ = ["Precondition", "etag_listed", "evaluate_preconditions", "is_weak"]


class Precondition(IntEnum):
    """The outcome of §13.2.2, as the status it leads to."""

    PROCEED = 200               # apply the method (and then look at Range)
    NOT_MODIFIED = 304
    FAILED = 412                # Precondition Failed


# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE (§8.8.3). A list element that is
# not an entity-tag cannot match anything and is skipped.
_ENTITY_TAG: Final = re.compile(r'(?:W/)?"[^"]*"')

_SAFE_TO_304: Final = frozenset({"GET", "HEAD"})


def is_weak(etag: str) -> bool:
    """Whether ``etag`` is a weak entity tag (``W/"..."``)."""
    return etag.startswith("W/")


def etag_listed(field: str, etag: str | None, *, weak: bool) -> bool:
    """Whether an If-Match / If-None-Match value matches the current ``etag``.

    ``*`` matches any current representation. Otherwise a listed tag matches
    by weak comparison (``weak=True``: same opaque-tag, either may be weak) or
    strong comparison (both strong and identical), §8.8.3.2.
    """
    if field.strip(" \t") == "*":
        return True
    if etag is None:
        return False
    current_weak = is_weak(etag)
    if not weak and current_weak:
        return False
    opaque = etag[2:] if current_weak else etag
    for tag in _ENTITY_TAG.findall(field):
        if is_weak(tag):
            if weak and tag[2:] == opaque:
                return True
        elif tag == opaque:
            return True
    return False


def evaluate_preconditions(method: str, *, etag: str | None, last_modified: int | None,
                           now: float, if_match: str | None = None,
                           if_none_match: str | None = None,
                           if_modified_since: str | None = None,
                           if_unmodified_since: str | None = None) -> Precondition:
    """Evaluate the preconditions of a request in the order of RFC 9110 §13.2.2.

    ``etag`` and ``last_modified`` (seconds since the epoch) are the selected
    representation's validators, ``None`` when it has none; the field values
    are as received (``None`` when absent); ``now`` is the current time in
    seconds since the epoch. Never raises.
    """
    if if_match is not None:
        if not etag_listed(if_match, etag, weak=False):
            return Precondition.FAILED
    elif if_unmodified_since is not None and last_modified is not None:
        since = parse_http_date(if_unmodified_since, now)
        if since is not None and last_modified > since:
            return Precondition.FAILED
    if if_none_match is not None:
        if etag_listed(if_none_match, etag, weak=True):
            return Precondition.NOT_MODIFIED if method in _SAFE_TO_304 else Precondition.FAILED
    elif (if_modified_since is not None and last_modified is not None
          and method in _SAFE_TO_304):
        since = parse_http_date(if_modified_since, now)
        if since is not None and since <= now and last_modified <= since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED
