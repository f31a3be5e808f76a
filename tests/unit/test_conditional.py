"""Conditional requests (RFC 9110 §13): the §13.2.2 order, 304 and 412."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresty.http.conditional import Precondition, etag_listed, evaluate_preconditions
from pyresty.http.dates import format_http_date

pytestmark = pytest.mark.timeout(60)

MTIME = 784111777                       # Sun, 06 Nov 1994 08:49:37 GMT
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"
NOW = MTIME + 3600                      # the server's clock: an hour after the change
ETAG = '"2ebc3ea1-a"'
PROCEED, NOT_MODIFIED, FAILED = Precondition.PROCEED, Precondition.NOT_MODIFIED, Precondition.FAILED


def evaluate(method: str = "GET", *, etag: str | None = ETAG, last_modified: int | None = MTIME,
             now: float = NOW, **fields: str) -> Precondition:
    return evaluate_preconditions(method, etag=etag, last_modified=last_modified, now=now,
                                  **fields)


@pytest.mark.parametrize("fields, expected", [
    ({}, PROCEED),
    # If-Modified-Since: 304 when not modified after the date (at or before it)
    ({"if_modified_since": DATE}, NOT_MODIFIED),            # exact
    ({"if_modified_since": LATER}, NOT_MODIFIED),           # later, still in the past
    ({"if_modified_since": EARLIER}, PROCEED),
    ({"if_modified_since": "Sunday, 06-Nov-94 08:49:37 GMT"}, NOT_MODIFIED),   # rfc850
    ({"if_modified_since": "Sun Nov  6 08:49:37 1994"}, NOT_MODIFIED),         # asctime
    ({"if_modified_since": "yesterday"}, PROCEED),          # invalid dates are ignored
    ({"if_modified_since": ""}, PROCEED),
    ({"if_modified_since": f"{DATE}, {DATE}"}, PROCEED),    # a list is not a date
    # If-None-Match: weak comparison, "*" matches any current representation
    ({"if_none_match": ETAG}, NOT_MODIFIED),
    ({"if_none_match": "W/" + ETAG}, NOT_MODIFIED),
    ({"if_none_match": f'"a", {ETAG}, "b"'}, NOT_MODIFIED),
    ({"if_none_match": f'"a",{ETAG}'}, NOT_MODIFIED),
    ({"if_none_match": "*"}, NOT_MODIFIED),
    ({"if_none_match": " * "}, NOT_MODIFIED),
    ({"if_none_match": '"other"'}, PROCEED),
    ({"if_none_match": ETAG[1:-1]}, PROCEED),               # unquoted is not a tag
    ({"if_none_match": '"other"', "if_modified_since": LATER}, PROCEED),   # INM wins over IMS
    ({"if_none_match": ETAG, "if_modified_since": EARLIER}, NOT_MODIFIED),
    # If-Match: strong comparison, 412
    ({"if_match": ETAG}, PROCEED),
    ({"if_match": "*"}, PROCEED),
    ({"if_match": f'"a", {ETAG}'}, PROCEED),
    ({"if_match": '"other"'}, FAILED),
    ({"if_match": "W/" + ETAG}, FAILED),                    # a weak tag never matches strongly
    ({"if_match": '"other"', "if_none_match": ETAG}, FAILED),   # If-Match first
    ({"if_match": ETAG, "if_none_match": ETAG}, NOT_MODIFIED),
    # If-Unmodified-Since: 412 when modified after the date
    ({"if_unmodified_since": DATE}, PROCEED),
    ({"if_unmodified_since": LATER}, PROCEED),
    ({"if_unmodified_since": EARLIER}, FAILED),
    ({"if_unmodified_since": "garbage"}, PROCEED),
    ({"if_match": ETAG, "if_unmodified_since": EARLIER}, PROCEED),   # IUS ignored with If-Match
    ({"if_unmodified_since": EARLIER, "if_none_match": ETAG}, FAILED),   # 412 before 304
])
def test_get(fields: dict[str, str], expected: Precondition) -> None:
    assert evaluate("GET", **fields) == expected
    assert evaluate("HEAD", **fields) == expected


def test_if_modified_since_in_the_future_is_ignored() -> None:
    """Issue 16 item 12: a date later than the server's clock gives no 304.

    nginx 1.22 (default ``if_modified_since exact``) answers 200 to it; with
    ``if_modified_since before`` it would answer 304, which is the bug.
    """
    future = format_http_date(NOW + 86400)
    assert evaluate(if_modified_since=future) == PROCEED
    assert evaluate(if_modified_since=format_http_date(NOW + 1)) == PROCEED
    assert evaluate(if_modified_since="Tue, 01 Dec 2099 00:00:00 GMT") == PROCEED
    # up to now it still counts
    assert evaluate(if_modified_since=format_http_date(NOW)) == NOT_MODIFIED
    assert evaluate(if_modified_since=format_http_date(NOW), now=NOW + 0.9) == NOT_MODIFIED
    # a file whose mtime is in the future too: still no 304 for a future date
    assert evaluate(last_modified=int(NOW) + 100, if_modified_since=future) == PROCEED


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("fields, expected", [
    ({"if_none_match": ETAG}, FAILED),                     # 412, not 304, off GET/HEAD
    ({"if_none_match": "*"}, FAILED),                      # "create only if absent"
    ({"if_none_match": '"other"'}, PROCEED),
    ({"if_modified_since": DATE}, PROCEED),                # IMS is for GET and HEAD only
    ({"if_match": '"other"'}, FAILED),
    ({"if_match": ETAG}, PROCEED),
    ({"if_unmodified_since": EARLIER}, FAILED),
])
def test_other_methods(method: str, fields: dict[str, str], expected: Precondition) -> None:
    assert evaluate(method, **fields) == expected


@pytest.mark.parametrize("fields, expected", [
    ({"if_match": "*"}, PROCEED),
    ({"if_match": ETAG}, FAILED),
    ({"if_none_match": "*"}, NOT_MODIFIED),
    ({"if_none_match": ETAG}, PROCEED),
])
def test_without_an_entity_tag(fields: dict[str, str], expected: Precondition) -> None:
    assert evaluate(etag=None, **fields) == expected


@pytest.mark.parametrize("fields", [
    {"if_modified_since": LATER}, {"if_unmodified_since": EARLIER},
])
def test_without_last_modified_the_dates_are_ignored(fields: dict[str, str]) -> None:
    assert evaluate(last_modified=None, **fields) == PROCEED


@pytest.mark.parametrize("field, current, weak, expected", [
    ('"a"', '"a"', False, True),
    ('"a"', '"a"', True, True),
    ('W/"a"', '"a"', False, False),
    ('W/"a"', '"a"', True, True),
    ('"a"', 'W/"a"', False, False),          # a weak current tag never matches strongly
    ('"a"', 'W/"a"', True, True),
    ('W/"a"', 'W/"a"', True, True),
    ('"b", W/"a"', 'W/"a"', True, True),
    ('"a"', '"ab"', True, False),
    ("a", '"a"', True, False),
    ('"", "a"', '"a"', False, True),
    ("*", '"a"', False, True),
    ("*", None, False, True),
    ('"a"', None, True, False),
])
def test_etag_listed(field: str, current: str | None, weak: bool, expected: bool) -> None:
    assert etag_listed(field, current, weak=weak) is expected


FIELD_VALUES = st.one_of(st.none(), st.sampled_from([ETAG, "W/" + ETAG, '"x"', "*", DATE,
                                                     EARLIER, LATER, "junk", ""]))


@given(st.sampled_from(["GET", "HEAD", "POST", "PUT"]), FIELD_VALUES, FIELD_VALUES,
       FIELD_VALUES, FIELD_VALUES)
def test_outcome_follows_the_rules(method: str, im: str | None, inm: str | None,
                                   ims: str | None, ius: str | None) -> None:
    outcome = evaluate(method, **{k: v for k, v in (
        ("if_match", im), ("if_none_match", inm),
        ("if_modified_since", ims), ("if_unmodified_since", ius)) if v is not None})
    if outcome is NOT_MODIFIED:       # only ever for a safe method
        assert method in ("GET", "HEAD")
    if im is None and inm is None and ius is None and ims is None:
        assert outcome is PROCEED
    if im is not None and im in (ETAG, "*") and inm is None and (
            ims is None or method not in ("GET", "HEAD")):
        assert outcome is PROCEED     # a matching If-Match lets everything through
