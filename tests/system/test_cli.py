"""The command line: -t, the welcome page, --dev, and code loading across reloads."""
from __future__ import annotations

import signal
import socket
import subprocess
import pytest

from harness import PYRESTY, http_get, session_pids, wait_for

pytestmark = pytest.mark.timeout(90)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import asyncio

async def hello(r):
    await r.say("v1")

async def slow(r):
    await r.say("started")
    await r.flush()
    await asyncio.sleep(1.0)
    await r.say("slow v1")
'''

CONFIG = '''
workers = 1
worker_shutdown_timeout = "5s"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /hello"
content = "app:hello"
[[server.location]]
path = "= /slow"
content = "app:slow"
'''


def test_t_accepts_a_good_config(make_server):
    server = make_server(CONFIG, {"app.py": APP}, start=False)
    result = server.cli("-t")
    assert result.returncode == 0
    assert "test is successful" in result.stdout


def test_t_reports_every_config_error_with_file_and_key(make_server):
    server = make_server('workrs = 2\n' + CONFIG + '\n[upstream.api]\nservers = ["127.0.0.1:1"]\n'
                         'keepalive = -1\n',
                         {"app.py": APP}, start=False)
    result = server.cli("-t")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any('workrs: unknown key (did you mean "workers"?)' in line for line in lines)
    assert any("upstream.api.keepalive: invalid value -1" in line for line in lines)
    assert all(line.startswith(str(server.config_path)) or line.startswith("pyresty.toml")
               for line in lines), lines
    assert "Traceback" not in result.stderr


def test_t_imports_handlers_in_a_child(make_server):
    server = make_server(CONFIG, {"app.py": "async def hello(r):\n    pass\n"}, start=False)
    result = server.cli("-t")
    assert result.returncode == 1
    assert 'server[0].location[1].content: cannot use "app:slow"' in result.stderr
    assert "has no attribute 'slow'" in result.stderr


def test_welcome_page_without_config(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("port 8080 is taken on this machine: the welcome page needs it")
    proc = subprocess.Popen(PYRESTY, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answered():
            try:
                return http_get(8080, "/", timeout=2)
            except OSError:
                return None
        status, headers, body = wait_for(answered, 10, "the welcome page")
        assert status == 200 and b"Welcome to pyresty!" in body
        assert headers["content-type"] == "text/html"
    finally:
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(10) == 0
        proc.stdout.close()
    assert not session_pids(proc.pid)


def test_reload_runs_new_code_while_old_generation_finishes_old_code(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"started" in slow.recv(4096)   # the old generation is handling it
    (server.prefix / "app.py").write_text(APP.replace("v1", "v2"))
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    wait_for(lambda: http_get(server.port, "/hello")[2] == b"v2\n", 5, "the new code")
    reply = b""
    while b"slow v" not in reply:
        chunk = slow.recv(4096)
        assert chunk
        reply += chunk
    assert b"slow v1" in reply
    slow.close()


def test_dev_mode_reloads_on_change_and_survives_syntax_errors(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY, args=("--dev",),
                         expect_log=(r"cannot load handlers",))
    (server.prefix / "app.py").write_text(APP.replace("v1", "v2"))
    server.wait_log(r"generation 2 ready", timeout=20)
    wait_for(lambda: http_get(server.port, "/hello")[2] == b"v2\n", 5, "the new code")
    (server.prefix / "app.py").write_text("def broken(:\n")
    server.wait_log(r"reload abandoned", timeout=20)
    assert "SyntaxError" in server.log_text()
    assert http_get(server.port, "/hello")[2] == b"v2\n"


SEED003 = {
    "app/__init__.py": "",
    "app/models/__init__.py": "",
    "app/models/prestop.py": '''
        import logging
        logging.getLogger("pyresty.app").warning("prestop.py executed")
        state = {"prestop": False}
    ''',
    "app/handler.py": '''
        import prestop
        import app.models.prestop

        async def check(r):
            prestop.state["prestop"] = True          # set through one name...
            seen = app.models.prestop.state["prestop"]  # ...read through the other
            await r.say(seen, " ", prestop is app.models.prestop)
    ''',
}


def test_seed003_one_file_is_one_module(make_server):
    server = make_server('''
        workers = 1
        code_path = [".", "app/models"]
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "= /check"
        content = "app.handler:check"
    ''', SEED003, ready=READY)
    assert http_get(server.port, "/check")[2] == b"True True\n"
    text = server.log_text()
    warnings = [line for line in text.splitlines() if "already loaded as" in line]
    assert len(warnings) == 1, text
    assert '"prestop"' in warnings[0] and '"app.models.prestop"' in warnings[0]
    assert "app/models/prestop.py" in warnings[0]
    assert text.count("prestop.py executed") == 1


def test_error_log_format_and_usr1_reopen(make_server):
    import os
    import re
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    line = server.log_text().splitlines()[0]
    assert re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(info|notice)\] \d+#-: ", line), line
    assert re.search(r"\[info\] \d+#0: serving", server.log_text())
    rotated = server.error_log.with_suffix(".log.1")
    os.rename(server.error_log, rotated)
    server.signal(signal.SIGUSR1)
    wait_for(lambda: server.error_log.exists(), 5, "a new error log after USR1")
    server.wait_log(r"reopening logs")


def test_quickstart_config_is_valid():
    """`make run` serves examples/quickstart: it must always pass -t."""
    from pathlib import Path
    config = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "pyresty.toml"
    result = subprocess.run([*PYRESTY, "-t", "-c", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stdout


def test_reload_of_a_single_process_server_is_refused(make_server):
    server = make_server(CONFIG.replace("workers = 1", "workers = 0"), {"app.py": APP},
                         ready=r"\[notice\] .*ready")
    result = server.cli("-s", "reload")
    assert result.returncode == 1 and "needs a master process" in result.stderr
    assert http_get(server.port, "/hello")[2] == b"v1\n"
