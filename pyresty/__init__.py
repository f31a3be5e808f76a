"""pyresty: the public API (SPEC.md). Everything else is internal.

    pyresty.Request                       the object every phase handler receives
    pyresty.worker / pyresty.process      who this process is; signal the master
    pyresty.timer                         at / every / cancel, premature on exit
    pyresty.shared                        dictionaries shared by every process
    pyresty.pipe / pyresty.shell          non-blocking child processes
    pyresty.<Name>Error                   what the API raises (see pyresty.errors)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"  # before the imports below: pyresty.http reads it

from pyresty import purepython  # noqa: E402

purepython.install()   # before any compiled module is imported

from pyresty.errors import (  # noqa: E402
    ClientBodyTimeout,
    ConfigError,
    Exit,
    HandlerError,
    PipeError,
    PyrestyError,
    ResponseStarted,
    SharedDictError,
    SharedDictFull,
    SocketError,
    SocketTimeout,
    TimerError,
)
from pyresty.runtime import pipe, process, shell, timer, worker
from pyresty.server.request import Request

__all__ = [
    "ClientBodyTimeout",
    "ConfigError",
    "Exit",
    "HandlerError",
    "PipeError",
    "PyrestyError",
    "Request",
    "ResponseStarted",
    "SharedDictError",
    "SharedDictFull",
    "SocketError",
    "SocketTimeout",
    "TimerError",
    "pipe",
    "process",
    "shared",
    "shell",
    "timer",
    "worker",
]


def __getattr__(name: str) -> Any:
    # ``pyresty.shared`` pulls in lmdb and redis: import it on first use only.
    if name == "shared":
        from pyresty.runtime.shared import shared
        return shared
    raise AttributeError(f"module 'pyresty' has no attribute {name!r}")
