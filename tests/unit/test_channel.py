"""The master <-> child messages: one wire form, both directions, garbage skipped."""
from __future__ import annotations

import pytest

from pyresty.supervisor.channel import (MAX_LINE, BootFailed, Drain, LineReader, Promote, Ready,
                                        Resume, SpareReady, Stats, decode, encode)

pytestmark = pytest.mark.timeout(10)

MESSAGES = [
    Ready(),
    BootFailed("init_worker hook app:start failed: ValueError: no"),
    Stats(),
    Stats(state="shutting down", timers_pending=3, timers_running=1,
          server={"connections": 2, "requests": 10, "active_requests": 1},
          shared={"cache": {"capacity": 1048576, "used": 4096, "keys": 3, "evictions": 0}},
          shutdown_for=0.25),
    Stats(peers={"backend": {"127.0.0.1:9001": {"healthy": 0, "check_fails": 3, "down": 0,
                                                    "disabled": 1, "active": 2}}}),
    Drain(),
    Resume(),
    SpareReady(),
    Promote(3),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_as_one_line(message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line[:-1]) == message


@pytest.mark.parametrize("line", [
    b"", b"drain", b"{", b"[]", b'"ready"', b'{"event": "reboot"}', b'{"no": "event"}',
    b'{"event": "boot_error"}',                      # a required field missing
    b'{"event": "promote"}', b'{"event": "promote", "worker_id": "0"}',
    b'{"event": "promote", "worker_id": -1}', b'{"event": "promote", "worker_id": true}',
    b'{"event": "stats", "timers_pending": 1, "from_the_future": 2}',
])
def test_a_line_that_is_no_known_message_is_skipped(line: bytes) -> None:
    message = decode(line)
    if message is not None:    # a newer sender's extra field is dropped, the rest kept
        assert message == Stats(timers_pending=1)


def test_reader_splits_a_stream_at_newlines_whatever_the_chunking() -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    for size in (1, 7, len(stream)):
        reader = LineReader()
        got = []
        for i in range(0, len(stream), size):
            got += reader.feed(stream[i:i + size])
        assert got == MESSAGES, size


def test_reader_drops_an_endless_line_and_recovers() -> None:
    reader = LineReader()
    assert reader.feed(b"x" * (MAX_LINE + 1)) == []
    assert reader.feed(b"garbage\n" + encode(Ready())) == [Ready()]
