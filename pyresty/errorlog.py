"""The error log: nginx's line format on top of the stdlib ``logging`` module.

Every module logs through ``logging.getLogger("pyresty...")``; ``configure``
installs one handler per process that writes

    2026/11/22 12:00:00 [warn] 1234#0: message

(level, pid, worker id -- the id is ``-`` in the master and the agent).
Levels are nginx's: debug, info, notice, warn, error, crit, alert, emerg.
A traceback, when there is one, follows on the next lines.
"""
from __future__ import annotations

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

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


_formatter = NginxFormatter()
_handler: logging.Handler | None = None


def configure(path: str | None, level: str = "info") -> None:
    """Send the log to ``path`` (stderr when None or "stderr") at ``level``."""
    global _handler
    if _handler is not None:
        log.removeHandler(_handler)
        _handler.close()
    if path in (None, "stderr"):
        _handler = logging.StreamHandler(sys.stderr)
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _handler = _ReopenableFileHandler(path, encoding="utf-8", delay=False)
    _handler.setFormatter(_formatter)
    log.addHandler(_handler)
    log.setLevel(LEVELS[level])
    log.propagate = False


def set_worker_tag(tag: object) -> None:
    """Show ``tag`` (the worker id) after the pid on every line."""
    NginxFormatter.worker_tag = "-" if tag is None else str(tag)


def reopen() -> None:
    """Reopen the log file (USR1)."""
    if isinstance(_handler, _ReopenableFileHandler):
        _handler.reopen()
