"""Every child process of this process, whoever started it (SPEC §4 step 5).

Rules
-----
1. ``pyresty.pipe`` children are that module's business (their own process
   groups, killed at the deadline and reaped by it). User code starts
   children other ways too: asyncio's subprocesses, ``subprocess.Popen``,
   multiprocessing, a library's helper, a sidecar started in ``init_worker``.
   Nothing else ends those: a worker that exits leaves them to init, and
   every reload would add more (seed 000's 212 workers stuck "is shutting
   down", as 212 stray children instead).
2. At the close stage (after step 5 cancelled the tasks that waited on them,
   and after ``exit_worker``, which may stop a sidecar its own way), every
   direct child still alive that is not a pipe child gets SIGKILL (its whole
   process group when it leads one of its own, as a pipe child would), and
   one warning names them, pid and command line. A shutdown whose children
   have all ended says nothing.
3. Only direct children: found by their parent pid in ``/proc``. A grandchild
   that a child daemonised is beyond reach (as with nginx).
4. Nothing is reaped here: the event loop reaps asyncio's children, and those
   nobody waits for are reaped by init once this process exits.

``register()`` adds the step to the process's lifecycle registry; the worker
calls it at boot.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from pyresty.runtime import lifecycle

__all__ = ["kill_remaining", "live_children", "register"]

log = logging.getLogger("pyresty.process")


def register() -> None:
    """Kill this process's remaining children at the close stage (rule 2)."""
    lifecycle.register("child processes", lifecycle.Layer.CHILDREN, close=kill_remaining)


def live_children(parent: int | None = None) -> list[int]:
    """Pids of the live (not zombie) direct children of ``parent`` (default: us)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue     # gone meanwhile
        if int(fields[1]) == parent and fields[0] != b"Z":
            found.append(int(entry))
    return found


def kill_remaining() -> list[int]:
    """SIGKILL every live child that is not a pipe child (rule 2); returns their pids."""
    pipes = sys.modules.get("pyresty.runtime.pipe")
    mine = pipes.leaders() if pipes is not None else set()
    killed: list[str] = []
    pids = []
    for pid in live_children():
        if pid in mine:
            continue
        what = _command_of(pid)
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue     # it ended meanwhile
        pids.append(pid)
        killed.append(f"{pid} ({what})")
    if killed:
        log.warning("killed %d child process%s still running at exit (started by user "
                    "code, not pyresty.pipe): %s", len(killed),
                    "" if len(killed) == 1 else "es", ", ".join(killed))
    return pids


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv)
    return text if len(text) <= 80 else text[:77] + "..."
