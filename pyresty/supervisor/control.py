"""The control socket and the status listener, both sides.

Control socket: a unix stream socket beside the pid file, mode 0600 (only the
user who runs the server may drain it or read its figures). One JSON request
line, one JSON reply line: ``{"command": "status" | "drain" | "resume" | "reload"}``
(``status`` answers every process and every upstream peer with its health;
``reload`` is HUP with an answer: started, queued, or refused and why; with
``"check": true`` the master first runs the ``-t`` checks, the handler imports
in a child it forks, and answers once they are done: ``pyresty -s reload``).

Status listener (``[status] listen``): ``GET /status`` (JSON, every process;
503 while the server drains, so a readiness probe fails) and ``GET /metrics``
(Prometheus text), upstream peers' health included. Both answer from figures
the processes report every ``STATS_INTERVAL``.

The answers are built by ``control_reply`` and ``status_reply`` from any
``Supervised`` (the master, or the single process of ``workers = 0``); this
module never imports either. The master serves them from its selector loop
(``ControlServer``, ``StatusServer``) and never blocks on a client for longer
than ``IO_TIMEOUT``; a checked reload's client waits on its own connection,
answered when the check ends (``Reloadable.check_reload``).

The client side (``ask``, ``verify_master``) imports neither the config nor
the process table: ``pyresty -s reload`` starts an interpreter, finds the
master from the pid file and asks it, and that is all (issue 17: the command
spent most of its time importing the config layer).

The one exception to "HTTP/1.1 framing lives in ``http/``" (tests/unit/
test_framing.py): the status listener reads a request head up to
``HEAD_END`` and writes its answer's head itself, because the supervisor
imports neither ``http/`` nor ``server/`` (tests/unit/test_layers.py). Its
answers are the simplest HTTP/1.1 there is: one request per connection, a
``Content-Length`` and ``Connection: close``.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pyresty.supervisor.exitcodes import EXIT_FAILURE, EXIT_OK
from pyresty.supervisor.pidfile import MASTER_TITLES, process_title

if TYPE_CHECKING:
    from pyresty.config.model import Config, Listen
    from pyresty.supervisor.table import PeerRow, Row

IO_TIMEOUT = 0.5
MAX_HEAD = 8192          # a status request's head; anything longer is not a probe
HEAD_END = b"\r\n\r\n"    # where a request head ends (RFC 9112 §2.1; bare LFs are not served)


class Supervised(Protocol):
    """What the control socket and the status listener need of a server."""

    draining: bool

    def rows(self) -> list[Row]:
        """Every process, for ``status``."""

    def drain(self) -> None:
        """Stop keepalive everywhere (``pyresty drain``)."""

    def resume(self) -> None:
        """End a drain (``pyresty drain --cancel``)."""

    def request_reload(self) -> tuple[str, str]:
        """Reload now: ("started" | "queued" | "refused", why)."""


class Reloadable(Supervised, Protocol):
    """A server that checks a reload before it starts it (the master)."""

    def check_reload(self, answer: Callable[[dict[str, Any]], None]) -> None:
        """The ``-t`` checks, then the reload; ``answer`` gets the reply, later."""


def _request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


def control_reply(server: Supervised, request: bytes) -> bytes:
    """The reply line to one control request line."""
    from pyresty.supervisor.table import peer_rows
    command = _request(request).get("command")
    if command == "status":
        rows = server.rows()
        reply: dict[str, Any] = {"draining": server.draining,
                                 "processes": [row.to_json() for row in rows],
                                 "upstreams": [peer.to_json() for peer in peer_rows(rows)]}
    elif command == "drain":
        server.drain()
        reply = {"draining": True}
    elif command == "resume":
        server.resume()
        reply = {"draining": False}
    elif command == "reload":
        outcome, reason = server.request_reload()
        reply = {"reload": outcome, "reason": reason}
    else:
        reply = {"error": f"unknown command {command!r}"}
    return json.dumps(reply).encode() + b"\n"


def status_reply(server: Supervised, head: bytes) -> bytes:
    """The whole HTTP/1.1 answer to one request head on the status listener."""
    from pyresty.supervisor.table import peer_rows
    line = head.split(b"\r\n", 1)[0].split()
    path = line[1].decode("latin-1") if len(line) > 1 else ""
    if path == "/status":
        state = "draining" if server.draining else "serving"
        rows = server.rows()
        body = json.dumps({"state": state, "processes": [row.to_json() for row in rows],
                           "upstreams": [peer.to_json() for peer in peer_rows(rows)]},
                          indent=1).encode()
        # a readiness probe must fail while draining, so new traffic goes elsewhere
        status = "503 Service Unavailable" if server.draining else "200 OK"
        ctype = "application/json"
    elif path == "/metrics":
        from pyresty.supervisor.metrics import render
        body = render(server.rows(), server.draining)
        status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
    else:
        body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
    # RFC 9110 §6.6.1: an origin server with a clock sends Date
    from email.utils import formatdate   # here: the -s commands import this module too
    return (f"HTTP/1.1 {status}\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


class _Listener:
    """A listening socket polled by a selector; each client is served in one go."""

    def __init__(self, server: Supervised, selector: selectors.BaseSelector,
                 sock: socket.socket) -> None:
        self.server = server
        self.selector = selector
        self.sock = sock
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            # IO_TIMEOUT bounds the whole exchange, not each recv: a client
            # trickling one byte at a time must not pin the master's loop
            # (no reaping, respawning, signals or SIGKILL deadlines meanwhile)
            deadline = time.monotonic() + IO_TIMEOUT
            try:
                self.serve(conn, deadline)
            except OSError:
                pass

    def serve(self, conn: socket.socket, deadline: float) -> None:
        raise NotImplementedError

    def close_in_child(self) -> None:
        self.sock.close()

    def close(self) -> None:
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


class ControlServer(_Listener):
    def __init__(self, server: Reloadable, selector: selectors.BaseSelector, path: str) -> None:
        self.path = path
        self.reloadable = server
        super().__init__(server, selector, bind_control_socket(path))

    def serve(self, conn: socket.socket, deadline: float) -> None:
        line = _read_line(conn, deadline)
        request = _request(line)
        if request.get("command") == "reload" and request.get("check"):
            # answered when the check ends: the connection is the client's to wait on
            waiting = socket.socket(fileno=conn.detach())
            self.reloadable.check_reload(lambda reply: _answer(waiting, reply))
            return
        reply = control_reply(self.server, line)
        _settimeout(conn, deadline)
        conn.sendall(reply)

    def close(self) -> None:
        super().close()
        remove_control_socket(self.path)


def _answer(conn: socket.socket, reply: dict[str, Any]) -> None:
    """Send a deferred reply and close; a client that left is no error."""
    with conn:
        try:
            conn.settimeout(IO_TIMEOUT)
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass


class StatusServer(_Listener):
    def __init__(self, server: Supervised, selector: selectors.BaseSelector, listen: Listen) -> None:
        from pyresty.supervisor.listeners import bind
        sock = bind(listen, " (the status listener)")
        sock.set_inheritable(False)
        super().__init__(server, selector, sock)

    def serve(self, conn: socket.socket, deadline: float) -> None:
        head = _read_until(conn, HEAD_END, MAX_HEAD, deadline)
        if HEAD_END not in head:
            return
        _settimeout(conn, deadline)
        conn.sendall(status_reply(self.server, head))


def bind_control_socket(path: str) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 (raises OSError)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def remove_control_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _settimeout(conn: socket.socket, deadline: float | None) -> None:
    """Give the next blocking call only what is left until ``deadline``."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the client is too slow")
    conn.settimeout(left)


def _read_until(conn: socket.socket, delimiter: bytes, limit: int,
                deadline: float | None) -> bytes:
    """Bytes until ``delimiter`` (or EOF, or ``limit`` bytes), by ``deadline``."""
    data = b""
    while delimiter not in data and len(data) < limit:
        _settimeout(conn, deadline)
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _read_line(conn: socket.socket, deadline: float | None = None) -> bytes:
    return _read_until(conn, b"\n", 65536, deadline).split(b"\n", 1)[0]


# the CLI side
def ask(control_socket: str, command: str, timeout: float = 5.0,
        **fields: Any) -> dict[str, Any]:
    """Send one command to the running server at ``control_socket``; raises
    OSError when there is none (or it does not answer within ``timeout``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(control_socket)
        sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
        return json.loads(_read_line(sock))


def verify_master(control_socket: str, pid: int) -> str | None:
    """Why ``pid`` is not the pyresty master (or single process) that answers on
    ``control_socket`` (this prefix's), or None when it is: its title is a
    master's, and it answers there with that pid."""
    title = process_title(pid)
    if title is None:
        return "no such process"
    if not title.startswith(MASTER_TITLES):
        shown = title.replace("\0", " ").strip()[:60]
        return f"it is not a pyresty master (it runs {shown!r})"
    try:
        answered = ask(control_socket, "status")["processes"][0]["pid"]
    except (OSError, ValueError, LookupError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"it does not answer on {control_socket} ({reason})"
    if answered != pid:
        return f"the master at {control_socket} is pid {answered}"
    return None


def _no_master(config: Config, exc: OSError) -> int:
    hint = " (without -c, pyresty looks for the built-in welcome server; give -c FILE)" \
        if config.path == "<builtin>" else ""
    print(f"pyresty: no running master at {config.control_socket}: {exc.strerror or exc}{hint}",
          file=sys.stderr)
    return EXIT_FAILURE


COLUMNS = [("role", 6), ("id", 3), ("pid", 8), ("gen", 4), ("state", 24), ("conns", 6),
           ("ws", 5), ("h1/h2", 8), ("requests", 9), ("timers", 10), ("rss", 8), ("stall", 6)]


def format_table(rows: list[Row]) -> str:
    """The process table ``pyresty status`` prints."""
    lines = [" ".join(name.upper().ljust(width) for name, width in COLUMNS).rstrip()]
    for row in rows:
        serves = row.connections is not None
        cells = [row.role, "-" if row.id is None else row.id, row.pid, row.generation, row.state,
                 row.connections if serves else "-", row.websockets or 0 if serves else "-",
                 f"{row.protocols.get('http/1.1', 0)}/{row.protocols.get('h2', 0)}" if serves else "-",
                 row.requests if serves else "-",
                 f"{row.timers_pending}/{row.timers_running}" if serves else "-",
                 f"{row.rss / 1048576:.1f}M", _stall(row)]
        lines.append(" ".join(str(c).ljust(w) for c, (_, w) in zip(cells, COLUMNS)).rstrip())
    return "\n".join(lines)


PEER_COLUMNS = [("upstream", 16), ("peer", 24), ("health", 10), ("failed checks", 14),
                ("passive down", 13), ("active", 6)]


def format_peers(peers: list[PeerRow]) -> str:
    """Upstream peers and their health, below the process table."""
    lines = [" ".join(name.upper().ljust(width) for name, width in PEER_COLUMNS).rstrip()]
    for peer in peers:
        health = "up" if peer.healthy else f"down {peer.unhealthy}/{peer.workers}"
        cells = [peer.upstream, peer.peer, health, peer.check_fails,
                 f"{peer.down}/{peer.workers}", peer.active]
        lines.append(" ".join(str(c).ljust(w) for c, (_, w) in zip(cells, PEER_COLUMNS)).rstrip())
    return "\n".join(lines)


def _stall(row: Row) -> str:
    """The longest recent event-loop stall (runtime/watchdog.py), or "-"."""
    longest = row.counters.get("loop_stall_longest_recent")
    return f"{longest:.1f}s" if longest else "-"


def print_status(config: Config) -> int:
    from pyresty.supervisor.table import PeerRow, Row
    try:
        reply = ask(config.control_socket, "status")
    except OSError as exc:
        return _no_master(config, exc)
    print(format_table([Row.from_json(p) for p in reply["processes"]]))
    peers = [PeerRow.from_json(p) for p in reply.get("upstreams", [])]
    if peers:
        print()
        print(format_peers(peers))
    return EXIT_OK


def drain(config: Config, timeout: float) -> int:
    """preStop: stop keepalive everywhere, close WebSockets with 1001, then wait
    until no connection is left."""
    from pyresty.supervisor.table import Row
    deadline = time.monotonic() + timeout
    try:
        ask(config.control_socket, "drain")
    except OSError as exc:
        return _no_master(config, exc)
    zero_seen = False
    while True:
        try:
            rows = [Row.from_json(p) for p in ask(config.control_socket, "status")["processes"]]
        except OSError:
            print("active connections: 0 (the master is gone)")
            return EXIT_OK
        active = sum(row.connections or 0 for row in rows)
        websockets = sum(row.websockets or 0 for row in rows)
        print(f"active connections: {active}" + (f" (websockets: {websockets})" if websockets else ""),
              flush=True)
        if active == 0 and zero_seen:
            return EXIT_OK
        # workers report every 0.5 s: a zero counts once a second report confirms it
        zero_seen = active == 0
        if time.monotonic() > deadline:
            print(f"pyresty: drain timed out with {active} connections left", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(0.5)  # the workers report every 0.5 s: polling faster shows nothing new


def cancel_drain(config: Config) -> int:
    """``drain --cancel``: keepalive back on, ``/status`` 200 again."""
    try:
        ask(config.control_socket, "resume")
    except OSError as exc:
        return _no_master(config, exc)
    print("pyresty: drain cancelled; serving with keepalive")
    return EXIT_OK
