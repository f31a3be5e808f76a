"""The servers the benchmark runs side by side, each in its own temp prefix.

Rules:
- Every server starts in a new session (its own process group), so the
  benchmark can stop it and everything it forked with one signal; the
  registry ``RUNNING`` holds every process group still alive, and
  ``stop_all()`` (called from ``finally``/``atexit`` in run.py) ends them all:
  TERM first, SIGKILL after a deadline, then any descendant that escaped its
  group.
- Readiness is a condition: an HTTP GET that answers 200, polled until a
  deadline, stopping early (with the server's log tail) if the server died.
- CPU is read from /proc/<pid>/stat (utime + stime, in clock ticks) summed
  over the server's whole process tree: master and workers.

Theory of operation: a ``Server`` owns a temp directory and a command line;
a subclass writes its config (``write``) and, for the reload benchmark,
rewrites it with a new response body (``reconfigure``) before a HUP.
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0       # s a server may take to answer its first request
STOP_TIMEOUT = 10.0        # s between TERM and SIGKILL of a server's group
VENV_BIN = Path(sys.executable).parent

RUNNING: set[Process] = set()


# --- /proc ------------------------------------------------------------------

def read_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after ``comm``: [state, ppid, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may hold spaces or parentheses itself
    return raw[raw.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = read_stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of ``pids`` (every thread of each), in seconds."""
    user = system = 0
    for pid in pids:
        fields = read_stat(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (``Connection: close``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- processes --------------------------------------------------------------

class Process:
    """A child in its own process group, registered until stopped."""

    def __init__(self, argv: list[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                      start_new_session=True)
        self.pid = self.popen.pid
        RUNNING.add(self)

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        """``sig`` to the group, SIGKILL past ``timeout``, then strays."""
        tree = descendants(self.pid) if self.running() else []
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # the group may still hold workers of a master that exited; a child
        # that left the group (setsid) is found through the tree we recorded
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in tree:
            if pid != self.pid and alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.popen.wait()
        self._log_file.close()
        RUNNING.discard(self)


def stop_all() -> None:
    for process in list(RUNNING):
        process.stop(timeout=3.0)


# --- servers ----------------------------------------------------------------

class Server:
    """A server under test: config in a temp dir, started pinned to ``cpus``."""

    name = "server"
    path = "/hello"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name.split()[0]}-"))
        # pyresty workers may drop to another user: let them read the prefix
        self.dir.chmod(0o755)
        self.process: Process | None = None
        self.generation = 0

    # subclasses
    def write(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def reconfigure(self, generation: int) -> None:
        """Rewrite the config so that it answers ``gen <generation>``."""
        raise NotImplementedError

    def logs(self) -> list[Path]:
        return [self.dir / "stdout.log"]

    @property
    def body(self) -> bytes:
        return f"gen {self.generation}\n".encode()

    # lifecycle
    def start(self, cpus: str | None = None) -> None:
        self.write()
        argv = self.command()
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        self.process = Process(argv, self.dir / "stdout.log", cwd=self.dir)
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.process.running():
                raise RuntimeError(f"{self.name} exited with {self.process.popen.returncode} "
                                   f"before answering:\n{self.log_tail()}")
            try:
                status, _ = http_get(self.port, self.path, timeout=0.5)
                if status == 200:
                    return
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer 200 on :{self.port}{self.path} "
                           f"within {timeout:.0f} s (last: {last!r}):\n{self.log_tail()}")

    def pids(self) -> list[int]:
        assert self.process is not None
        return descendants(self.process.pid)

    def master_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def serving_workers(self) -> list[int]:
        """The master's children that are not shutting down."""
        return [pid for pid in self.pids()[1:]
                if alive(pid) and "shutting down" not in title(pid)]

    def hup(self) -> None:
        os.kill(self.master_pid(), signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for path in self.logs():
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


class Nginx(Server):
    """nginx with one ``location = /hello``: ``return 200`` or a Lua handler."""

    def __init__(self, workers: int = 1, lua_modules: list[str] | None = None) -> None:
        self.lua_modules = lua_modules
        self.name = "nginx lua" if lua_modules is not None else "nginx return 200"
        super().__init__(workers)

    def handler(self) -> str:
        if self.lua_modules is not None:
            return 'content_by_lua_block { ngx.say("hello") }'
        if self.generation:
            return f'return 200 "gen {self.generation}\\n";'
        return 'return 200 "hello\\n";'

    def write(self) -> None:
        d = self.dir
        modules = "".join(f"load_module {m};\n" for m in self.lua_modules or [])
        temp = "".join(f"    {kind}_temp_path {d}/temp/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (d / "temp").mkdir(exist_ok=True)
        (d / "nginx.conf").write_text(f"""{modules}
worker_processes {self.workers};
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    default_type text/plain;
{temp}
    server {{
        listen 127.0.0.1:{self.port};
        location = /hello {{ {self.handler()} }}
    }}
}}
""")

    def command(self) -> list[str]:
        return ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                "-g", "daemon off; master_process on;"]

    def reconfigure(self, generation: int) -> None:
        self.generation = generation
        self.write()

    def logs(self) -> list[Path]:
        return [self.dir / "stdout.log", self.dir / "error.log"]


class Uvicorn(Server):
    """uvicorn with a raw ASGI app (no framework), uvloop and httptools."""

    name = "uvicorn"

    def write(self) -> None:
        (self.dir / "app.py").write_text('''\
HEAD = {"type": "http.response.start", "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"6")]}
BODY = {"type": "http.response.body", "body": b"hello\\n"}


async def app(scope, receive, send):
    await send(HEAD)
    await send(BODY)
''')

    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(self.dir),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--lifespan", "off", "--log-level", "warning"]


class Pyresty(Server):
    """pyresty with one content handler; each reload points at a fresh module.

    A fresh module per generation (``gen_<n>.py``) rather than rewriting one
    file: two rewrites within the same second with the same size would leave
    a stale ``__pycache__`` entry that looks valid.
    """

    name = "pyresty"
    status_port = 0          # set to serve /status (per-worker request counts)

    def module(self) -> str:
        return f"gen_{self.generation}" if self.generation else "hello"

    def write(self) -> None:
        d = self.dir
        text = f"gen {self.generation}" if self.generation else "hello"
        (d / f"{self.module()}.py").write_text(
            f"async def hello(r):\n    await r.say({text!r})\n")
        status = f'[status]\nlisten = "127.0.0.1:{self.status_port}"\n' if self.status_port else ""
        (d / "pyresty.toml").write_text(f"""\
workers = {self.workers}
error_log = "logs/error.log"
pid = "logs/pyresty.pid"
{status}

[[server]]
listen = "127.0.0.1:{self.port}"
access_log = "off"
keepalive_requests = 10000000

[[server.location]]
path = "= /hello"
content = "{self.module()}:hello"
""")

    venv_bin = VENV_BIN      # another checkout's .venv/bin to compare builds (--baseline)

    def command(self) -> list[str]:
        exe = self.venv_bin / "pyresty"
        return [str(exe) if exe.exists() else "pyresty", "-c", str(self.dir / "pyresty.toml")]

    def reconfigure(self, generation: int) -> None:
        self.generation = generation
        self.write()

    def logs(self) -> list[Path]:
        return [self.dir / "stdout.log", self.dir / "logs" / "error.log"]
