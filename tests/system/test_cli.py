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
    *problems, summary = lines
    assert all(line.startswith(str(server.config_path)) or line.startswith("pyresty.toml")
               for line in problems), lines
    # the one-line verdict comes for config errors too, as for handler errors (nginx -t)
    assert summary == f"pyresty: configuration file {server.config_path} test failed"
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


# -- what a newcomer sees on the terminal (issue 16) ---------------------------

def _run(server, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The server in the foreground until it exits on its own (a start-up failure)."""
    return subprocess.run([*PYRESTY, "-c", str(server.config_path), *args], cwd=server.prefix,
                          capture_output=True, text=True, timeout=timeout)


def test_version():
    from pyresty._version import __version__
    result = subprocess.run([*PYRESTY, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == f"pyresty {__version__}"


def test_a_taken_address_is_named_on_stderr(make_server):
    server = make_server(CONFIG, {"app.py": APP}, start=False)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        result = _run(server)
    assert result.returncode == 1
    assert (f"pyresty: cannot listen on 127.0.0.1:{server.port}: address already in use"
            in result.stderr), result.stderr
    assert "[emerg] " in server.log_text() and "address already in use" in server.log_text()


def test_a_taken_status_address_names_the_status_listener(make_server):
    server = make_server(CONFIG + '[status]\nlisten = "127.0.0.1:{port2}"\n', {"app.py": APP},
                         start=False)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.ports[1]))
        squatter.listen()
        result = _run(server)
    assert result.returncode == 1
    assert (f"cannot listen on 127.0.0.1:{server.ports[1]} (the status listener): "
            "address already in use") in result.stderr, result.stderr
    assert "control socket" not in result.stderr


def test_a_second_start_says_already_running_on_stderr(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY, expect_log=(r"already running",))
    result = _run(server)
    assert result.returncode == 1
    assert f"pyresty: already running (pid {server.pid}" in result.stderr, result.stderr


def test_a_boot_failure_at_start_is_on_stderr(make_server):
    server = make_server(CONFIG, {"app.py": "import nowhere_to_be_found\n"}, start=False,
                         expect_log=(r"failed to start", r"cannot load handlers"))
    result = _run(server)
    assert result.returncode == 1
    assert "failed to start; stopping" in result.stderr
    assert "No module named 'nowhere_to_be_found'" in result.stderr, result.stderr


def _stdout_line(server, timeout: float = 10) -> str:
    """The next line the running server printed on its stdout (stderr is merged in)."""
    import select
    assert server.proc is not None and server.proc.stdout is not None
    ready, _, _ = select.select([server.proc.stdout], [], [], timeout)
    assert ready, "the server printed nothing"
    return server.proc.stdout.readline().decode()


def test_a_started_server_says_where_it_listens_logs_and_how_to_stop(make_server):
    server = make_server(CONFIG + '[status]\nlisten = "127.0.0.1:{port2}"\n', {"app.py": APP},
                         ready=READY)
    line = _stdout_line(server)
    assert line.startswith(f"pyresty: serving on http://127.0.0.1:{server.port}"), line
    assert f"status at http://127.0.0.1:{server.ports[1]}/status" in line
    assert f"error log: {server.error_log}" in line
    assert f"pyresty -s quit -c {server.config_path}" in line and "Ctrl-C" in line


def test_s_without_c_says_where_it_looked(tmp_path):
    result = subprocess.run([*PYRESTY, "-s", "reload"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "no running master: pid file" in result.stderr
    assert "without -c" in result.stderr and "give -c FILE" in result.stderr


def test_s_never_signals_a_pid_that_is_not_this_prefixs_master(make_server):
    # a stale pid file naming an unrelated process: -s stop killed it
    server = make_server(CONFIG, {"app.py": APP}, start=False)
    pid_file = server.prefix / "logs" / "pyresty.pid"
    pid_file.parent.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{bystander.pid}\n")
        result = server.cli("-s", "stop")
        assert result.returncode == 1
        assert f"not signalling pid {bystander.pid}" in result.stderr
        assert "not a pyresty master" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(5)
    # ... or another prefix's master
    other = make_server(CONFIG, {"app.py": APP}, ready=READY)
    pid_file.write_text(f"{other.pid}\n")
    for command in ("stop", "reload"):
        result = server.cli("-s", command)
        assert result.returncode == 1, result.stderr
        assert f"not signalling pid {other.pid}" in result.stderr
    assert other.proc.poll() is None and "reloading" not in other.log_text()
    result = other.cli("-s", "quit")
    assert result.returncode == 0, result.stderr
    assert other.proc.wait(15) == 0


def test_reload_refused_for_a_taken_address_exits_1_with_the_reason(make_server):
    server = make_server(CONFIG, {"app.py": APP}, ready=READY)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.ports[2]))
        squatter.listen()
        server.write_config(CONFIG.replace('listen = "127.0.0.1:{port}"',
                                           'listen = ["127.0.0.1:{port}", "127.0.0.1:{port3}"]'))
        result = server.cli("-s", "reload")
    assert result.returncode == 1
    assert (f"reload refused: cannot listen on 127.0.0.1:{server.ports[2]}: address already in use"
            in result.stderr), result.stderr
    assert http_get(server.port, "/hello")[2] == b"v1\n"
    result = server.cli("-s", "reload")       # the address is free now
    assert result.returncode == 0, result.stderr
    assert "generation 2 is starting" in result.stdout
    server.wait_log(r"generation 2 ready")
    assert http_get(server.ports[2], "/hello")[2] == b"v1\n"


def test_dev_mode_ignores_its_own_logs_and_reloads_once_per_save(make_server):
    """With the default layout (code_path = "." holds logs/), each log line reloaded
    the workers: 55 reloads in 6 idle seconds. Only sources and the config count."""
    app = APP + '''
import logging

async def chatty(r):
    logging.getLogger("pyresty.app").warning("a log line per request")
    await r.say("ok")
'''
    config = CONFIG.replace('listen = "127.0.0.1:{port}"',
                            'listen = "127.0.0.1:{port}"\naccess_log = "logs/access.log"')
    config += '[[server.location]]\npath = "= /chatty"\ncontent = "app:chatty"\n'
    server = make_server(config, {"app.py": app}, ready=READY, args=("--dev",))
    for round_ in (2, 3):
        for _ in range(20):        # error-log and access-log lines, and their pyc-free imports
            assert http_get(server.port, "/chatty")[0] == 200
        (server.prefix / "__pycache__").mkdir(exist_ok=True)
        (server.prefix / "__pycache__" / "junk.py").write_text("x = 1\n")
        (server.prefix / ".#app.py").write_text("editor lock\n")
        (server.prefix / "app.py~").write_text("backup\n")
        (server.prefix / "app.py").write_text(app.replace("v1", f"v{round_}"))
        server.wait_log(rf"generation {round_} ready", timeout=20)
        wait_for(lambda: http_get(server.port, "/hello")[2] == f"v{round_}\n".encode(), 5,
                 "the new code")
    reloads = [line for line in server.log_text().splitlines() if "--dev:" in line]
    assert len(reloads) == 2, reloads
    assert all("--dev: app.py changed" in line for line in reloads), reloads
    assert "generation 4" not in server.log_text()
