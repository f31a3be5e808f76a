"""Every exception pyresty raises to user code.

    PyrestyError
    ├── ConfigError            invalid config file (carries every problem found)
    ├── TimerError             timer.at/every refused (process exiting, too many timers)
    ├── SharedDictError
    │   └── SharedDictFull     safe_set/safe_add without room, or a value larger than the dict
    ├── SocketError            cosocket connect/send/receive failure
    │   └── SocketTimeout      (also a TimeoutError)
    ├── PipeError              pipe.spawn / Proc operation failed
    ├── HandlerError           a handler string that cannot be loaded
    └── ResponseStarted        a header change or redirect after the response head was sent
                               (also a RuntimeError)

Lower-layer errors (OSError, lmdb.Error, redis errors) are re-raised as one of
these with ``raise ... from exc`` so callers catch one family.
"""
from __future__ import annotations


class PyrestyError(Exception):
    """Base class of every pyresty error."""


class ConfigError(PyrestyError):
    """A config file failed validation; ``problems`` holds one line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TimerError(PyrestyError):
    """A timer could not be created ("process exiting", "too many pending timers")."""


class SharedDictError(PyrestyError):
    """A shared dictionary operation failed."""


class SharedDictFull(SharedDictError):
    """No room without evicting (safe_set/safe_add), or a value larger than the dict."""


class SocketError(PyrestyError):
    """A cosocket operation failed."""


class SocketTimeout(SocketError, TimeoutError):
    """A cosocket operation ran past its timeout."""


class PipeError(PyrestyError):
    """A pipe operation failed."""


class HandlerError(PyrestyError):
    """A handler string ("module:function") cannot be resolved to a callable."""


class ResponseStarted(PyrestyError, RuntimeError):
    """A header change, ``exit`` or ``redirect`` after the response head was sent."""
