"""The error log: nginx's line format on top of the stdlib ``logging`` module.

``configure`` installs one handler per process, on the *root* logger, that writes

    2026/11/22 12:00:00 [warn] 1234#0: message

(level, pid, worker id -- the id is ``-`` in the master and the agent).
Levels are nginx's: debug, info, notice, warn, error, crit, alert, emerg.
A traceback, when there is one, follows on the next lines.

Because the handler is the root logger's, every logger arrives: pyresty's own
(``pyresty.*``), a handler's ``logging.getLogger("myapp")``, and libraries'
(httpx, aiohttp, ...), all at ``error_log_level`` and above. Python warnings
arrive as ``[warn]`` lines. In processes that run user code,
``capture_print`` makes ``print()`` (anything written to ``sys.stdout``) an
error-log line at ``[notice]``, one per line of text.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time

NOTICE = 25
ALERT = 55
EMERG = 60
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(ALERT, "ALERT")
logging.addLevelName(EMERG, "EMERG")

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": ALERT,
    "emerg": EMERG,
}
_NAMES = {value: name for name, value in LEVELS.items()}

log = logging.getLogger("pyresty")


class NginxFormatter(logging.Formatter):
    """Formats records as nginx error-log lines."""

    worker_tag = "-"

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        level = _NAMES.get(record.levelno) or record.levelname.lower()
        line = f"{stamp} [{level}] {os.getpid()}#{self.worker_tag}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _ReopenableFileHandler(logging.FileHandler):
    """A file handler that USR1 can point at a fresh file (log rotation)."""

    def reopen(self) -> OSError | None:
        """Point at a fresh file; when it cannot be opened (its folder moved
        or removed, no permission), keep the one open and return why."""
        self.acquire()
        try:
            try:
                stream = self._open()
            except OSError as exc:
                return exc
            old, self.stream = self.stream, stream
            if old:
                old.close()
            return None
        finally:
            self.release()


_formatter = NginxFormatter()
_handler: logging.Handler | None = None
_configured: tuple[str | None, str] | None = None    # (path, level) of _handler


def configure(path: str | None, level: str = "info") -> None:
    """Send the log to ``path`` (stderr when None or "stderr") at ``level``."""
    global _handler, _configured
    new: logging.Handler
    if path in (None, "stderr"):
        new = logging.StreamHandler(sys.stderr)
    else:   # opened before the old one goes: an OSError leaves the log as it was
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        new = _ReopenableFileHandler(path, encoding="utf-8", delay=False)
    new.setFormatter(_formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = new
    _configured = (path, level)
    root.addHandler(_handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)


def ensure(path: str | None, level: str = "info") -> None:
    """``configure`` unless the log already goes to ``path`` at ``level``. A
    worker forked for a reload that changed either inherits the master's old
    handler (the master switches once the new generation is ready): without
    this, it wrote to the old file at the old level for its whole life.
    Raises OSError as ``configure``."""
    if _configured != (path, level):
        configure(path, level)


def set_worker_tag(tag: object) -> None:
    """Show ``tag`` (the worker id) after the pid on every line."""
    NginxFormatter.worker_tag = "-" if tag is None else str(tag)


def open_problem(path: str) -> str | None:
    """Why the error log ``path`` cannot be opened for appending, or None (its
    folders are created, as ``configure`` would). Checked by ``-t``, at start
    and before a reload, so a path the master cannot open is refused while the
    old log is still in use (it used to stop the master once the new
    generation was ready)."""
    if path == "stderr":
        return None
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        return f'error_log: cannot open "{path}" ({exc.strerror or exc})'
    return None


def reopen() -> None:
    """Reopen the log file (USR1). Never raises: a file that cannot be opened
    is an ``[alert]`` in the file still in use, which stays in use (nginx
    does the same); a reopen used to stop the master, and with it the server."""
    if isinstance(_handler, _ReopenableFileHandler):
        exc = _handler.reopen()
        if exc is not None:
            log.log(ALERT, 'could not reopen the error log "%s" (%s); still writing to '
                    "the file already open", _handler.baseFilename, exc.strerror or exc)


class PrintToLog(io.TextIOBase):
    """A ``sys.stdout`` whose complete lines become error-log lines at ``[notice]``.

    A partial line waits for its newline (or ``flush``); one line longer than
    ``MAX_LINE`` is logged in pieces rather than held without bound.
    """

    MAX_LINE = 8192

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._log = logger
        self._pending = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        data = self._pending + text
        *lines, self._pending = data.split("\n")
        for line in lines:
            self._log.log(NOTICE, "%s", line)
        while len(self._pending) > self.MAX_LINE:
            self._log.log(NOTICE, "%s", self._pending[:self.MAX_LINE])
            self._pending = self._pending[self.MAX_LINE:]
        return len(text)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self._log.log(NOTICE, "%s", line)


def capture_print() -> None:
    """Send ``print()`` and other writes to ``sys.stdout`` to the error log at
    ``[notice]`` (logger ``stdout``); for processes that run user code."""
    if not isinstance(sys.stdout, PrintToLog):
        sys.stdout = PrintToLog(logging.getLogger("stdout"))
