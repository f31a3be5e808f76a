"""``pyresty.process``: this process's type, and a way to signal the master."""
from __future__ import annotations

import os

from pyresty.runtime.identity import current
from pyresty.supervisor.signals import COMMANDS


def type() -> str:  # noqa: A001 - public name from SPEC §6
    """``"single" | "master" | "worker" | "privileged agent"``."""
    return current.role.value


def signal_master(command: str) -> None:
    """Send the master ``"reload" | "quit" | "stop" | "reopen"``.

    Raises ValueError for another command, ProcessLookupError if the master is gone.
    """
    try:
        sig = COMMANDS[command]
    except KeyError:
        raise ValueError(f"unknown command {command!r} (expected one of: {', '.join(COMMANDS)})") from None
    os.kill(current.master_pid, sig)
