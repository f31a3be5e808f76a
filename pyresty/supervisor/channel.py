"""The messages between the master and each child, both directions, and their wire form.

    child -> master   Ready        booted; serving (the master promotes a generation when all are)
                      SpareReady   a spare loaded its code and waits to be promoted (worker_spare)
                      BootFailed   cannot boot, with the reason (then exit WORKER_BOOT_ERROR)
                      Stats        the child's figures, every STATS_INTERVAL and at state changes
    master -> child   Promote      a spare becomes worker ``worker_id`` (one that died)
                      Drain        stop keepalive, close idle connections (``pyresty drain``)
                      Resume       end a drain: keepalive is back (reload, ``drain --cancel``)

The channel is the socketpair the master creates for each child at fork. On
it, a message is one line of JSON, ``{"event": "<name>", ...fields}``; this
module is the only place that encodes or decodes one.

Rules:
- A line that is not a message this version knows is skipped, never fatal:
  the master must outlive a confused child, and a child a confused master.
- Figures are plain numbers keyed by name. ``Stats.server`` holds whatever
  the HTTP layer counts (connections, requests, ...), so the supervisor need
  not know the HTTP layer to carry them.
- Messages are small (a Stats line is a few hundred bytes): a reader buffers
  at most ``MAX_LINE`` bytes of an unfinished line, then drops it.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Union

MAX_LINE: Final = 1 << 20   # a line this long is garbage, not a message


@dataclass(frozen=True, slots=True)
class Ready:
    """The child booted and serves."""


@dataclass(frozen=True, slots=True)
class SpareReady:
    """The spare imported its code; it runs nothing until it is promoted."""


@dataclass(frozen=True, slots=True)
class Promote:
    """Become worker ``worker_id``: run init_worker, start timers, listen, report Ready."""

    worker_id: int

    def __post_init__(self) -> None:
        if type(self.worker_id) is not int or self.worker_id < 0:
            raise TypeError("worker_id must be an integer >= 0")   # decode skips the line


@dataclass(frozen=True, slots=True)
class BootFailed:
    """The child cannot boot; it exits with ``WORKER_BOOT_ERROR`` next."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stats:
    """A child's figures for ``pyresty status``, ``/status`` and ``/metrics``."""

    state: str = "starting"                      # starting | serving | shutting down | exited
    timers_pending: int = 0
    timers_running: int = 0
    server: Mapping[str, Any] = field(default_factory=dict)     # the HTTP server's counters
    shared: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # per shared dict
    limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # per limit zone: result -> n
    # upstream -> peer address -> figure -> n (upstream/balancer.py peer_stats)
    peers: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)
    upstreams: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # "pool peer" -> counter -> n
    shutdown_for: float | None = None            # seconds since its shutdown began
    counters: Mapping[str, float] = field(default_factory=dict)  # process faults (table.COUNTERS)


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop keepalive and close idle connections; keep serving."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Keepalive is back: the drain is over."""


Message = Union[Ready, SpareReady, Promote, BootFailed, Stats, Drain, Resume]

_EVENTS: Final[dict[type, str]] = {
    Ready: "ready", SpareReady: "spare_ready", Promote: "promote", BootFailed: "boot_error",
    Stats: "stats", Drain: "drain", Resume: "resume",
}
_TYPES: Final[dict[str, type]] = {name: kind for kind, name in _EVENTS.items()}


def encode(message: Message) -> bytes:
    """One line of JSON, newline included."""
    return json.dumps({"event": _EVENTS[type(message)], **asdict(message)},
                      separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message | None:
    """The message on ``line`` (without its newline), or None for anything else."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    kind = _TYPES.get(obj.get("event"))  # type: ignore[arg-type]
    if kind is None:
        return None
    known = {f.name for f in fields(kind)}
    try:
        message: Message = kind(**{k: v for k, v in obj.items() if k in known})
    except TypeError:
        return None
    return message


class LineReader:
    """Splits what arrives on a channel into messages."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Message]:
        """The complete messages in ``self``'s buffer plus ``data``."""
        *lines, rest = (self._buffer + data).split(b"\n")
        self._buffer = rest if len(rest) <= MAX_LINE else b""
        return [m for m in map(decode, lines) if m is not None]

