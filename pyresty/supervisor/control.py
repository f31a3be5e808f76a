"""The master's control socket and status listener, and the CLI side of both.

Control socket: a unix stream socket beside the pid file, mode 0600 (only the
user who runs the server may drain it or read its figures). One JSON request
line, one JSON reply line: ``{"command": "status"}`` or ``{"command": "drain"}``.

Status listener (``[status] listen``): ``GET /status`` (JSON, every process) and
``GET /metrics`` (Prometheus text). Both are served by the master from figures
the workers report every ``STATS_INTERVAL``; the master never blocks on them
for longer than ``IO_TIMEOUT``.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from pyresty.config.model import Config, Listen

if TYPE_CHECKING:
    from pyresty.supervisor.master import Master

IO_TIMEOUT = 0.5
EXIT_OK = 0
EXIT_FAILURE = 1


class _Listener:
    """A listening socket the master polls; each client is served in one go."""

    def __init__(self, master: Master, sock: socket.socket) -> None:
        self.master = master
        self.sock = sock
        sock.setblocking(False)
        master.selector.register(sock, selectors.EVENT_READ, self._accept)

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
            self.master.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


class ControlServer(_Listener):
    def __init__(self, master: Master, path: str) -> None:
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(16)
        super().__init__(master, sock)

    def serve(self, conn: socket.socket, deadline: float) -> None:
        request = _read_line(conn, deadline)
        try:
            command = json.loads(request).get("command")
        except ValueError:
            command = None
        if command == "status":
            reply: dict[str, Any] = {"processes": self.master.snapshot()}
        elif command == "drain":
            self.master.drain()
            reply = {"draining": True}
        else:
            reply = {"error": f"unknown command {command!r}"}
        _settimeout(conn, deadline)
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        super().close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class StatusServer(_Listener):
    def __init__(self, master: Master, listen: Listen) -> None:
        from pyresty.supervisor.listeners import bind
        sock = bind(listen)
        sock.set_inheritable(False)
        super().__init__(master, sock)

    def serve(self, conn: socket.socket, deadline: float) -> None:
        head = _read_until(conn, b"\r\n\r\n", 8192, deadline)
        if b"\r\n\r\n" not in head:
            return
        line = head.split(b"\r\n", 1)[0].split()
        path = line[1].decode("latin-1") if len(line) > 1 else ""
        if path == "/status":
            body = json.dumps({"processes": self.master.snapshot()}, indent=1).encode()
            status, ctype = "200 OK", "application/json"
        elif path == "/metrics":
            from pyresty.supervisor.metrics import render
            body = render(self.master)
            status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
        _settimeout(conn, deadline)
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)


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
def ask(config: Config, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to the running master; raises OSError when there is none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(config.control_socket)
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        return json.loads(_read_line(sock))


def _no_master(config: Config, exc: OSError) -> int:
    print(f"pyresty: no running master at {config.control_socket}: {exc.strerror or exc}",
          file=sys.stderr)
    return EXIT_FAILURE


COLUMNS = [("role", 6), ("id", 3), ("pid", 8), ("gen", 4), ("state", 24), ("conns", 6),
           ("requests", 9), ("timers", 10), ("rss", 8)]


def format_table(processes: list[dict[str, Any]]) -> str:
    lines = [" ".join(name.upper().ljust(width) for name, width in COLUMNS).rstrip()]
    for p in processes:
        cells = [p["role"], "-" if p["id"] is None else p["id"], p["pid"], p["generation"],
                 p["state"], p.get("connections", "-"), p.get("requests", "-"),
                 f'{p.get("timers_pending", "-")}/{p.get("timers_running", "-")}'
                 if p["role"] != "master" else "-",
                 f'{p["rss"] / 1048576:.1f}M']
        lines.append(" ".join(str(c).ljust(w) for c, (_, w) in zip(cells, COLUMNS)).rstrip())
    return "\n".join(lines)


def print_status(config: Config) -> int:
    try:
        reply = ask(config, "status")
    except OSError as exc:
        return _no_master(config, exc)
    print(format_table(reply["processes"]))
    return EXIT_OK


def drain(config: Config, timeout: float) -> int:
    """preStop: stop keepalive everywhere, then wait until no connection is left."""
    deadline = time.monotonic() + timeout
    try:
        ask(config, "drain")
    except OSError as exc:
        return _no_master(config, exc)
    zero_seen = False
    while True:
        try:
            processes = ask(config, "status")["processes"]
        except OSError:
            print("active connections: 0 (the master is gone)")
            return EXIT_OK
        active = sum(p.get("connections", 0) for p in processes if p["role"] == "worker")
        print(f"active connections: {active}", flush=True)
        if active == 0 and zero_seen:
            return EXIT_OK
        # workers report every 0.5 s: a zero counts once a second report confirms it
        zero_seen = active == 0
        if time.monotonic() > deadline:
            print(f"pyresty: drain timed out with {active} connections left", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(0.5)  # the workers report every 0.5 s: polling faster shows nothing new
