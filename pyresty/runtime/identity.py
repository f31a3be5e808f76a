"""This process's place in the server, set once by the process model at start.

``pyresty.worker`` and ``pyresty.process`` read it; the process model writes it
(``become``) right after fork and flips ``exiting`` when graceful shutdown starts.
"""
from __future__ import annotations

import enum
import os


class Role(enum.Enum):
    SINGLE = "single"
    MASTER = "master"
    WORKER = "worker"
    AGENT = "privileged agent"


class Identity:
    __slots__ = ("role", "worker_id", "worker_count", "generation", "master_pid", "exiting", "prefix")

    def __init__(self) -> None:
        self.role = Role.SINGLE
        self.worker_id: int | None = 0
        self.worker_count = 1
        self.generation = 0
        self.master_pid = os.getpid()
        self.exiting = False
        self.prefix = os.getcwd()


current = Identity()


def become(role: Role, worker_id: int | None, worker_count: int, generation: int,
           master_pid: int, prefix: str) -> None:
    """Record who this process is (called once, right after fork)."""
    current.role = role
    current.worker_id = worker_id
    current.worker_count = worker_count
    current.generation = generation
    current.master_pid = master_pid
    current.exiting = False
    current.prefix = prefix
