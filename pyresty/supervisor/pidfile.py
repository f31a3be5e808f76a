"""The pid file: written by the master at start, removed at exit, and found
from a config file without loading it (``locate``).

``locate`` finds the pid file ``pyresty -s`` needs without the config layer
(importing it was most of the command's time, issue 17): the master
validates the config itself. A config that sets no top-level ``pid`` (no
line can start with the key) has the default and is not even parsed; one
that does is read with ``tomllib``. The default and the resolution against
the prefix are the config loader's; a unit test keeps them equal
(tests/unit/test_pidfile.py). Anything it is unsure of (no file, bad TOML, a
``pid`` that is no string) is None: the caller loads the config the full way,
which reports the problem.
"""
from __future__ import annotations

import os
import re

DEFAULT_PID = "logs/pyresty.pid"     # config.model.Config.pid
# a line that may set a top-level pid (bare or quoted key); tables' keys match too,
# which only costs the parse
_PID_LINE = re.compile(rb"""^[ \t]*["']?pid["']?[ \t]*=""", re.MULTILINE)


def control_socket_for(pid: str) -> str:
    """config.model.Config.control_socket, from the same pid path."""
    return pid.rsplit(".", 1)[0] + ".sock" if pid.endswith(".pid") else pid + ".sock"


def locate(config_path: str, prefix: str | None) -> str | None:
    """The pid file of the config at ``config_path`` (relative paths against
    ``prefix``, default its folder), absolute, or None when unsure."""
    try:
        with open(config_path, "rb") as f:
            text = f.read()
    except OSError:
        return None
    pid: object = DEFAULT_PID
    if _PID_LINE.search(text):
        import tomllib
        try:
            pid = tomllib.loads(text.decode()).get("pid") or DEFAULT_PID
        except (UnicodeDecodeError, ValueError):
            return None
    if not isinstance(pid, str):
        return None
    base = os.path.abspath(prefix if prefix is not None
                           else os.path.dirname(os.path.abspath(config_path)))
    return os.path.normpath(os.path.join(base, pid))


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
