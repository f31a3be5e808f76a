"""The process table: what the master knows of every process, and the rows it shows.

A ``Child`` is the master's live record of one process it forked (its
channel, its state, its stop deadline, the last ``Stats`` it reported). A
``Row`` is a frozen snapshot of one process for ``pyresty status``,
``/status`` and ``/metrics``: role, id, pid, generation, state and figures.

Rules:
- Only the master writes a ``Child``; everything else reads ``Row``s.
- A row's state is one of ``State``'s values, except a process asked to stop,
  which shows ``shutting down for N s`` (SPEC §2), and a serving process while
  the server drains, which shows ``draining``.
- Figures a process has not reported yet are 0; the master's own row has none.
- A spare (``worker_spare``) is a row of role ``spare`` with no id, state
  ``starting`` while it loads and ``spare`` once it waits; it is counted as
  no worker anywhere (``/metrics`` shows only its RSS). Promoted, the same
  ``Child`` becomes the worker it replaces (``spare`` false, its id set).
"""
from __future__ import annotations

import enum
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyresty.runtime.identity import Role
from pyresty.supervisor.channel import LineReader, Stats


class State(enum.Enum):
    STARTING = "starting"
    SPARE = "spare"              # a spare that loaded its code and waits for Promote
    SERVING = "serving"
    DRAINING = "draining"
    SHUTTING_DOWN = "shutting down"


@dataclass(eq=False)
class Child:
    """The master's record of one worker or agent."""

    pid: int
    role: Role
    worker_id: int | None
    generation: int
    channel: socket.socket
    started: float
    shutdown_timeout: float      # its own generation's worker_shutdown_timeout
    state: State = State.STARTING
    stop_deadline: float | None = None
    stop_started: float | None = None
    stats: Stats = field(default_factory=Stats)
    boot_error: str | None = None   # why it could not boot, as it said (BootFailed)
    reader: LineReader = field(default_factory=LineReader)
    spare: bool = False          # not a worker yet: waits to replace one that dies
    promoted: float | None = None   # when it was promoted (monotonic), until it is serving
    boot_warned: bool = False    # the master said it is slow to boot (master.BOOT_WARN)
    killed: bool = False         # SIGKILLed past its stop deadline (counted once)

    @property
    def role_name(self) -> str:
        """``worker``, ``agent`` or ``spare``, as rows and metrics name it."""
        return "spare" if self.spare else "agent" if self.role is Role.AGENT else "worker"

    @property
    def label(self) -> str:
        if self.spare:
            return f"spare (pid {self.pid}, generation {self.generation})"
        if self.role is Role.AGENT:
            return f"privileged agent (pid {self.pid})"
        return f"worker #{self.worker_id} (pid {self.pid}, generation {self.generation})"


FIGURES = ("connections", "requests", "active_requests", "websockets", "timers_pending",
           "timers_running")
# Fault counters and gauges a process reports (``Stats.server`` and ``Stats.counters``),
# shown in /metrics (metrics.COUNTERS says how) and in /status under "counters".
COUNTERS = ("access_log_errors", "accept_errors", "worker_connections_full", "idle_closed_for_room",
            "loop_stalls", "loop_stall_longest_recent", "timers_refused", "timers_waited")


@dataclass(frozen=True, slots=True)
class Row:
    """One process as ``status`` shows it."""

    role: str                    # master | worker | agent | single | spare
    id: int | None
    pid: int
    generation: int
    state: str
    rss: int = 0
    connections: int | None = None       # None: not a process that serves (the master)
    requests: int | None = None
    active_requests: int | None = None
    websockets: int | None = None        # open WebSockets (counted in connections too)
    timers_pending: int | None = None
    timers_running: int | None = None
    shared: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)   # zone -> result -> n
    peers: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)  # health
    upstreams: Mapping[str, Mapping[str, int]] = field(default_factory=dict)   # "pool peer" -> counter -> n
    websocket: Mapping[str, int] = field(default_factory=dict)   # ws_* counters: /metrics only
    counters: Mapping[str, float] = field(default_factory=dict)   # COUNTERS -> value
    protocols: Mapping[str, int] = field(default_factory=dict)   # open connections: "http/1.1", "h2"
    tls: Mapping[str, int] = field(default_factory=dict)   # handshakes by version
    tls_failures: Mapping[str, int] = field(default_factory=dict)   # failed handshakes by reason
    h2_streams: int = 0                  # HTTP/2 streams opened
    h2_floods: int = 0                   # HTTP/2 connections closed with ENHANCE_YOUR_CALM
    exits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)   # master: role -> how -> n
    reloads: Mapping[str, int] = field(default_factory=dict)   # master: outcome -> n

    def to_json(self) -> dict[str, Any]:
        """The row as ``/status`` and the control socket send it (shared dicts: /metrics only)."""
        obj: dict[str, Any] = {"role": self.role, "id": self.id, "pid": self.pid,
                               "generation": self.generation, "state": self.state,
                               "rss": self.rss}
        for name in FIGURES:
            value = getattr(self, name)
            if value is not None:
                obj[name] = value
        if self.counters:
            obj["counters"] = dict(self.counters)
        if self.protocols:
            obj["protocols"] = dict(self.protocols)
        if self.exits:
            obj["exits"] = {role: dict(how) for role, how in self.exits.items()}
        if self.reloads:
            obj["reloads"] = dict(self.reloads)
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Row:
        return cls(role=obj["role"], id=obj["id"], pid=obj["pid"], generation=obj["generation"],
                   state=obj["state"], rss=obj.get("rss", 0), counters=obj.get("counters", {}),
                   protocols=obj.get("protocols", {}),
                   **{name: obj[name] for name in FIGURES if name in obj})


def serving_row(role: str, worker_id: int | None, pid: int, generation: int, state: str,
                stats: Stats) -> Row:
    """The row of a process that serves, from the figures it reported."""
    server = stats.server
    return Row(role=role, id=worker_id, pid=pid, generation=generation, state=state,
               rss=rss_of(pid), connections=server.get("connections", 0),
               requests=server.get("requests", 0),
               active_requests=server.get("active_requests", 0),
               websockets=server.get("websockets", 0),
               websocket={k: v for k, v in server.items() if k.startswith("ws_")},
               timers_pending=stats.timers_pending, timers_running=stats.timers_running,
               shared=stats.shared, limits=stats.limits, peers=stats.peers,
               upstreams=stats.upstreams,
               counters={name: value for name, value in {**server, **stats.counters}.items()
                         if name in COUNTERS},
               protocols=server.get("connections_by_protocol", {}),
               tls=server.get("tls_handshakes", {}),
               tls_failures=server.get("tls_handshake_failures", {}),
               h2_streams=server.get("h2_streams", 0), h2_floods=server.get("h2_floods", 0))


def child_rows(children: Iterable[Child], now: float, draining_generation: int | None) -> list[Row]:
    """The rows of ``children``, oldest generation first, by worker id."""
    rows = []
    for child in sorted(children, key=lambda c: (c.generation, c.worker_id or 0)):
        state = child.state.value
        if child.state is State.SHUTTING_DOWN and child.stop_started is not None:
            state = f"shutting down for {now - child.stop_started:.1f} s"
        elif child.state is State.SERVING and child.generation == draining_generation:
            state = State.DRAINING.value
        rows.append(serving_row(child.role_name,
                                child.worker_id, child.pid, child.generation, state, child.stats))
    return rows


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One upstream peer as ``status`` and ``/metrics`` show it, over the newest generation."""

    upstream: str
    peer: str
    workers: int                 # workers that reported it
    unhealthy: int               # of them, those whose active-check verdict says down
    check_fails: int             # consecutive failed checks (the most any worker has read)
    down: int                    # workers whose passive health (max_fails) keeps it out now
    active: int                  # requests in flight to it, summed
    disabled: int                # times passive health took it out, summed

    @property
    def healthy(self) -> bool:
        """No worker avoids it for a failed active check."""
        return self.unhealthy == 0

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {name: getattr(self, name) for name in PEER_FIELDS}
        obj["healthy"] = self.healthy
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PeerRow:
        return cls(**{name: obj[name] for name in PEER_FIELDS})


PEER_FIELDS = ("upstream", "peer", "workers", "unhealthy", "check_fails", "down", "active",
               "disabled")


def peer_rows(rows: Iterable[Row]) -> list[PeerRow]:
    """Every upstream peer the newest generation's workers report, in config order.

    Each worker's balancer has its own view: the active-check verdict (all
    read the same shared record, within one interval of each other) and its
    own passive health; the row counts the workers on each side.
    """
    reporting = [r for r in rows if r.peers and r.role in ("worker", "single")]
    if not reporting:
        return []
    newest = max(r.generation for r in reporting)
    found: dict[tuple[str, str], PeerRow] = {}
    for row in reporting:
        if row.generation != newest:
            continue
        for upstream, peers in row.peers.items():
            for addr, figures in peers.items():
                seen = found.get((upstream, addr)) or PeerRow(upstream, addr, 0, 0, 0, 0, 0, 0)
                found[(upstream, addr)] = PeerRow(
                    upstream=upstream, peer=addr, workers=seen.workers + 1,
                    unhealthy=seen.unhealthy + (0 if figures.get("healthy", 1) else 1),
                    check_fails=max(seen.check_fails, figures.get("check_fails", 0)),
                    down=seen.down + figures.get("down", 0),
                    active=seen.active + figures.get("active", 0),
                    disabled=seen.disabled + figures.get("disabled", 0))
    return list(found.values())


def rss_of(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
