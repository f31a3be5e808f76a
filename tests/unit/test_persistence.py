"""The keep-alive table of pyresty/http/persistence.py, row by row."""
from __future__ import annotations

import pytest

from pyresty.http.persistence import (
    CLOSE, DISCARD_MAX, KEEP, SEND_CONTINUE, after_response, connection_tokens,
    continue_due, message_persists, response_persists, upgraded,
)


@pytest.mark.parametrize("values, expected", [
    ([], set()),
    ([b"close"], {b"close"}),
    ([b"Keep-Alive, Upgrade"], {b"keep-alive", b"upgrade"}),
    ([b" close ,", b"TE"], {b"close", b"te"}),
    ([b"closed"], {b"closed"}),           # a token, not a substring
])
def test_connection_tokens(values: list[bytes], expected: set[bytes]) -> None:
    assert connection_tokens(values) == expected


@pytest.mark.parametrize("http11, values, persists", [
    (True, [], True),
    (True, [b"close"], False),
    (True, [b"keep-alive, close"], False),
    (True, [b"closed"], True),
    (False, [], False),
    (False, [b"keep-alive"], True),
    (False, [b"Keep-Alive"], True),
])
def test_message_persists(http11: bool, values: list[bytes], persists: bool) -> None:
    assert message_persists(http11, connection_tokens(values)) is persists


@pytest.mark.parametrize("keep, close, delimited, persists", [
    (True, False, False, True),
    (False, False, False, False),
    (True, True, False, False),
    (True, False, True, False),
])
def test_response_persists(keep: bool, close: bool, delimited: bool, persists: bool) -> None:
    assert response_persists(keep, close, delimited) is persists


@pytest.mark.parametrize("http11, expect, sent, started, due", [
    (True, b"100-continue", False, False, True),
    (True, b"100-Continue", False, False, True),
    (False, b"100-continue", False, False, False),   # HTTP/1.0: ignored
    (True, b"100-continue", True, False, False),     # once
    (True, b"100-continue", False, True, False),     # the response already answers
    (True, None, False, False, False),
    (True, b"something-else", False, False, False),
])
def test_continue_due(http11: bool, expect: bytes | None, sent: bool, started: bool,
                      due: bool) -> None:
    assert continue_due(http11, expect, sent, started) is due


@pytest.mark.parametrize("stopping, complete, unread, http11, expect, sent, verdict", [
    (True, True, 0, True, None, False, CLOSE),                  # closing, draining, half-closed
    (False, True, 0, True, None, False, KEEP),                  # the common case
    (False, False, 10, True, None, False, KEEP),                # small rest: read and dropped
    (False, False, DISCARD_MAX, True, None, False, KEEP),
    (False, False, DISCARD_MAX + 1, True, None, False, CLOSE),  # too much to read
    (False, False, None, True, None, False, KEEP),              # chunked: counted as it comes
    (False, False, 10, True, b"100-continue", False, SEND_CONTINUE),
    (False, False, 10, True, b"100-continue", True, KEEP),      # already sent
    (False, False, 10, False, b"100-continue", False, KEEP),    # HTTP/1.0 ignores Expect
    (False, False, 10, True, b"x-unknown", False, CLOSE),       # cannot meet it
    (False, False, DISCARD_MAX + 1, True, b"100-continue", False, CLOSE),
])
def test_after_response(stopping: bool, complete: bool, unread: int | None, http11: bool,
                        expect: bytes | None, sent: bool, verdict: int) -> None:
    assert after_response(stopping, complete, unread, http11, expect, sent) == verdict


def test_only_101_ends_http() -> None:
    assert upgraded(101)
    assert not any(upgraded(status) for status in (100, 103, 200, 426))
