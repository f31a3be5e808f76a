"""``pyresty.shell``: run a command to completion and collect its output (SPEC §6).

Rules
-----
1. ``run()`` spawns the command with ``pyresty.pipe.spawn`` (a string runs
   via ``/bin/sh -c``, a sequence is an argv), writes ``stdin`` (if any) and
   closes it, so a child that reads stdin always sees EOF.
2. stdout and stderr are read at the same time, so neither can fill and
   block the child while we wait on the other.
3. ``timeout`` bounds the whole run: spawn, feeding stdin, reading and
   waiting. Past it the child's process group is killed with SIGKILL.
4. ``max_size`` bounds each of stdout and stderr separately (as
   lua-resty-shell does). The first stream to exceed it keeps its first
   ``max_size`` bytes and the process group is killed with SIGKILL.
5. The result says how the run ended:

   ======== ====== ====================================================
   reason   ok     status
   ======== ====== ====================================================
   exit     status the exit code; ok only when it is 0
            == 0
   signal   False  the signal number that ended the child
   timeout  False  9 (SIGKILL): the signal pyresty killed the group with
   max_size False  9 (SIGKILL): the signal pyresty killed the group with
   ======== ====== ====================================================

   After a timeout or an overflow, stdout and stderr hold what was read
   before the kill.
6. A child never outlives ``run()`` unwatched: if ``run()`` is left (an
   error, a timeout, the caller's cancellation) while the child lives, its
   group gets SIGKILL and the event loop reaps it (``pyresty.pipe`` rule 7).
7. A child that exits without reading all of ``stdin`` is not an error:
   the rest of the input is dropped, as a shell pipeline would.
"""
from __future__ import annotations

import asyncio
import math
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from pyresty.errors import PipeError
from pyresty.runtime import pipe

__all__ = ["ShellResult", "run"]

DEFAULT_TIMEOUT = 10.0
"""Seconds, as lua-resty-shell's default."""

DEFAULT_MAX_SIZE = 128 * 1024
"""Bytes per stream, as lua-resty-shell's default."""

_CHUNK = 64 * 1024
"""Bytes per read of an output stream."""

_REAP_GRACE = 1.0
"""Seconds to wait for a SIGKILLed child to be reaped before giving up (the loop still reaps it later)."""


class ShellResult(NamedTuple):
    """How a ``run()`` ended; see the table in the module docstring."""

    ok: bool
    stdout: bytes
    stderr: bytes
    reason: str
    status: int


class _TooBig(Exception):
    """An output stream passed max_size."""


async def _collect(read_any: Callable[[int], Awaitable[bytes]], into: bytearray, max_size: int) -> None:
    """Read one stream to EOF into ``into``; raise _TooBig past max_size."""
    while chunk := await read_any(_CHUNK):
        into += chunk
        if len(into) > max_size:
            del into[max_size:]
            raise _TooBig


async def _feed(proc: pipe.Proc, data: bytes | str | None) -> None:
    """Write stdin and close it; a child that stopped reading is not an error."""
    try:
        if data:
            await proc.write(data)
    except PipeError:
        pass  # the child closed stdin or exited: the rest is dropped (rule 7)
    finally:
        proc.shutdown("stdin")


async def _communicate(proc: pipe.Proc, stdin: bytes | str | None,
                       out: bytearray, err: bytearray, max_size: int) -> bool:
    """Feed stdin and read both streams to EOF; False if one passed max_size."""
    within_size = True
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_feed(proc, stdin))
            tasks.create_task(_collect(proc.stdout_read_any, out, max_size))
            tasks.create_task(_collect(proc.stderr_read_any, err, max_size))
    except* _TooBig:
        within_size = False
    return within_size


async def _kill_and_reap(proc: pipe.Proc) -> None:
    proc.kill(signal.SIGKILL)
    proc.set_timeouts(wait=_REAP_GRACE)
    try:
        await proc.wait()
    except pipe.PipeTimeout:
        pass  # stuck in the kernel (D state); the loop reaps it when it dies


async def run(cmd: str | Sequence[str], *, stdin: bytes | str | None = None,
              timeout: float = DEFAULT_TIMEOUT, max_size: int = DEFAULT_MAX_SIZE) -> ShellResult:
    """Run cmd to completion; return ShellResult(ok, stdout, stderr, reason, status).

    Raises PipeError if the command cannot be started, ValueError for a
    timeout <= 0 or max_size < 0.
    """
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    out, err = bytearray(), bytearray()
    proc: pipe.Proc | None = None
    reason, status = "", 0
    try:
        async with asyncio.timeout(timeout):
            proc = await pipe.spawn(cmd)
            proc.set_timeouts(write=math.inf, stdout_read=math.inf, stderr_read=math.inf, wait=math.inf)
            if await _communicate(proc, stdin, out, err, max_size):
                reason, status = await proc.wait()
            else:
                reason = "max_size"
    except TimeoutError:
        reason = "timeout"
    finally:
        if proc is not None and reason not in ("exit", "signal"):
            await _kill_and_reap(proc)
    if reason in ("timeout", "max_size"):
        return ShellResult(False, bytes(out), bytes(err), reason, int(signal.SIGKILL))
    return ShellResult(reason == "exit" and status == 0, bytes(out), bytes(err), reason, status)
