"""pyresty.shell.run against real commands, on both asyncio's loop and uvloop.

Every test runs in a fresh event loop and ends with no child of ours left
as a zombie and nothing left in pyresty.pipe's registry.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from children import Runner, no_leftovers, proc_state, run, until  # noqa: F401
from pyresty.errors import PipeError
from pyresty.runtime import pipe, shell
from pyresty.runtime.shell import ShellResult


def check(run: Runner, cmd: str | list[str], expected: ShellResult, **kwargs: object) -> None:
    async def body() -> ShellResult:
        return await shell.run(cmd, **kwargs)  # type: ignore[arg-type]
    assert run(body) == expected


@pytest.mark.timeout(10)
def test_ok(run: Runner) -> None:
    check(run, "echo hi; echo note >&2", ShellResult(True, b"hi\n", b"note\n", "exit", 0))


@pytest.mark.timeout(10)
def test_argv(run: Runner) -> None:
    check(run, ["echo", "a  b", "$HOME"], ShellResult(True, b"a  b $HOME\n", b"", "exit", 0))


@pytest.mark.timeout(10)
def test_failure(run: Runner) -> None:
    check(run, "echo oops >&2; exit 3", ShellResult(False, b"", b"oops\n", "exit", 3))


@pytest.mark.timeout(10)
def test_killed_by_a_signal(run: Runner) -> None:
    check(run, "kill -TERM $$", ShellResult(False, b"", b"", "signal", signal.SIGTERM))


@pytest.mark.timeout(10)
def test_stdin(run: Runner) -> None:
    check(run, "cat", ShellResult(True, b"abc", b"", "exit", 0), stdin=b"abc")
    check(run, "cat", ShellResult(True, "wörld".encode(), b"", "exit", 0), stdin="wörld")
    check(run, "wc -c", ShellResult(True, b"0\n", b"", "exit", 0))  # no stdin: EOF at once


@pytest.mark.timeout(30)
def test_big_stdin_through_cat(run: Runner) -> None:
    data = os.urandom(4 * 1024 * 1024)
    check(run, ["cat"], ShellResult(True, data, b"", "exit", 0), stdin=data, max_size=len(data))


@pytest.mark.timeout(10)
def test_a_child_that_ignores_stdin(run: Runner) -> None:
    check(run, "exit 0", ShellResult(True, b"", b"", "exit", 0), stdin=b"x" * 1024 * 1024)


@pytest.mark.timeout(10)
def test_timeout(run: Runner) -> None:
    async def body() -> tuple[ShellResult, float]:
        started = time.monotonic()
        result = await shell.run("echo started; exec sleep 30", timeout=0.3)
        return result, time.monotonic() - started
    result, took = run(body)  # type: ignore[misc]
    assert result == ShellResult(False, b"started\n", b"", "timeout", signal.SIGKILL)
    assert took < 5


@pytest.mark.timeout(10)
def test_timeout_kills_the_whole_process_group(run: Runner) -> None:
    async def body() -> None:
        result = await shell.run("sleep 30 & echo $!; wait", timeout=0.3)
        assert result.reason == "timeout"
        grandchild = int(result.stdout)
        await until(lambda: (proc_state(grandchild) or ("X",))[0] in ("Z", "X"))
    run(body)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("side", ["stdout", "stderr"])
def test_max_size(run: Runner, side: str) -> None:
    script = f"import sys; sys.{side}.write('x' * 100000); sys.{side}.flush(); import time; time.sleep(30)"

    async def body() -> None:
        result = await shell.run([sys.executable, "-c", script], max_size=1000)
        assert result.reason == "max_size"
        assert (result.ok, result.status) == (False, signal.SIGKILL)
        assert getattr(result, side) == b"x" * 1000
    run(body)


@pytest.mark.timeout(10)
def test_max_size_with_an_endless_writer(run: Runner) -> None:
    async def body() -> None:
        result = await shell.run(["yes"], max_size=10)
        assert (result.ok, result.stdout, result.reason) == (False, b"y\n" * 5, "max_size")
    run(body)


@pytest.mark.timeout(10)
def test_output_of_exactly_max_size_is_fine(run: Runner) -> None:
    check(run, "printf 1234", ShellResult(True, b"1234", b"", "exit", 0), max_size=4)


@pytest.mark.timeout(10)
def test_cancelling_run_kills_the_child(run: Runner) -> None:
    async def body() -> None:
        task = asyncio.create_task(shell.run(["sleep", "30"]))
        await until(lambda: pipe.live_count() == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: pipe.live_count() == 0)
    run(body)


@pytest.mark.timeout(10)
def test_errors(run: Runner) -> None:
    async def body() -> None:
        with pytest.raises(PipeError):
            await shell.run(["/nonexistent/program"])
        with pytest.raises(ValueError):
            await shell.run("true", timeout=0)
        with pytest.raises(ValueError):
            await shell.run("true", max_size=-1)
    run(body)
