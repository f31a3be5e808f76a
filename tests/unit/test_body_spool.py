"""body_spool.py: a request body in a temporary file, and the queue of a
handler streaming the body (pause past the buffer size, resume once caught up)."""
from __future__ import annotations

import os

import pytest

from pyresty.server.body_spool import READ_CHUNK, ChunkQueue, FileSpool

pytestmark = pytest.mark.timeout(30)


def test_a_spool_holds_what_it_was_fed_and_is_removed_on_close(tmp_path) -> None:
    folder = tmp_path / "client_body_temp"
    spool = FileSpool(str(folder), [b"abc", b"def"])
    spool.feed(b"x" * (READ_CHUNK + 10))
    assert os.path.dirname(spool.path) == str(folder)
    assert spool.size == 6 + READ_CHUNK + 10
    assert spool.read() == b"abcdef" + b"x" * (READ_CHUNK + 10)
    assert spool.read_at(3) == b"def" + b"x" * (READ_CHUNK - 3)      # at most READ_CHUNK
    assert spool.read_at(spool.size) == b""
    spool.close()
    assert not os.path.exists(spool.path)
    spool.close()                                                    # idempotent


def test_a_chunk_queue_pauses_past_the_high_water_mark_and_resumes_when_drained() -> None:
    calls: list[str] = []
    queue = ChunkQueue(10, lambda: calls.append("pause"), lambda: calls.append("resume"))
    queue.feed(b"12345")
    queue.feed(b"67890")
    assert calls == []                                               # at the mark: still reading
    queue.feed(b"x")
    assert calls == ["pause"]
    assert [queue.take(), queue.take(), queue.take()] == [b"12345", b"67890", b"x"]
    assert queue.take() is None and calls == ["pause", "resume"]    # caught up: reading again
    queue.feed(b"y" * 20)
    queue.close()
    assert calls == ["pause", "resume", "pause", "resume"]


def test_a_spool_taken_as_it_grows_gives_each_byte_once(tmp_path) -> None:
    spool = FileSpool(str(tmp_path), [b"ab"])
    assert spool.waiting == 2 and spool.take() == b"ab" and spool.waiting == 0
    spool.feed(b"cd")
    assert spool.take() == b"cd" and spool.take() == b""
    spool.close()
