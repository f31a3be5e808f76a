"""pyresty.pipe against real child processes, on both asyncio's loop and uvloop.

Every test runs in a fresh event loop and ends with no child of ours left
as a zombie and nothing left in the registry.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys

import pytest

from children import Runner, no_leftovers, proc_state, run, until  # noqa: F401
from pyresty.errors import PipeError
from pyresty.runtime import pipe
from pyresty.runtime.pipe import PipeTimeout

MB = 1024 * 1024


def dead(pid: int) -> bool:
    """Gone, or a zombie (of whoever inherited it): not running any more."""
    state = proc_state(pid)
    return state is None or state[0] in ("Z", "X")


# -- reading --

@pytest.mark.timeout(10)
def test_read_lines_from_stdout_and_stderr(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(r"printf 'a\nb\r\n\nlast'; printf 'e1\ne2' >&2")
        assert [await proc.stdout_read_line() for _ in range(5)] == [b"a", b"b\r", b"", b"last", None]
        assert [await proc.stderr_read_line() for _ in range(3)] == [b"e1", b"e2", None]
        assert await proc.wait() == ("exit", 0)
    run(body)


@pytest.mark.timeout(10)
def test_read_all(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn("echo out; echo err >&2")
        assert await proc.stderr_read_all() == b"err\n"
        assert await proc.stdout_read_all() == b"out\n"
        assert await proc.stdout_read_all() == b""
        assert await proc.wait() == ("exit", 0)
    run(body)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("side", ["stdout", "stderr"])
def test_read_bytes_fewer_only_at_eof(run: Runner, side: str) -> None:
    async def body() -> None:
        redirect = "" if side == "stdout" else " >&2"
        proc = await pipe.spawn(f"printf 0123456789{redirect}")
        read_bytes = getattr(proc, f"{side}_read_bytes")
        assert await read_bytes(4) == b"0123"
        assert await read_bytes(0) == b""
        assert await read_bytes(10) == b"456789"
        assert await read_bytes(3) == b""
        with pytest.raises(ValueError):
            await read_bytes(-1)
        assert await proc.wait() == ("exit", 0)
    run(body)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("side", ["stdout", "stderr"])
def test_read_any(run: Runner, side: str) -> None:
    async def body() -> None:
        redirect = "" if side == "stdout" else " >&2"
        proc = await pipe.spawn(f"printf abc{redirect}")
        read_any = getattr(proc, f"{side}_read_any")
        assert await read_any(2) == b"ab"
        assert await read_any(100) == b"c"
        assert await read_any(100) == b""
        with pytest.raises(ValueError):
            await read_any(0)
        await proc.wait()
    run(body)


@pytest.mark.timeout(10)
def test_reads_after_the_child_is_gone_return_the_buffer_then_eof(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(r"printf 'x\ny'; printf e >&2")
        assert await proc.wait() == ("exit", 0)
        assert await proc.stdout_read_line() == b"x"
        assert await proc.stdout_read_line() == b"y"
        assert await proc.stdout_read_line() is None
        assert await proc.stderr_read_bytes(5) == b"e"
        assert await proc.stderr_read_any(5) == b""
    run(body)


@pytest.mark.timeout(10)
def test_merge_stderr(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn("echo out; echo err >&2", merge_stderr=True)
        assert await proc.stdout_read_all() == b"out\nerr\n"
        for call in (proc.stderr_read_line(), proc.stderr_read_all(),
                     proc.stderr_read_bytes(1), proc.stderr_read_any(1)):
            with pytest.raises(PipeError, match="merged"):
                await call
        with pytest.raises(PipeError, match="merged"):
            proc.shutdown("stderr")
        assert await proc.wait() == ("exit", 0)
    run(body)


@pytest.mark.timeout(10)
def test_a_pipe_is_read_by_one_task_at_a_time(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["sleep", "30"])
        first = asyncio.create_task(proc.stdout_read_line())
        await asyncio.sleep(0)  # let it start waiting
        with pytest.raises(PipeError, match="busy"):
            await proc.stdout_read_line()
        proc.kill(signal.SIGKILL)
        assert await first is None
        assert await proc.wait() == ("signal", signal.SIGKILL)
        await proc.stderr_read_all()
    run(body)


@pytest.mark.timeout(10)
def test_shutdown_stdout_stops_reading(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["yes"])
        assert await proc.stdout_read_line() == b"y"
        proc.shutdown("stdout")
        proc.shutdown("stdout")  # idempotent
        with pytest.raises(PipeError, match="shut down"):
            await proc.stdout_read_line()
        # The child's next write fails: SIGPIPE on a pipe (asyncio), or
        # ECONNRESET on uvloop's socketpair, which `yes` reports and exits 1.
        assert await proc.wait() in (("signal", signal.SIGPIPE), ("exit", 1))
        await proc.stderr_read_all()
        with pytest.raises(ValueError):
            proc.shutdown("stdwhat")
    run(body)


# -- writing --

@pytest.mark.timeout(10)
def test_write_then_shutdown_stdin_with_cat(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["cat"])
        assert await proc.write(b"hello\n") == 6
        assert await proc.write("wörld") == len("wörld".encode())
        assert await proc.write(b"") == 0
        assert await proc.stdout_read_line() == b"hello"
        proc.shutdown("stdin")
        proc.shutdown("stdin")  # idempotent
        assert await proc.stdout_read_all() == "wörld".encode()
        with pytest.raises(PipeError, match="shut down"):
            await proc.write(b"late")
        assert await proc.wait() == ("exit", 0)
    run(body)


@pytest.mark.timeout(10)
def test_write_after_the_child_is_gone(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn("exit 0")
        assert await proc.wait() == ("exit", 0)
        await proc.stdout_read_all()
        await proc.stderr_read_all()
        with pytest.raises(PipeError, match="closed"):
            await proc.write(b"x")
    run(body)


@pytest.mark.timeout(10)
def test_shutdown_stdin_after_the_loop_closed_the_pipe(run: Runner) -> None:
    """The child exits, the loop closes its stdin pipe, and shutdown("stdin")
    runs before the pipe_connection_lost callback: uvloop raised RuntimeError
    ("the handler is closed") from write_eof, which failed shell.run at random."""
    async def body() -> None:
        proc = await pipe.spawn(["cat"])
        child = proc._child
        stdin = child.stdin
        assert stdin is not None
        proc.kill(signal.SIGKILL)
        assert await proc.wait() == ("signal", signal.SIGKILL)
        await until(lambda: child.stdin is None)   # the loop closed the pipe...
        child.stdin = stdin                        # ...as the callback had not run yet
        proc.shutdown("stdin")
        with pytest.raises(PipeError, match="stdin is closed"):
            await proc.write(b"late")
    run(body)


@pytest.mark.timeout(30)
def test_write_10mb_to_cat_without_reading_meanwhile(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["cat"])
        data = os.urandom(10 * MB)
        assert await proc.write(data) == len(data)  # cat's output is buffered meanwhile
        proc.shutdown("stdin")
        assert await proc.stdout_read_all() == data
        assert await proc.wait() == ("exit", 0)
    run(body)


# -- wait and kill --

@pytest.mark.timeout(10)
def test_wait_reasons(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn("exit 3")
        assert await proc.wait() == ("exit", 3)
        assert await proc.wait() == ("exit", 3)
        proc = await pipe.spawn("kill -TERM $$")
        assert await proc.wait() == ("signal", signal.SIGTERM)
    run(body)


@pytest.mark.timeout(10)
def test_kill(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["sleep", "30"])
        proc.kill(signal.SIGTERM)
        assert await proc.wait() == ("signal", signal.SIGTERM)
        await proc.stdout_read_all()
        await proc.stderr_read_all()
        proc.kill(signal.SIGKILL)  # finished: does nothing, raises nothing
        with pytest.raises(ValueError):
            proc.kill(12345)
    run(body)


@pytest.mark.timeout(10)
def test_kill_reaches_the_whole_process_group(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn("sleep 1000 & echo $!; wait")
        grandchild = int(await proc.stdout_read_line() or b"0")
        assert proc_state(grandchild) is not None
        assert pipe.kill_all() == 1
        assert await proc.wait() == ("signal", signal.SIGKILL)
        # The grandchild held both pipes open: EOF on both means it is dying
        # (the kernel closes a killed task's files before it becomes a zombie).
        assert await proc.stdout_read_all() == b""
        assert await proc.stderr_read_all() == b""
        await until(lambda: dead(grandchild))
        assert pipe.live_count() == 0
    run(body)


@pytest.mark.timeout(10)
def test_live_count_and_kill_all(run: Runner) -> None:
    async def body() -> None:
        procs = [await pipe.spawn(["sleep", "30"]) for _ in range(3)]
        assert pipe.live_count() == 3
        assert pipe.kill_all(signal.SIGTERM) == 3
        assert [await p.wait() for p in procs] == [("signal", signal.SIGTERM)] * 3
        for p in procs:
            await p.stdout_read_all()
            await p.stderr_read_all()
        assert pipe.live_count() == 0
        assert pipe.kill_all() == 0
    run(body)


# -- timeouts --

@pytest.mark.timeout(10)
@pytest.mark.parametrize("side", ["stdout", "stderr"])
def test_read_timeout_keeps_the_data(run: Runner, side: str) -> None:
    async def body() -> None:
        redirect = "" if side == "stdout" else " >&2"
        proc = await pipe.spawn(f"printf abc{redirect}; exec sleep 30")
        proc.set_timeouts(**{f"{side}_read": 0.1})
        read_bytes = getattr(proc, f"{side}_read_bytes")
        with pytest.raises(PipeTimeout) as caught:
            await read_bytes(10)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, PipeError)
        with pytest.raises(TimeoutError):
            await getattr(proc, f"{side}_read_line")()
        proc.kill(signal.SIGKILL)
        assert await read_bytes(10) == b"abc"
        await proc.wait()
        await proc.stdout_read_all()
        await proc.stderr_read_all()
    run(body)


@pytest.mark.timeout(10)
def test_wait_timeout(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["sleep", "30"])
        proc.set_timeouts(wait=0.1)
        with pytest.raises(TimeoutError):
            await proc.wait()
        proc.kill(signal.SIGKILL)
        assert await proc.wait() == ("signal", signal.SIGKILL)
        await proc.stdout_read_all()
        await proc.stderr_read_all()
    run(body)


@pytest.mark.timeout(10)
def test_write_timeout(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["sleep", "30"])  # never reads stdin
        proc.set_timeouts(write=0.1)
        with pytest.raises(TimeoutError):
            await proc.write(b"x" * 4 * MB)
        proc.kill(signal.SIGKILL)
        assert await proc.wait() == ("signal", signal.SIGKILL)
        await proc.stdout_read_all()
        await proc.stderr_read_all()
    run(body)


def test_set_timeouts_rejects_nonpositive_values() -> None:
    async def body() -> None:
        proc = await pipe.spawn(["true"])
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError):
                proc.set_timeouts(wait=bad)
        proc.set_timeouts(wait=float("inf"))
        assert await proc.wait() == ("exit", 0)
        await proc.stdout_read_all()
        await proc.stderr_read_all()
    asyncio.run(body())


# -- no deadlock with big output on both pipes --

WRITERS = {
    "stderr first": "e.write(b'e' * N); o.write(b'o' * N)",
    "stdout first": "o.write(b'o' * N); e.write(b'e' * N)",
    "interleaved": "[(o.write(b'o' * 65536), e.write(b'e' * 65536)) for _ in range(N // 65536)]",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("order", list(WRITERS))
@pytest.mark.parametrize("read_first", ["stdout", "stderr"])
def test_10mb_on_stdout_and_stderr_at_once(run: Runner, order: str, read_first: str) -> None:
    script = ("import sys; N = 10 * 1024 * 1024; o = sys.stdout.buffer; e = sys.stderr.buffer; "
              + WRITERS[order] + "; o.flush(); e.flush()")

    async def body() -> None:
        proc = await pipe.spawn([sys.executable, "-c", script])
        other = "stderr" if read_first == "stdout" else "stdout"
        first = await getattr(proc, f"{read_first}_read_all")()
        second = await getattr(proc, f"{other}_read_all")()
        assert len(first) == len(second) == 10 * MB
        assert await proc.wait() == ("exit", 0)
    run(body)


def test_a_buffer_pauses_at_buffer_size_only_while_nobody_waits() -> None:
    class Transport:
        def __init__(self) -> None:
            self.paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    out = pipe._OutPipe("stdout", limit=100)
    out.transport = transport = Transport()
    out.feed(b"x" * 99)
    out.update_flow(waiting=False)
    assert not transport.paused
    out.feed(b"x")
    out.update_flow(waiting=False)
    assert transport.paused
    out.update_flow(waiting=True)  # somebody waits: drain everything
    assert not transport.paused
    out.feed(b"x" * 1000)
    out.update_flow(waiting=True)
    assert not transport.paused
    out.update_flow(waiting=False)
    assert transport.paused
    out.take(1000)  # 100 left: not yet down to half
    out.update_flow(waiting=False)
    assert transport.paused
    out.take(50)
    out.update_flow(waiting=False)
    assert not transport.paused


# -- spawning --

@pytest.mark.timeout(10)
def test_env_and_cwd(run: Runner, tmp_path: os.PathLike[str]) -> None:
    async def body() -> None:
        proc = await pipe.spawn('echo "$FOO:$HOME"; pwd', env={"FOO": "bar"}, cwd=str(tmp_path))
        assert await proc.stdout_read_all() == f"bar:\n{os.path.realpath(tmp_path)}\n".encode()
        assert await proc.wait() == ("exit", 0)
    run(body)


@pytest.mark.timeout(10)
def test_spawn_errors(run: Runner) -> None:
    async def body() -> None:
        with pytest.raises(PipeError, match="cannot spawn"):
            await pipe.spawn(["/nonexistent/program"])
        with pytest.raises(ValueError):
            await pipe.spawn([])
        with pytest.raises(ValueError):
            await pipe.spawn(["true"], buffer_size=0)
    run(body)


@pytest.mark.timeout(10)
def test_the_child_leads_its_own_process_group(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn([sys.executable, "-c", "import os; print(os.getpgid(0), os.getsid(0))"])
        pgid, sid = map(int, (await proc.stdout_read_all()).split())
        assert pgid == sid == proc.pid != os.getpgid(0)
        assert await proc.wait() == ("exit", 0)
    run(body)


# -- no zombies, ever --

@pytest.mark.timeout(10)
def test_a_dropped_proc_kills_and_reaps_its_child(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["sleep", "30"])
        pid = proc.pid
        del proc
        gc.collect()
        await until(lambda: pipe.live_count() == 0)
        assert proc_state(pid) is None  # reaped, not a zombie
    run(body)


@pytest.mark.timeout(10)
# Closing a loop under live transports warns (uvloop at close, asyncio in the
# pipes' finalizers): that is the misuse this test recovers from.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_child_whose_loop_closed_is_killed_and_reaped(run: Runner) -> None:
    kept: list[pipe.Proc] = []

    async def body() -> None:
        kept.append(await pipe.spawn(["sleep", "30"]))
    run(body)
    pid = kept[0].pid
    assert pipe.live_count() == 0
    assert proc_state(pid) is None
    kept.clear()
    gc.collect()  # the transports' finalizers run here, not in a later test


@pytest.mark.timeout(10)
# close_all() reaps behind uvloop's back, so uvloop's process handle stays
# open until the loop goes: fine at the end of a process, where it is used.
@pytest.mark.filterwarnings("ignore:unclosed resource <UVProcessTransport:ResourceWarning")
def test_close_all_kills_and_reaps_at_once(run: Runner) -> None:
    async def body() -> None:
        procs = [await pipe.spawn("sleep 30 & wait") for _ in range(2)]
        assert pipe.close_all() == 2
        assert pipe.live_count() == 0
        assert all(proc_state(p.pid) is None for p in procs)
    run(body)


@pytest.mark.timeout(10)
def test_a_forked_process_never_signals_its_parents_children(run: Runner) -> None:
    async def body() -> None:
        proc = await pipe.spawn(["sleep", "30"])
        forked = os.fork()
        if forked == 0:  # the copy: an inherited Proc and registry are not its own
            proc.kill(signal.SIGKILL)
            os._exit(0 if pipe.kill_all() == 0 and pipe.live_count() == 0 else 1)
        assert os.waitpid(forked, 0)[1] == 0
        proc.kill(signal.SIGTERM)
        # Had the copy's SIGKILL gone out, it would have been pending first.
        assert await proc.wait() == ("signal", signal.SIGTERM)
        await proc.stdout_read_all()
        await proc.stderr_read_all()
    run(body)


@pytest.mark.timeout(30)
def test_spawn_with_a_bad_cwd_names_the_cwd_not_the_program(tmp_path) -> None:
    """A missing (or non-directory) cwd fails with ENOENT/ENOTDIR, the same
    errors as a missing program, and the message used to name only the
    program: "cannot spawn 'true': No such file or directory" sends the
    operator looking for /usr/bin/true."""
    missing = os.path.join(str(tmp_path), "no-such-dir")
    a_file = os.path.join(str(tmp_path), "file")
    open(a_file, "w").close()

    async def body() -> None:
        for cwd in (missing, a_file):
            with pytest.raises(PipeError, match="cannot spawn") as caught:
                await pipe.spawn(["true"], cwd=cwd)
            assert repr(cwd) in str(caught.value), str(caught.value)
        # A missing program with a good cwd still names the program only.
        with pytest.raises(PipeError) as caught:
            await pipe.spawn(["/nonexistent/program"], cwd=str(tmp_path))
        assert "/nonexistent/program" in str(caught.value)
        assert "cwd" not in str(caught.value)
        assert pipe.live_count() == 0
    asyncio.run(body())
