"""Run a real ``pyresty`` in a temporary prefix and talk to it over real sockets.

Readiness is a condition (a log line, a port that answers), never a sleep;
every wait has a deadline. ``stop()`` checks that no process of the server
survived and that the error log has no ``[alert]``/``[crit]``/``[emerg]``
line the test did not declare (nginx-tests does the same after every test).
"""
from __future__ import annotations

import os
import re
import signal as signals
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import client

PYRESTY = [sys.executable, "-m", "pyresty.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all bound at once while they are chosen
    (one at a time, the kernel may hand out the same port twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (the server runs in its own session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry))
    return pids


def proc_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


class Pyresty:
    """One pyresty server under test."""

    def __init__(self, prefix: Path, config: str, files: dict[str, str] | None = None,
                 expect_log: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.ports = free_ports(3)
        self.port = self.ports[0]
        self.files = files or {}
        self.config_text = config
        self.expect_log = expect_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = prefix / "pyresty.toml"
        self.write_config(config)
        for name, text in self.files.items():
            path = prefix / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def write_config(self, config: str) -> None:
        text = textwrap.dedent(config).format(port=self.port, port2=self.ports[1],
                                              port3=self.ports[2], prefix=self.prefix)
        self.config_path.write_text(text)

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def log_text(self) -> str:
        try:
            return self.error_log.read_text()
        except FileNotFoundError:
            return ""

    def start(self, ready: str = r"\[notice\] .*ready", timeout: float = 15.0,
              args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Pyresty:
        since = len(self.log_text())
        self.proc = subprocess.Popen(
            [*PYRESTY, "-c", str(self.config_path), *args], cwd=self.prefix,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None)
        self.wait_log(ready, timeout=timeout, since=since)
        return self

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1, since: int = 0) -> str:
        """Wait until ``pattern`` occurs ``count`` times in the error log (from offset ``since``)."""
        regex = re.compile(pattern)

        def found() -> str | None:
            # exit status first, the log after it: a line written just before
            # the process exited is still found (a shutdown's last words)
            exited = self.proc is not None and self.proc.poll() is not None
            matches = regex.findall(self.log_text()[since:])
            if len(matches) >= count:
                return matches[-1]
            if exited:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise AssertionError(f"pyresty exited with {self.proc.returncode} waiting for "
                                     f"{pattern!r}\n{out}\n{self.log_text()}")
            return None

        return wait_for(found, timeout, f"log line {pattern!r}")

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PYRESTY, *args, "-c", str(self.config_path)], cwd=self.prefix,
                              capture_output=True, text=True, timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def processes(self) -> list[int]:
        return session_pids(self.pid)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = 15, timeout: float = 15.0) -> int:
        """Stop the server and check it left nothing behind."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signals.SIGKILL)
            self.proc.wait(5)
            raise AssertionError("pyresty did not exit in time")
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
        wait_for(lambda: not session_pids(self.pid), 5, "every server process to exit")
        bad = [line for line in self.log_text().splitlines()
               if re.search(r"\[(alert|crit|emerg)\]", line)
               and not any(re.search(p, line) for p in self.expect_log)]
        assert not bad, "unexpected error-log lines:\n" + "\n".join(bad)
        return code


def http_get(port: int, path: str = "/", headers: dict[str, str] | None = None,
             timeout: float = 10.0, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: (status, lowercased headers, body).
    ``client.request`` gives the whole ``Response`` (repeated fields, raw bytes)."""
    # a POST without a body says Content-Length: 0, as http.client (used here before) did
    body = b"" if method in ("POST", "PUT", "PATCH") else None
    resp = client.request(port, method, path, headers=headers, body=body, timeout=timeout)
    return resp.status, resp.headers.lowered(), resp.body


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, until_close: bool = True) -> bytes:
    """Send raw bytes and read until the server closes (or ``timeout``)."""
    return client.exchange(port, data, timeout=timeout, until_close=until_close)
