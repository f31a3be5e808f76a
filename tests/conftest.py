from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Pyresty  # noqa: E402


@pytest.fixture
def make_server(tmp_path: Path):
    """Build (and at teardown stop and check) pyresty servers in a temp prefix."""
    started: list[Pyresty] = []

    def build(config: str, files: dict[str, str] | None = None, *,
              expect_log: tuple[str, ...] = (), start: bool = True, **kwargs) -> Pyresty:
        prefix = tmp_path / f"srv{len(started)}"
        prefix.mkdir()
        server = Pyresty(prefix, config, files, expect_log)
        started.append(server)
        if start:
            server.start(**kwargs)
        return server

    yield build
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def case_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[Pyresty, str]]:
    """The one pyresty a group of data-driven cases shares (tests/cases.py), in
    one mode: started before the group's first case, stopped and checked after
    its last. ``request.param`` is (cases.Server, mode)."""
    spec, mode = request.param
    server = spec.start(tmp_path_factory.mktemp("cases"), mode)
    try:
        yield server, mode
    finally:
        server.stop()


# -- redis-server -------------------------------------------------------------

def _install_redis() -> str:
    """apt-get install redis-server once per machine (a file lock serialises
    the xdist workers); returns the path or why it is impossible."""
    with open("/tmp/pyresty-test-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shutil.which("redis-server"):
            return shutil.which("redis-server") or ""
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return "redis-server is not installed and apt-get is not usable (not root)"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}"
        return shutil.which("redis-server") or "apt-get installed redis-server but it is not on PATH"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server") or _install_redis()
    if not exe.startswith("/"):
        pytest.skip(exe)
    workdir = tmp_path_factory.mktemp("redis")
    sock = str(workdir / "redis.sock")
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_redis(proc, sock)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_for_redis(proc: subprocess.Popen[bytes], sock: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            import redis
            if redis.Redis(unix_socket_path=sock).ping():
                return
        except Exception:  # not accepting yet (redis.ConnectionError)
            time.sleep(0.02)          # polling a condition, bounded by the deadline
    raise RuntimeError("redis-server did not answer PING within 10 s")


# -- the compiled request path ----------------------------------------------

def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a mypyc extension older than its source: Python would
    import the stale extension and the tests would check old code."""
    package = Path(__file__).parent.parent / "pyresty"
    stale = [str(so.relative_to(package.parent)) for so in package.rglob("*.so")
             if so.with_name(so.name.split(".")[0] + ".py").stat().st_mtime > so.stat().st_mtime]
    if stale:
        pytest.exit("compiled modules older than their source: " + ", ".join(stale)
                    + "; `make test` rebuilds them", returncode=4)
