"""The pid file: written by the master at start, removed at exit."""
from __future__ import annotations

import os


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
