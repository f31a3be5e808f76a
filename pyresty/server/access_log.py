"""The access log: nginx ``combined`` plus request and upstream timings.

    $remote_addr - - [$time_local] "$request" $status $body_bytes_sent
    "$http_referer" "$http_user_agent" $request_time $upstream_addr
    $upstream_status $upstream_response_time

A WebSocket's line (status 101) is written when it ends: ``$body_bytes_sent``
counts the bytes sent after the 101, ``$request_time`` its whole life, and one
more field at the end the bytes received from the client.

Lines are buffered and written when the buffer passes ``FLUSH_AT`` bytes, on
the server's sweep tick (at most a quarter second later), on reopen and at
exit: one write per request would cost a syscall on the hot path.

A write that fails (a full disk, ``ENOSPC``; an I/O error) drops the lines it
carried, is counted (``errors``, in ``/metrics`` as
``pyresty_access_log_errors_total``) and is reported in the error log at
``[alert]`` with the file and the errno, as nginx reports it, at most once a
second (``runtime/throttle.py``); the server keeps serving.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Protocol

from pyresty.errorlog import ALERT
from pyresty.runtime.throttle import LogThrottle

FLUSH_AT = 32 * 1024

log = logging.getLogger("pyresty.http")


class Logged(Protocol):
    """What a line is made of (a ``Request`` offers it; this module stays a leaf)."""

    method: str
    uri: str
    http_version: str
    body_bytes_sent: int
    body_size: int                          # request body; after a 101, the bytes received
    start_time: float
    upstream_addr: str | None              # one entry per try, ", "-separated (nginx)
    upstream_status: str | None

    @property
    def upstream_response_time(self) -> str | None: ...

    @property
    def client_addr(self) -> str: ...

    def header(self, name: bytes) -> bytes | None: ...


class _LocalTime:
    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.text = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
        return self.text


_local_time = _LocalTime().get


def _escape(text: str) -> str:
    """nginx's escaping of ``"`` and ``\\`` in logged fields: a line cannot be forged."""
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\x5C").replace('"', '\\x22')
    return text


def _quote(value: bytes | None) -> str:
    return _escape(value.decode("latin-1")) if value else "-"


class AccessLog:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._buffer: list[str] = []
        self._size = 0
        self._failures = LogThrottle(log, ALERT)

    @property
    def errors(self) -> int:
        """Writes that failed since the log was opened (their lines were lost)."""
        return self._failures.total

    def write(self, r: Logged, status: int, now: float) -> None:
        line = (
            f'{r.client_addr} - - [{_local_time()}] "{r.method} {_escape(r.uri)} HTTP/{r.http_version}" '
            f'{status} {r.body_bytes_sent} "{_quote(r.header(b"referer"))}" '
            f'"{_quote(r.header(b"user-agent"))}" {now - r.start_time:.3f} '
            f'{r.upstream_addr or "-"} {r.upstream_status or "-"} '
            f'{r.upstream_response_time or "-"}'
            f'{f" {r.body_size}" if status == 101 else ""}\n'
        )
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_AT:
            self.flush()

    def write_refused(self, client: str, status: int, body_size: int) -> None:
        """A request the parser refused (400, 413, 414, 431...): its line is unknown."""
        line = f'{client} - - [{_local_time()}] "-" {status} {body_size} "-" "-" 0.000 - - -\n'
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            data = "".join(self._buffer).encode("utf-8", "backslashreplace")
            lines = len(self._buffer)
            self._buffer = []
            self._size = 0
            try:
                written = os.write(self._fd, data)
            except OSError as exc:
                # a full disk must not take the worker down, nor go unnoticed
                self._failures.report('write() to "%s" failed (%d: %s), %d lines lost',
                                      self.path, exc.errno, exc.strerror, lines)
                return
            if written < len(data):
                self._failures.report('write() to "%s" was incomplete: %d of %d bytes',
                                      self.path, written, len(data))

    def reopen(self) -> None:
        """USR1: go on in a file at ``path`` again (logrotate moved the old one).
        The new file is opened before the old one is closed: when it cannot be
        (its folder moved, no permission), the log stays on the file it has
        and says so, rather than keep a closed descriptor number that the next
        accepted connection would reuse (its client would get log lines)."""
        if self._fd < 0:
            return
        self.flush()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            log.log(ALERT, 'could not reopen the access log "%s" (%s); it stays on the '
                    "file already open", self.path, exc.strerror or exc)
            return
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        """Write what is buffered and close (idempotent: the server and the
        lifecycle registry may both close a log; a second ``os.close`` could
        close a descriptor reused since)."""
        if self._fd < 0:
            return
        self.flush()
        os.close(self._fd)
        self._fd = -1
