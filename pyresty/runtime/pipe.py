"""``pyresty.pipe``: child processes with non-blocking pipes (SPEC §6).

Rules
-----
1. ``spawn()`` starts the child in a new session, so it leads its own process
   group (pgid == pid). ``Proc.kill()`` and ``kill_all()`` signal that group:
   a shell's children and grandchildren go down with it unless they left the
   group themselves (setsid/setpgid).
2. A string runs as ``/bin/sh -c STRING``; a sequence is an argv, looked up
   on PATH. ``env`` *replaces* the environment (pass ``{**os.environ, ...}``
   to extend it).
3. Output never blocks the event loop and never deadlocks the child. Each
   of stdout/stderr has its own buffer, filled as the OS delivers data.
   - While no task is waiting on the Proc (no read, write or wait in
     progress), a buffer holding ``buffer_size`` unread bytes stops reading
     from the OS and the child blocks in write(2), as with any pipe: memory
     stays at about ``buffer_size`` per pipe.
   - While any task waits on the Proc, both pipes are read without limit.
     This is what makes ``stdout_read_all()`` safe while the child writes
     10 MB to stderr (the case that deadlocks ``subprocess`` users who read
     one pipe at a time): the other side is buffered, not dropped. The
     price is memory, bounded by what the child writes during the wait, and
     the wait is bounded by its timeout.
   - Reading resumes once a buffer is down to half of ``buffer_size``.
   - So output that is never read is kept: a child that floods stderr
     while you only read stdout costs that much memory until the Proc is
     dropped. Pass ``merge_stderr=True`` or read both sides concurrently;
     ``shutdown("stderr")`` closes the pipe (the child's next write there
     fails, as in a shell pipeline whose reader exited).
4. One task at a time per pipe: a second concurrent read of the same pipe
   raises ``PipeError("stdout is busy")``. Reads of stdout and stderr, a
   write and a wait may run concurrently in different tasks.
5. Every waiting operation has a timeout (``set_timeouts``; 10 s each by
   default, as ``ngx.pipe``; ``math.inf`` for none). Past it the operation
   raises ``PipeTimeout``, which is both a ``PipeError`` and a builtin
   ``TimeoutError``. A timeout never loses data: bytes that did not make a
   whole answer stay buffered for the next read; a write's data stays
   queued for the child.
6. Reads after the child is gone return what was buffered, then EOF
   (``None`` from ``*_read_line``, ``b""`` from the others).
7. No zombies, ever. Every child stays in a process-wide registry until its
   leader has been reaped and its pipes are closed; ``live_count()`` counts
   them and ``kill_all()`` signals them. The event loop reaps a child
   as soon as it exits, whether or not anyone calls ``wait()``. A ``Proc``
   dropped while its child still runs kills the group with SIGKILL (nobody
   could read, wait for or kill it any more). ``close_all()`` kills and
   reaps what is left; it runs at interpreter exit. The first ``spawn()``
   registers both with the process's lifecycle registry: ``kill_all()`` at
   ``worker_shutdown_timeout`` (SPEC §4 step 5), ``close_all()`` (bounded by
   ``reap_children``) before the process exits. A forked process starts with an empty
   registry and never signals its parent's children, even through a Proc
   it inherited.

Theory of operation
-------------------
``_Child`` is the ``asyncio.SubprocessProtocol`` of one child: the loop calls
it with data, EOFs and the exit, and it keeps the buffers (``_OutPipe``), the
exit status and the futures of waiting tasks. ``Proc`` is the handle the user
holds: it owns the timeouts and turns calls into waits on ``_Child``. The
registry holds ``_Child`` objects, never ``Proc``, so dropping a ``Proc``
lets the garbage collector find it.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import os
import signal
import subprocess
import time
from asyncio import base_subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pyresty.errors import PipeError
from pyresty.runtime import lifecycle

__all__ = ["PipeTimeout", "Proc", "close_all", "kill_all", "leaders", "live_count", "spawn"]

DEFAULT_TIMEOUT = 10.0
"""Seconds; ngx.pipe's default for each of write/stdout_read/stderr_read/wait."""

DEFAULT_BUFFER_SIZE = 64 * 1024
"""Bytes buffered per pipe while nobody waits: the size of a Linux pipe."""

_REAP_POLL = 0.005
"""Seconds between waitpid(WNOHANG) polls in close_all (no event loop there)."""

_T = TypeVar("_T")


class PipeTimeout(PipeError, TimeoutError):
    """A Proc operation ran past its timeout (also a builtin TimeoutError)."""


class _More:
    """Sentinel: a reader needs more bytes (or EOF) before it can answer."""


_MORE = _More()


class _OutPipe:
    """The buffer of one output pipe (stdout or stderr) and its flow control."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.buf = bytearray()
        self.eof = False
        self.shut = False
        self.busy = False
        self.paused = False
        self.transport: Any = None
        self.waiter: asyncio.Future[None] | None = None
        self._scanned = 0  # bytes of buf known to hold no b"\n"

    def feed(self, data: bytes) -> None:
        if not self.shut:
            self.buf += data
            self._wake()

    def set_eof(self) -> None:
        self.eof = True
        self.transport = None
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def more(self) -> None:
        """Wait until the next feed or EOF."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def update_flow(self, waiting: bool) -> None:
        """Pause or resume reading from the OS (rule 3)."""
        if self.transport is None:
            return
        if self.paused and (waiting or len(self.buf) <= self.limit // 2):
            self.paused = False
            self.transport.resume_reading()
        elif not self.paused and not waiting and len(self.buf) >= self.limit:
            self.paused = True
            self.transport.pause_reading()

    def shutdown(self) -> None:
        """Stop reading: drop the buffer and close our end of the pipe."""
        self.shut = True
        self.buf.clear()
        if self.transport is not None:
            self.transport.close()

    def take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]  # O(1) at the front of a bytearray
        self._scanned = max(0, self._scanned - n)
        return data

    def take_line(self) -> bytes | None | _More:
        at = self.buf.find(b"\n", self._scanned)
        if at >= 0:
            line = self.take(at + 1)
            return line[:-1]
        self._scanned = len(self.buf)
        if not self.eof:
            return _MORE
        return self.take(len(self.buf)) if self.buf else None

    def take_all(self) -> bytes | _More:
        return self.take(len(self.buf)) if self.eof else _MORE

    def take_bytes(self, n: int) -> bytes | _More:
        return self.take(n) if len(self.buf) >= n or self.eof else _MORE

    def take_any(self, most: int) -> bytes | _More:
        return self.take(most) if self.buf or self.eof else _MORE


class _Child(asyncio.SubprocessProtocol):
    """What the event loop knows of one child: buffers, stdin, exit status."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buffer_size: int, merge_stderr: bool) -> None:
        self.loop = loop
        self.owner = os.getpid()  # a forked copy of this object must not signal our children
        self.pid = 0
        self.transport: Any = None
        self.stdin: Any = None
        self.stdin_error: str | None = None  # why stdin can no longer be written
        self.stdout = _OutPipe("stdout", buffer_size)
        self.stderr = None if merge_stderr else _OutPipe("stderr", buffer_size)
        self.returncode: int | None = None
        self.finished = False
        self.waiting = 0
        self.write_paused = False
        self.exit_waiters: list[asyncio.Future[None]] = []
        self.drain_waiters: list[asyncio.Future[None]] = []

    # -- protocol callbacks (called by the event loop) --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pid = transport.get_pid()  # type: ignore[attr-defined]
        self.stdin = transport.get_pipe_transport(0)  # type: ignore[attr-defined]
        self.stdout.transport = transport.get_pipe_transport(1)  # type: ignore[attr-defined]
        if self.stderr is not None:
            self.stderr.transport = transport.get_pipe_transport(2)  # type: ignore[attr-defined]
        _live[self.pid] = self

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        pipe = self.stdout if fd == 1 else self.stderr
        if pipe is not None:
            pipe.feed(data)
            pipe.update_flow(self.waiting > 0)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            self.lose_stdin("stdin is closed (the child closed it or exited)")
            return
        pipe = self.stdout if fd == 1 else self.stderr
        if pipe is not None:
            pipe.set_eof()
        self._try_finish()

    def process_exited(self) -> None:
        self.returncode = self.transport.get_returncode()
        _wake_all(self.exit_waiters)
        self._try_finish()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        _wake_all(self.drain_waiters)

    # -- state --

    def lose_stdin(self, why: str) -> None:
        if self.stdin_error is None:
            self.stdin_error = why
        self.stdin = None
        self.write_paused = False
        _wake_all(self.drain_waiters)

    def _try_finish(self) -> None:
        """Leader reaped and every output pipe at EOF: release everything."""
        if self.finished or self.returncode is None:
            return
        if not self.stdout.eof or (self.stderr is not None and not self.stderr.eof):
            return
        self.finished = True
        _live.pop(self.pid, None)
        self.lose_stdin("stdin is closed (the child exited)")
        self.transport.close()

    def close_ends(self) -> None:
        """Close our ends of the pipes: readers get what is buffered, then EOF.

        Safe on a closed loop too: each close() marks its transport closing
        before it fails to schedule a callback there, and the pipe objects'
        finalizers close the fds.
        """
        for fd in (0, 1, 2):
            transport = self.transport.get_pipe_transport(fd)
            if transport is not None:
                with contextlib.suppress(RuntimeError):
                    transport.close()
        if self.finished and isinstance(self.transport, base_subprocess.BaseSubprocessTransport):
            # Reaped behind the loop's back: close asyncio's transport now or
            # its finalizer complains. Its close() polls waitpid (ECHILD) and
            # never signals a reaped pid; uvloop's would, so it is left alone.
            with contextlib.suppress(RuntimeError):
                self.transport.close()

    def update_flow(self) -> None:
        for pipe in (self.stdout, self.stderr):
            if pipe is not None:
                pipe.update_flow(self.waiting > 0)

    @contextlib.asynccontextmanager
    async def waiting_on(self) -> AsyncIterator[None]:
        """Mark a task as waiting on this child: its pipes are drained (rule 3)."""
        self.waiting += 1
        self.update_flow()
        try:
            yield
        finally:
            self.waiting -= 1
            self.update_flow()

    def send_signal(self, sig: int) -> bool:
        """Send sig to the child's process group; False if there is none left."""
        if self.finished or os.getpid() != self.owner:
            return False  # the group is gone (its number may be reused), or not ours
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except OSError as exc:
            raise PipeError(f"kill of process group {self.pid} failed: {exc.strerror}") from exc
        return True

    def abandon(self) -> None:
        """Nobody can use this child any more: SIGKILL its group, close our ends.

        Closing our ends means a grandchild that left the group cannot keep
        the child registered by holding the pipes open. With the loop alive,
        the loop reaps the leader and _try_finish unregisters it; with the
        loop closed nothing else will, so it is reaped here.
        """
        if self.finished or os.getpid() != self.owner:
            return
        self.send_signal(signal.SIGKILL)
        if self.loop.is_closed():
            _reap_now(self, deadline=time.monotonic() + 1.0)
            self.close_ends()
        elif _running_loop() is self.loop:
            self.close_ends()
        else:  # a finalizer run by another thread, or outside the loop's run
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.close_ends)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
    waiters.clear()


async def _wait_on(waiters: list[asyncio.Future[None]]) -> None:
    fut = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    finally:
        if fut in waiters:
            waiters.remove(fut)


@contextlib.asynccontextmanager
async def _deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """Raise PipeTimeout if the body runs longer than seconds (inf: never)."""
    try:
        async with asyncio.timeout(None if math.isinf(seconds) else seconds):
            yield
    except TimeoutError as exc:
        raise PipeTimeout(f"{what} timed out after {seconds:g}s") from exc


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and (math.isnan(value) or value <= 0):
        raise ValueError(f"{name} timeout must be > 0 seconds or math.inf, got {value!r}")


class Proc:
    """A running (or finished) child process started by ``spawn()``."""

    def __init__(self, child: _Child) -> None:
        self._child = child
        self._timeouts = {
            "write": DEFAULT_TIMEOUT,
            "stdout_read": DEFAULT_TIMEOUT,
            "stderr_read": DEFAULT_TIMEOUT,
            "wait": DEFAULT_TIMEOUT,
        }

    def __del__(self) -> None:
        child = getattr(self, "_child", None)
        if child is not None:
            child.abandon()

    def __repr__(self) -> str:
        state = "finished" if self._child.finished else "live"
        return f"<Proc pid={self.pid} {state} returncode={self._child.returncode}>"

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return self._child.pid

    def set_timeouts(self, write: float | None = None, stdout_read: float | None = None,
                     stderr_read: float | None = None, wait: float | None = None) -> None:
        """Set per-operation timeouts in seconds; None leaves one unchanged.

        ``math.inf`` disables a timeout. Raises ValueError for a value <= 0.
        """
        for name, value in (("write", write), ("stdout_read", stdout_read),
                            ("stderr_read", stderr_read), ("wait", wait)):
            _check_timeout(name, value)
            if value is not None:
                self._timeouts[name] = float(value)

    # -- reading --

    def _out(self, name: str) -> _OutPipe:
        pipe = self._child.stdout if name == "stdout" else self._child.stderr
        if pipe is None:
            raise PipeError("stderr is merged into stdout (merge_stderr=True)")
        if pipe.shut:
            raise PipeError(f"{name} is shut down")
        if pipe.busy:
            raise PipeError(f"{name} is busy (another task is reading it)")
        return pipe

    async def _read(self, name: str, take: Callable[[_OutPipe], _T | _More]) -> _T:
        pipe = self._out(name)
        pipe.busy = True
        try:
            result = take(pipe)
            if isinstance(result, _More):
                async with self._child.waiting_on(), _deadline(self._timeouts[f"{name}_read"], f"{name} read"):
                    while isinstance(result := take(pipe), _More):
                        await pipe.more()
            return result
        finally:
            pipe.busy = False
            self._child.update_flow()

    async def stdout_read_line(self) -> bytes | None:
        """The next line of stdout without its b"\\n"; a last unterminated line
        as is; None at EOF. Raises PipeTimeout, PipeError (busy, shut down)."""
        return await self._read("stdout", _OutPipe.take_line)

    async def stdout_read_all(self) -> bytes:
        """Everything up to EOF. Raises PipeTimeout (the data stays buffered), PipeError."""
        return await self._read("stdout", _OutPipe.take_all)

    async def stdout_read_bytes(self, n: int) -> bytes:
        """Exactly n bytes, fewer only at EOF. Raises PipeTimeout, PipeError, ValueError (n < 0)."""
        _check_size("n", n, minimum=0)
        return await self._read("stdout", lambda pipe: pipe.take_bytes(n))

    async def stdout_read_any(self, max: int) -> bytes:  # noqa: A002 - ngx.pipe's name
        """1..max bytes as soon as any are there; b"" at EOF. Raises PipeTimeout,
        PipeError, ValueError (max < 1)."""
        _check_size("max", max, minimum=1)
        return await self._read("stdout", lambda pipe: pipe.take_any(max))

    async def stderr_read_line(self) -> bytes | None:
        """As stdout_read_line; PipeError if stderr is merged into stdout."""
        return await self._read("stderr", _OutPipe.take_line)

    async def stderr_read_all(self) -> bytes:
        """As stdout_read_all; PipeError if stderr is merged into stdout."""
        return await self._read("stderr", _OutPipe.take_all)

    async def stderr_read_bytes(self, n: int) -> bytes:
        """As stdout_read_bytes; PipeError if stderr is merged into stdout."""
        _check_size("n", n, minimum=0)
        return await self._read("stderr", lambda pipe: pipe.take_bytes(n))

    async def stderr_read_any(self, max: int) -> bytes:  # noqa: A002 - ngx.pipe's name
        """As stdout_read_any; PipeError if stderr is merged into stdout."""
        _check_size("max", max, minimum=1)
        return await self._read("stderr", lambda pipe: pipe.take_any(max))

    # -- writing, shutdown, wait, kill --

    async def write(self, data: bytes | str) -> int:
        """Queue data (str is UTF-8 encoded) for the child's stdin; return its length.

        Waits while the OS pipe and our queue are full. Returning means the
        data was handed on, not that the child read it. Raises PipeError if
        stdin was shut down, or closed by the child or its exit, PipeTimeout
        (the data stays queued).
        """
        payload = data.encode() if isinstance(data, str) else bytes(data)
        child = self._child
        if child.stdin is None:
            raise PipeError(child.stdin_error or "stdin is closed")
        try:
            child.stdin.write(payload)
        except (RuntimeError, OSError) as exc:  # uvloop raises on a closing pipe
            raise PipeError(f"stdin write failed: {exc}") from exc
        if child.write_paused:
            async with child.waiting_on(), _deadline(self._timeouts["write"], "write"):
                while child.write_paused and child.stdin is not None:
                    await _wait_on(child.drain_waiters)
            if child.stdin is None and child.stdin_error != "stdin is shut down":
                raise PipeError(child.stdin_error or "stdin is closed")
        return len(payload)

    def shutdown(self, which: str) -> None:
        """Close "stdin" (after the queued data is written: the child sees EOF),
        or stop reading "stdout"/"stderr" (buffered data is dropped; the
        child's next write there fails with SIGPIPE, EPIPE or ECONNRESET).

        Idempotent. Raises ValueError for another name, PipeError for
        "stderr" when merged into stdout.
        """
        if which == "stdin":
            self._shutdown_stdin()
        elif which in ("stdout", "stderr"):
            pipe = self._child.stdout if which == "stdout" else self._child.stderr
            if pipe is None:
                raise PipeError("stderr is merged into stdout (merge_stderr=True)")
            pipe.shutdown()
        else:
            raise ValueError(f"cannot shut down {which!r} (expected stdin, stdout or stderr)")

    def _shutdown_stdin(self) -> None:
        child = self._child
        stdin = child.stdin
        child.lose_stdin("stdin is shut down")
        if stdin is not None and not stdin.is_closing():
            # uvloop may have closed the pipe already (the child exited) with the
            # pipe_connection_lost callback still queued: it raises RuntimeError
            with contextlib.suppress(RuntimeError, OSError):
                if stdin.can_write_eof():
                    stdin.write_eof()  # flushes the queue first
                else:
                    stdin.close()

    async def wait(self) -> tuple[str, int]:
        """Wait for the child to end: ("exit", exit code) or ("signal", signal number).

        Output keeps being buffered meanwhile (rule 3). Raises PipeTimeout.
        """
        child = self._child
        if child.returncode is None:
            async with child.waiting_on(), _deadline(self._timeouts["wait"], "wait"):
                while child.returncode is None:
                    await _wait_on(child.exit_waiters)
        code = child.returncode
        assert code is not None
        return ("signal", -code) if code < 0 else ("exit", code)

    def kill(self, sig: int) -> None:
        """Send sig to the child's whole process group.

        Once the child is finished (reaped and its pipes closed) this does
        nothing, silently: the pid may belong to another process by then.
        Between the leader's exit and the close of its pipes, the signal
        still reaches any grandchild left in the group. Raises ValueError
        for an unknown signal, PipeError if the kernel refuses (EPERM).
        """
        _check_signal(sig)
        self._child.send_signal(sig)


def _check_size(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_signal(sig: int) -> None:
    if sig != 0 and sig not in signal.valid_signals():
        raise ValueError(f"{sig!r} is not a signal number")


def _argv(args: Sequence[str] | str) -> list[str]:
    if isinstance(args, str):
        return ["/bin/sh", "-c", args]
    argv = [str(arg) for arg in args]
    if not argv:
        raise ValueError("spawn() needs a program to run (args is empty)")
    return argv


async def spawn(args: Sequence[str] | str, *, env: Mapping[str, str] | None = None,
                cwd: str | None = None, merge_stderr: bool = False,
                buffer_size: int = DEFAULT_BUFFER_SIZE) -> Proc:
    """Start a child process with stdin, stdout and stderr piped to us.

    args: an argv (looked up on PATH) or a string for ``/bin/sh -c``.
    env: the child's whole environment (None: inherit ours). cwd: its
    working directory. merge_stderr: stderr goes into stdout.
    buffer_size: bytes buffered per pipe while nobody waits (rule 3).
    Raises PipeError if the program cannot be started, ValueError for
    empty args or buffer_size < 1.
    """
    argv = _argv(args)
    _check_size("buffer_size", buffer_size, minimum=1)
    _prune_orphans()
    lifecycle.register("pipes", lifecycle.Layer.CHILDREN, deadline=_kill_at_deadline,
                       close=_close_at_exit)
    loop = asyncio.get_running_loop()
    child = _Child(loop, buffer_size, merge_stderr)
    try:
        await loop.subprocess_exec(
            lambda: child, *argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            env=dict(env) if env is not None else None, cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        # A bad cwd fails with the same errno as a missing program: say which.
        where = f" (cwd {cwd!r})" if cwd is not None and exc.filename == cwd else ""
        raise PipeError(f"cannot spawn {argv[0]!r}: {exc.strerror or exc}{where}") from exc
    return Proc(child)


# -- the process-wide registry (rule 7) --

_live: dict[int, _Child] = {}


def live_count() -> int:
    """Children of this process not yet reaped, or whose pipes are still open."""
    _prune_orphans()
    return len(_live)


def leaders() -> set[int]:
    """Pids of the children this module started and still owns (``children``
    leaves them to it)."""
    return {pid for pid, child in _live.items() if child.owner == os.getpid()}


def kill_all(sig: int = signal.SIGKILL) -> int:
    """Send sig to the process group of every live child; return how many
    groups got it. The worker calls this at ``worker_shutdown_timeout``.
    Raises ValueError for an unknown signal."""
    _check_signal(sig)
    _prune_orphans()
    sent = 0
    for child in list(_live.values()):
        with contextlib.suppress(PipeError):
            sent += child.send_signal(sig)
    return sent


def close_all(timeout: float = 1.0) -> int:
    """SIGKILL every live child's group and reap the leaders, waiting at most
    timeout seconds in all; return how many were reaped here.

    For the very end of a process (it runs at interpreter exit; call it
    before ``os._exit``): it calls waitpid itself, behind the event loop's
    back, so that no child outlives us as a zombie.
    """
    deadline = time.monotonic() + timeout
    children = list(_live.values())
    for child in children:
        with contextlib.suppress(PipeError):
            child.send_signal(signal.SIGKILL)
    reaped = [child for child in children if _reap_now(child, deadline)]
    for child in reaped:
        child.close_ends()
    return len(reaped)


def _kill_at_deadline(grace: float) -> None:
    kill_all()


def _close_at_exit() -> None:
    close_all(lifecycle.SHUTDOWN.reap_children)


def _reap_now(child: _Child, deadline: float) -> bool:
    """waitpid the leader until deadline; unregister it once reaped."""
    while True:
        try:
            pid, _ = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid = child.pid  # someone else (the loop's watcher) reaped it
        if pid:
            child.finished = True
            _live.pop(child.pid, None)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_REAP_POLL)


def _prune_orphans() -> None:
    """Children whose event loop is closed will never be reaped by it: do it here."""
    for child in [c for c in _live.values() if c.loop.is_closed()]:
        child.abandon()


def _forget_all() -> None:
    _live.clear()


os.register_at_fork(after_in_child=_forget_all)
atexit.register(close_all)
