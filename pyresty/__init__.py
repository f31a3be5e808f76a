"""pyresty: the public API (SPEC.md). Everything else is internal.

    pyresty.Request                       the object every phase handler receives
    pyresty.worker / pyresty.process      who this process is; signal the master
    pyresty.timer                         at / every / cancel, premature on exit
    pyresty.shared                        dictionaries shared by every process
    pyresty.limit                         request rate, quota and concurrency limits
    pyresty.pipe / pyresty.shell          non-blocking child processes
    pyresty.socket                        TCP cosockets with keepalive pools
    pyresty.websocket                     accept a WebSocket in a handler
    pyresty.<Name>Error                   what the API raises (see pyresty.errors)

Lazy: ``import pyresty`` loads nothing else; each name is imported on first
use (PEP 562), so the master, the command line and ``-t`` load only what they
use, and importing the package cannot close an import cycle.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyresty import purepython
from pyresty._version import __version__

purepython.install()   # before any compiled module is imported

# name -> (module, attribute in it; None for the module itself)
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "ClientBodyTimeout": ("pyresty.errors", "ClientBodyTimeout"),
    "ConfigError": ("pyresty.errors", "ConfigError"),
    "Exit": ("pyresty.errors", "Exit"),
    "HandlerError": ("pyresty.errors", "HandlerError"),
    "PipeError": ("pyresty.errors", "PipeError"),
    "PyrestyError": ("pyresty.errors", "PyrestyError"),
    "ResponseStarted": ("pyresty.errors", "ResponseStarted"),
    "SharedDictError": ("pyresty.errors", "SharedDictError"),
    "SharedDictFull": ("pyresty.errors", "SharedDictFull"),
    "SocketError": ("pyresty.errors", "SocketError"),
    "SocketTimeout": ("pyresty.errors", "SocketTimeout"),
    "TimerError": ("pyresty.errors", "TimerError"),
    "WebSocketClosed": ("pyresty.errors", "WebSocketClosed"),
    "Request": ("pyresty.server.request", "Request"),
    "limit": ("pyresty.runtime.limit", None),          # stands on the shared dicts: lazy too
    "pipe": ("pyresty.runtime.pipe", None),
    "process": ("pyresty.runtime.process", None),
    "shared": ("pyresty.runtime.shared", "shared"),   # lmdb and redis: only when used
    "shell": ("pyresty.runtime.shell", None),
    "socket": ("pyresty.runtime.cosocket", None),      # TCP cosockets (SPEC §8)
    "timer": ("pyresty.runtime.timer", None),
    "websocket": ("pyresty.server.websocket", None),
    "worker": ("pyresty.runtime.worker", None),
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from pyresty.errors import (
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
        WebSocketClosed,
    )
    from pyresty.runtime import cosocket as socket
    from pyresty.runtime import limit, pipe, process, shell, timer, worker
    from pyresty.runtime.shared import shared
    from pyresty.server import websocket
    from pyresty.server.request import Request


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'pyresty' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value      # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
