"""Request bodies larger than memory should hold: a temporary file, or a stream.

nginx keeps a request body in a buffer of ``client_body_buffer_size`` (16k by
default) and writes a larger one to a file under ``client_body_temp_path``;
pyresty does the same, so a 100 MiB upload costs a file, not 100 MiB of RSS
(let alone twice that, for the chunks and their join).

Rules:
- A body arrives in memory (the request's chunk list). When its size passes
  the location's ``client_body_buffer_size`` the chunks so far go to a new
  ``FileSpool`` (``mkstemp`` in ``client_body_temp_path``) and every later
  chunk is written there as it arrives. ``Request.body_file`` is that path.
- A handler that iterates ``Request.body_chunks()`` gets a ``ChunkQueue``
  instead: chunks wait there only until the handler takes them, and when
  more than ``client_body_buffer_size`` bytes wait, the connection stops
  reading (the client's TCP window does the rest) until the handler catches
  up.
- The spool file is removed when the request ends (``Request`` closes its
  spool once the response is complete and the log phase ran), and when the
  process exits with the request unfinished (the file is unlinked by ``close``,
  which the request's end always reaches).
- A write that fails (a full disk) raises ``OSError`` into the request:
  the client gets 500 or a cut connection, and the error log says why.
"""
from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

READ_CHUNK: Final = 64 * 1024     # a spooled body is read back in pieces this size
TAKE_MAX: Final = 1024 * 1024     # at most this much of a spool taken at once (take)


class FileSpool:
    """A request body in a temporary file."""

    def __init__(self, directory: str, chunks: Iterable[bytes]) -> None:
        os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix="body-", dir=directory)
        self._fd = fd
        self.size = 0
        for chunk in chunks:
            self.feed(chunk)

    taken = 0       # how far take() has read (a body streamed on through the spool)

    @property
    def waiting(self) -> int:
        """Bytes spooled and not taken yet."""
        return self.size - self.taken

    def take(self) -> bytes:
        """What was spooled since the last take, at most ``TAKE_MAX`` bytes
        (``Exchange.take_body``: a body streamed on, to a peer slower than the client)."""
        end = min(self.size, self.taken + TAKE_MAX)
        data = b"".join(self._read(self.taken, end))
        self.taken = end
        return data

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def read(self) -> bytes:
        """The whole body (what ``read_body`` returns: it costs its size in memory)."""
        return b"".join(self.chunks())

    def read_at(self, offset: int) -> bytes:
        """Up to ``READ_CHUNK`` bytes from ``offset`` (b"" at the current end)."""
        if offset >= self.size:
            return b""
        return os.pread(self._fd, min(READ_CHUNK, self.size - offset), offset)

    def chunks(self) -> Iterable[bytes]:
        return self._read(0, self.size)

    def _read(self, offset: int, end: int) -> Iterable[bytes]:
        while offset < end:
            data = os.pread(self._fd, min(READ_CHUNK, end - offset), offset)
            if not data:
                raise OSError(f"request body file {self.path} shrank")
            offset += len(data)
            yield data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class ChunkQueue:
    """Chunks on their way to a handler iterating ``body_chunks()``."""

    path = None

    def __init__(self, high_water: int, pause: Callable[[], None],
                 resume: Callable[[], None]) -> None:
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.high_water = high_water
        self._pause = pause
        self._resume = resume
        self._paused = False

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.queued += len(data)
        if self.queued > self.high_water and not self._paused:
            self._paused = True
            self._pause()

    @property
    def waiting(self) -> int:
        return self.queued

    def take(self) -> bytes | None:
        """The next chunk, or None when none is waiting."""
        if not self.chunks:
            if self._paused:
                self._paused = False
                self._resume()
            return None
        data = self.chunks.popleft()
        self.queued -= len(data)
        return data

    def close(self) -> None:
        self.chunks.clear()
        if self._paused:
            self._paused = False
            self._resume()


class BodyChunks:
    """The async iterator of ``Request.body_chunks()``: what is buffered or
    spooled first, then each chunk as it arrives."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.started = False
        self.buffered: deque[bytes] = deque()

    def __aiter__(self) -> BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        r = self.r
        if not self.started:
            self._start()
        while True:
            if self.buffered:
                return self.buffered.popleft()
            sink = r._sink
            if isinstance(sink, FileSpool):
                data = sink.read_at(sink.taken)
                if data:
                    sink.taken += len(data)   # so that body_waiting says "nothing new"
                    return data
            elif sink is not None:
                data = sink.take()
                if data is not None:
                    return data
            if r.body_complete:
                raise StopAsyncIteration
            await r.stream.wait_body_data(r)

    def _start(self) -> None:
        """Take what is buffered in memory; later chunks go to a ChunkQueue."""
        r = self.r
        self.started = True
        if r._sink is not None:
            if not isinstance(r._sink, FileSpool):
                raise RuntimeError("body_chunks() was already called for this request")
            return                # spooled already: read from the file as it grows
        if r._body:
            self.buffered.extend(r._body)
            r._body = None
        stream = r.stream
        r._sink = ChunkQueue(r.route.client_body_buffer_size, stream.pause_reading,
                             stream.resume_reading)
