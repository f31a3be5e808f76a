"""``pyresty.worker``: which worker this is, and whether it is exiting."""
from __future__ import annotations

import os

from pyresty.runtime.identity import Role, current


def id() -> int | None:  # noqa: A001 - public name from SPEC §6
    """This worker's id, 0..count()-1, stable across respawn and reload; None in the agent."""
    return None if current.role in (Role.AGENT, Role.MASTER) else current.worker_id


def count() -> int:
    """The number of workers the server runs (1 in single-process mode)."""
    return current.worker_count


def pid() -> int:
    """This process's pid."""
    return os.getpid()


def exiting() -> bool:
    """True once this process has started its graceful (or fast) shutdown."""
    return current.exiting
