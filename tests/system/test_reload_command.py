"""``pyresty -s reload``: the master runs the ``-t`` checks (the handlers
imported in a child it forks, never in the master) with its loop serving on,
reloads the config it checked, and the command exits 0, or 1 with every problem.
Real servers and the real command; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from harness import PYRESTY, http_get, wait_for

# Each import leaves a file naming the importing process and its parent;
# with a file "slow" present, the import takes a while.
APP = '''
import os, time
from pathlib import Path

Path(f"imported-{os.getpid()}-{os.getppid()}").touch()
if Path("slow").exists():
    time.sleep(1.5)

async def hello(r):
    await r.say("v", Path("version").read_text().strip() if Path("version").exists() else "1")
'''

CONFIG = '''
workers = 1
worker_shutdown_timeout = "3s"

[status]
listen = "127.0.0.1:{port2}"

[[server]]
listen = "127.0.0.1:{port}"

[[server.location]]
path = "= /hello"
content = "app:hello"
'''

READY = r"\[notice\] .*generation (\d+) ready"


def _importers(server) -> set[tuple[int, int]]:
    return {(int(pid), int(ppid)) for _, pid, ppid in
            (p.name.split("-") for p in server.prefix.glob("imported-*"))}


@pytest.mark.timeout(60)
def test_the_check_imports_in_a_child_of_the_master_and_the_master_serves_meanwhile(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    before = _importers(server)
    (server.prefix / "slow").touch()
    (server.prefix / "version").write_text("2")
    command = subprocess.Popen([*PYRESTY, "-s", "reload", "-c", str(server.config_path)],
                               cwd=server.prefix, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        # the check child imports (1.5 s) while the master answers at once
        wait_for(lambda: len(_importers(server) - before) >= 1, 10, "the check's import")
        assert command.poll() is None
        started = time.monotonic()
        status, _, body = http_get(server.ports[1], "/status", timeout=2)
        assert status == 200 and time.monotonic() - started < 1.0
        assert json.loads(body)["processes"][0]["generation"] == 1
        out, err = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(5)
    assert command.returncode == 0, err
    assert "reloading: generation 2 is starting" in out
    server.wait_log(r"generation 2 ready")
    server.wait_log(r"reload checked in [\d.]+ ms")
    # the check ran in a child of the master, which imported nothing itself
    new = _importers(server) - before
    assert any(ppid == server.pid for _, ppid in new), new
    assert all(pid != server.pid for pid, _ in _importers(server))
    wait_for(lambda: http_get(server.port, "/hello")[2] == b"v2\n", 10, "the new code")


@pytest.mark.timeout(60)
def test_reload_command_exit_codes_and_reasons(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    good = server.cli("-s", "reload")
    assert good.returncode == 0 and "reloading: generation 2 is starting" in good.stdout
    server.wait_log(r"generation 2 ready")
    text = server.config_path.read_text()
    # a bad value: every problem, from the master's own parse, exit 1
    server.config_path.write_text(text.replace('worker_shutdown_timeout = "3s"',
                                               'worker_shutdown_timeout = "-3s"\nbogus = 1'))
    bad = server.cli("-s", "reload")
    assert bad.returncode == 1
    assert "worker_shutdown_timeout: invalid value" in bad.stderr
    assert "bogus: unknown key" in bad.stderr
    assert "pyresty: reload refused: the configuration is invalid" in bad.stderr
    # a TOML error: the command cannot even find the pid file from it, and says why
    server.config_path.write_text(text + "\n[[server\n")
    broken = server.cli("-s", "reload")
    assert broken.returncode == 1 and "pyresty.toml" in broken.stderr
    # a handler that does not import: named with its key, exit 1, still generation 2
    server.config_path.write_text(text.replace("app:hello", "app:nothere"))
    missing = server.cli("-s", "reload")
    assert missing.returncode == 1
    assert "server[0].location[0].content:" in missing.stderr
    assert "module app has no attribute 'nothere'" in missing.stderr
    server.config_path.write_text(text)
    assert http_get(server.port, "/hello")[0] == 200
    rows = json.loads(http_get(server.ports[1], "/status")[2])["processes"]
    assert {row["generation"] for row in rows} == {2}
    again = server.cli("-s", "reload")
    assert again.returncode == 0 and "generation 3 is starting" in again.stdout


@pytest.mark.timeout(60)
def test_a_reload_during_a_reload_check_is_queued_not_lost(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    (server.prefix / "slow").touch()
    results: list[subprocess.CompletedProcess[str]] = []

    def reload() -> None:
        results.append(server.cli("-s", "reload"))

    threads = [threading.Thread(target=reload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    server.wait_log(r"generation 3 ready", timeout=20)
    os.unlink(server.prefix / "slow")
