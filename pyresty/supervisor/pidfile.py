"""The pid file: written by the master at start, removed at exit, and found
from a config file without loading it (``locate``).

``locate`` reads the few top-level keys ``pyresty -s`` needs with ``tomllib``
alone, so that the command does not import the config layer (most of its
time, issue 17): the master validates the config itself. The defaults and
the resolution against the prefix are the config loader's; a unit test keeps
them equal (tests/unit/test_pidfile.py). Anything it is unsure of (no file,
bad TOML, a key of the wrong type) is None: the caller loads the config the
full way, which reports the problem.
"""
from __future__ import annotations

import os

DEFAULT_PID = "logs/pyresty.pid"     # config.model.Config.pid


class Located:
    """Where a config's master is, as ``pyresty -s`` needs it (a plain class:
    ``dataclasses`` alone costs the command ~10 ms of imports)."""

    __slots__ = ("pid", "workers")

    def __init__(self, pid: str, workers: object) -> None:
        self.pid = pid               # the pid file, absolute
        self.workers = workers       # ``workers`` as written (0: single process)

    @property
    def control_socket(self) -> str:
        """config.model.Config.control_socket, from the same pid path."""
        return control_socket_for(self.pid)


def control_socket_for(pid: str) -> str:
    return pid.rsplit(".", 1)[0] + ".sock" if pid.endswith(".pid") else pid + ".sock"


def locate(config_path: str, prefix: str | None) -> Located | None:
    """The pid file and ``workers`` of the config at ``config_path`` (relative
    paths against ``prefix``, default its folder), or None when unsure."""
    import tomllib
    try:
        with open(config_path, "rb") as f:
            document = tomllib.load(f)
    except (OSError, ValueError):
        return None
    pid = document.get("pid") or DEFAULT_PID
    if not isinstance(pid, str):
        return None
    base = os.path.abspath(prefix if prefix is not None
                           else os.path.dirname(os.path.abspath(config_path)))
    return Located(os.path.normpath(os.path.join(base, pid)), document.get("workers", 1))


def write_pid(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def read_pid(path: str) -> int | None:
    """The pid in ``path`` if that process is alive, else None."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


MASTER_TITLES = ("pyresty: master process", "pyresty: single process")


def process_title(pid: int) -> str | None:
    """``pid``'s title (its command line, NULs included), "" if unreadable, None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except OSError:
        return ""


def running_master(path: str) -> int | None:
    """The pid of another live pyresty master (or single process) that owns
    ``path``, else None. A pid file left by a killed server whose pid was
    reused by some other program does not count (its title is not ours)."""
    pid = read_pid(path)
    if pid is None or pid == os.getpid():
        return None
    title = process_title(pid)
    if title is None:
        return None
    return pid if title == "" or title.startswith("pyresty: ") else None


def remove_pid(path: str) -> None:
    try:
        if read_pid(path) == os.getpid():
            os.unlink(path)
    except OSError:
        pass
