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
    ├── ResponseStarted        a header change or redirect after the response head was sent
    │                          (also a RuntimeError)
    ├── ClientBodyTimeout      the client sent its body slower than client_body_timeout
    │                          (also a TimeoutError; the request ends with 408)
    └── WebSocketClosed        receive/send on a closed WebSocket (``code``, ``reason``;
                               also a ConnectionError)

    Exit (a BaseException)     raised by ``Request.exit``/``redirect`` to end the request

``Exit`` is not an error and, like ``asyncio.CancelledError``, not an
``Exception``: ``try: ... except Exception:`` in a handler does not swallow
``r.exit(403)``, so the request ends where the handler asked it to
(OpenResty's ``ngx.exit`` inside ``pcall`` behaves the same way).

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


class ClientBodyTimeout(PyrestyError, TimeoutError):
    """The client sent its request body slower than ``client_body_timeout``."""


class WebSocketClosed(PyrestyError, ConnectionError):
    """The WebSocket is closed: ``code`` and ``reason`` say why (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = int(code)
        self.reason = reason
        super().__init__(f"WebSocket closed with {self.code}" + (f": {reason}" if reason else ""))


class Exit(BaseException):
    """Ends the current request with ``status`` (raised by ``Request.exit`` and ``redirect``).

    Derives from BaseException so that ``except Exception`` in user code does
    not swallow it. Code that must clean up uses ``finally`` or ``async with``.
    """

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
