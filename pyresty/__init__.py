"""pyresty: the public API (SPEC.md). Everything else is internal."""
from __future__ import annotations

from pyresty.errors import (
    ConfigError,
    HandlerError,
    PipeError,
    PyrestyError,
    SharedDictError,
    SharedDictFull,
    SocketError,
    SocketTimeout,
    TimerError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "HandlerError",
    "PipeError",
    "PyrestyError",
    "SharedDictError",
    "SharedDictFull",
    "SocketError",
    "SocketTimeout",
    "TimerError",
]
