"""Whether an HTTP/1.1 connection outlives the exchange on it, for both roles.

Every keep-alive, ``Connection: close``, ``100-continue`` and ``Upgrade``
decision of the server's connection (server/connection.py), the response
writer (response.py) and the upstream client role (client.py) is one of the
transitions below; fast paths call the same functions.

============================  ===============================================  =====================
when                          rule                                             function
============================  ===============================================  =====================
a message head, either role   HTTP/1.1 persists unless ``Connection: close``;  ``message_persists``
                              HTTP/1.0 only with ``Connection: keep-alive``
                              (RFC 9112 §9.3). llhttp's ``should_keep_alive``
                              applies the same rule to request heads.
a response head (writer)      a ``close`` token from the handler closes after  ``response_persists``
                              the response; a body of unknown length to an
                              HTTP/1.0 client is delimited by the close
                              (RFC 9112 §6.3)
a response body (client)      a close-delimited body never leaves a reusable   ``response_persists``
                              connection
a handler waits for the body  ``Expect: 100-continue`` from an HTTP/1.1        ``continue_due``
                              client, not yet answered, response not started:
                              send ``100 Continue`` (RFC 9110 §10.1.1;
                              HTTP/1.0 clients' expectations are ignored)
a response starts (server)    the server stops keep-alive (closing, draining,  ``after_response``
                              the client half-closed with nothing queued):
                              close. The request body is not all read: at
                              most ``DISCARD_MAX`` unread bytes are read and
                              dropped to keep the connection (nginx's
                              ``ngx_http_discard_request_body``); more, or an
                              expectation other than ``100-continue``: close;
                              a client holding its body back for
                              ``100 Continue`` gets it first, so that the
                              next bytes are that body and not a request.
``101 Switching Protocols``   HTTP ends on the connection: the bytes after     ``upgraded``
                              the head belong to the new protocol; the
                              connection is never reused for HTTP.
============================  ===============================================  =====================
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# Unread request body bytes read and dropped to keep a connection: nginx's
# default client_max_body_size. Reading this much costs less than a new
# connection (and TLS handshake); an upload larger than that is cut instead.
DISCARD_MAX: Final = 1024 * 1024

KEEP: Final = 0            # after_response: the connection stays open
SEND_CONTINUE: Final = 1   # after_response: send 100 Continue, then keep
CLOSE: Final = 2           # after_response: close once the response is out


def connection_tokens(values: Iterable[bytes]) -> set[bytes]:
    """The options of ``Connection`` field values, lowercased (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def message_persists(http11: bool, tokens: set[bytes]) -> bool:
    """RFC 9112 §9.3: whether the sender of a head with these ``Connection``
    options keeps the connection after this message."""
    if http11:
        return b"close" not in tokens
    return b"keep-alive" in tokens


def response_persists(keep_alive: bool, close_requested: bool, close_delimited: bool) -> bool:
    """Whether the connection survives a response: the exchange allowed it, no
    ``close`` was asked for, and the body's end is not the connection's end."""
    return keep_alive and not close_requested and not close_delimited


def continue_due(http11: bool, expect: bytes | None, continue_sent: bool, started: bool) -> bool:
    """Whether a handler that waits for the body must first send ``100 Continue``."""
    return (http11 and not continue_sent and not started and expect is not None
            and expect.lower() == b"100-continue")


def after_response(stopping: bool, body_complete: bool, unread: int | None,
                   http11: bool, expect: bytes | None, continue_sent: bool) -> int:
    """What the server does with the connection when a response starts:
    ``KEEP``, ``SEND_CONTINUE`` (then keep) or ``CLOSE``.

    ``stopping``: the server stops keep-alive on this connection; ``unread``:
    request body bytes still to come (None when chunked: counted as they
    arrive, the connection closes once past ``DISCARD_MAX``).
    """
    if stopping:
        return CLOSE
    if body_complete:
        return KEEP
    if unread is not None and unread > DISCARD_MAX:
        return CLOSE
    if continue_sent or expect is None or not http11:
        return KEEP
    if expect.lower() != b"100-continue":
        return CLOSE        # an expectation we cannot meet: do not guess
    return SEND_CONTINUE


def upgraded(status: int) -> bool:
    """After a ``101`` head, HTTP is over on the connection (RFC 9110 §15.2.2)."""
    return status == 101
