"""The error and access logs at their edges: a reopen (USR1, ``pyresty -s
reopen``) whose file cannot be opened again (its folder moved, workers dropped
to ``user``), and reloads that change ``error_log`` or its level. nginx logs an
alert and keeps the file it has; a reopen or a reload must never stop a
process, let alone the server, nor leave a log on a closed descriptor."""
from __future__ import annotations

import os
import signal

import pytest

from harness import http_get, wait_for

pytestmark = pytest.mark.timeout(60)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import logging

async def hello(r):
    logging.getLogger("app").warning("hello served")
    await r.say("hello")
'''


# one worker serving /hello, with an error_log line of the test's
ERROR_LOG_CONFIG = '''
    workers = 1
    {error_log}
    [[server]]
    listen = "127.0.0.1:{{port}}"
    [[server.location]]
    path = "= /hello"
    content = "app:hello"
'''


@pytest.mark.parametrize("workers", [1, 0])
def test_a_reopen_that_cannot_open_the_log_keeps_the_server_serving(make_server, workers):
    server = make_server(f'''
        workers = {workers}
        [[server]]
        listen = "127.0.0.1:{{port}}"
        [[server.location]]
        path = "= /hello"
        content = "app:hello"
    ''', {"app.py": APP}, ready=READY if workers else r"ready: single process")
    logs, moved = server.prefix / "logs", server.prefix / "logs.rotated"
    logs.rename(moved)                       # the folder is gone: open() fails
    server.signal(signal.SIGUSR1)
    old = moved / "error.log"
    wait_for(lambda: "could not reopen" in old.read_text(), 5, "the alert in the old file")
    assert server.proc.poll() is None
    assert http_get(server.port, "/hello")[0] == 200
    wait_for(lambda: old.read_text().count("hello served") == 1, 5,
             "the worker to log on in the file it had")
    # the folder is back: the next reopen takes the new file
    logs.mkdir()
    server.signal(signal.SIGUSR1)
    wait_for(lambda: (logs / "error.log").exists(), 5, "the new error log")
    assert http_get(server.port, "/hello")[0] == 200
    wait_for(lambda: "hello served" in (logs / "error.log").read_text(), 5,
             "the worker to log in the new file")
    alerts = [line for line in old.read_text().splitlines() if "[alert]" in line]
    assert alerts and all("could not reopen the error log" in line for line in alerts), alerts


def test_an_error_log_that_cannot_be_opened_is_refused_at_start_t_and_reload(make_server):
    """A reload to an ``error_log`` the master cannot open passed every check,
    then raised when the new generation became current: the master exited and
    both generations with it. Now ``-t``, the start and the reload refuse it."""
    server = make_server(ERROR_LOG_CONFIG.format(error_log=""), {"app.py": APP}, ready=READY)
    bad = 'error_log = "/proc/no-such-dir/error.log"'
    server.write_config(ERROR_LOG_CONFIG.format(error_log=bad))
    problem = 'error_log: cannot open "/proc/no-such-dir/error.log"'
    checked = server.cli("-t")
    assert checked.returncode == 1 and problem in checked.stderr, checked.stderr
    reloaded = server.cli("-s", "reload")
    assert reloaded.returncode == 1 and problem in reloaded.stderr, reloaded.stderr
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload refused", count=2)
    assert server.proc.poll() is None
    assert http_get(server.port, "/hello")[0] == 200
    import subprocess
    from harness import PYRESTY
    started = subprocess.run([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                             capture_output=True, text=True, timeout=20)
    assert started.returncode == 1 and problem in started.stderr, started.stderr
    assert "Traceback" not in started.stderr


def test_a_reload_that_changes_error_log_and_its_level_moves_the_workers_too(make_server):
    """The new generation was forked with the master's log handler, before the
    master switched to the new file: its workers wrote on to the old file at
    the old level (a reload to ``debug`` to look into a problem showed nothing)."""
    app = '''
        import logging, os

        async def hello(r):
            logging.getLogger("app").debug("debug from %s", os.getpid())
            logging.getLogger("app").warning("warn from %s", os.getpid())
            await r.say(os.getpid())
    '''
    server = make_server(ERROR_LOG_CONFIG.format(error_log=""), {"app.py": app}, ready=READY)
    server.write_config(ERROR_LOG_CONFIG.format(
        error_log='error_log = "logs/new/error.log"\nerror_log_level = "debug"'))
    server.signal(signal.SIGHUP)
    new = server.prefix / "logs" / "new" / "error.log"
    wait_for(lambda: new.exists() and "generation 2 ready" in new.read_text(), 10,
             "the master in the new log")
    pid = int(http_get(server.port, "/hello")[2])
    wait_for(lambda: f"warn from {pid}" in new.read_text(), 5, "the worker in the new log")
    assert f"debug from {pid}" in new.read_text()
    assert f"from {pid}" not in server.error_log.read_text()


def test_a_reopen_that_cannot_open_the_access_log_keeps_it_and_sends_clients_nothing_else(
        make_server):
    """The access log closed its file before opening the new one: when the open
    failed it kept the closed descriptor, which the next accepted connection
    reused, and access-log lines went out inside that client's responses."""
    server = make_server('''
        workers = 1
        [[server]]
        listen = "127.0.0.1:{port}"
        access_log = "logs/access.log"
        [[server.location]]
        path = "= /hello"
        content = "app:hello"
    ''', {"app.py": APP}, ready=READY)
    import select

    import client
    logs, moved = server.prefix / "logs", server.prefix / "logs.rotated"
    logs.rename(moved)
    server.signal(signal.SIGUSR1)
    wait_for(lambda: "could not reopen the access log" in (moved / "error.log").read_text(), 5,
             "the alert")
    old_access = moved / "access.log"
    conn = client.Connection(server.port)
    try:
        for n in (1, 2, 3):
            resp = conn.request("GET", "/hello")
            assert resp.status == 200 and resp.body == b"hello\n"
            # the line goes to the file still open, once flushed ...
            wait_for(lambda: old_access.read_text().count("GET /hello") == n, 5,
                     "the line in the access log still open")
            # ... and nothing more to this client
            assert select.select([conn.sock], [], [], 0)[0] == []
    finally:
        conn.close()
    logs.mkdir()
    server.signal(signal.SIGUSR1)
    wait_for(lambda: (logs / "access.log").exists(), 5, "the new access log")
    assert http_get(server.port, "/hello")[0] == 200
    wait_for(lambda: "GET /hello" in (logs / "access.log").read_text(), 5,
             "the line in the new access log")


def test_logrotate_with_workers_dropped_to_a_user_reaches_the_new_files():
    """Workers that run as ``user`` cannot create a file in a folder root owns:
    after logrotate moved the logs, every USR1 left them on the rotated files
    (and before that, on a closed error log and a reused access-log
    descriptor). The master creates the new files for them first and hands
    them to that user, as nginx does."""
    import pathlib
    import pwd
    import shutil
    import tempfile

    from harness import Pyresty
    if os.geteuid() != 0:
        pytest.skip("needs root to change user")
    nobody = pwd.getpwnam("nobody")
    prefix = tempfile.mkdtemp(prefix="pyresty-rotate-")
    os.chmod(prefix, 0o755)      # readable by nobody (pytest's tmp folders are 0700)
    try:
        server = Pyresty(pathlib.Path(prefix), '''
            workers = 1
            user = "nobody"
            [[server]]
            listen = "127.0.0.1:{port}"
            access_log = "logs/access.log"
            [[server.location]]
            path = "= /hello"
            content = "app:hello"
        ''', {"app.py": APP})
        os.chmod(os.path.join(prefix, "app.py"), 0o644)
        server.start(ready=READY)
        try:
            logs = server.prefix / "logs"
            for name in ("error.log", "access.log"):
                (logs / name).rename(logs / f"{name}.1")
            server.signal(signal.SIGUSR1)
            wait_for(lambda: (logs / "access.log").exists(), 5, "the new access log")
            wait_for(lambda: "reopening logs" in (logs / "error.log").read_text(), 5,
                     "the master in the new error log")
            assert (logs / "access.log").stat().st_uid == nobody.pw_uid
            assert http_get(server.port, "/hello")[0] == 200
            wait_for(lambda: "hello served" in (logs / "error.log").read_text(), 5,
                     "the worker in the new error log")
            wait_for(lambda: "GET /hello" in (logs / "access.log").read_text(), 5,
                     "the worker in the new access log")
            assert "could not reopen" not in (logs / "error.log.1").read_text()
        finally:
            server.stop()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
