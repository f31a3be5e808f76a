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


def running_master(path: str) -> int | None:
    """The pid of another live pyresty master (or single process) that owns
    ``path``, else None. A pid file left by a killed server whose pid was
    reused by some other program does not count (its title is not ours)."""
    pid = read_pid(path)
    if pid is None or pid == os.getpid():
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return pid
    return pid if title.startswith(b"pyresty: ") else None


def remove_pid(path: str) -> None:
    try:
        if read_pid(path) == os.getpid():
            os.unlink(path)
    except OSError:
        pass
