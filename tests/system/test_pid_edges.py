"""The pid file and the control socket beside it: what ``pyresty -s`` and
``status`` find. A stopped server leaves neither behind; a reload that moves
``pid`` moves both (nginx writes the new pid file and removes the old one), so
the commands that read the new config still find the master."""
from __future__ import annotations

import signal

import pytest

from harness import http_get

pytestmark = pytest.mark.timeout(60)

READY = r"\[notice\] .*generation (\d+) ready"

CONFIG = '''
workers = 1
{pid}
[[server]]
listen = "127.0.0.1:{{port}}"
[[server.location]]
path = "= /hello"
content = "app:hello"
'''

APP = '''
async def hello(r):
    await r.say("hello")
'''


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM])
def test_a_stopped_server_leaves_no_pid_file_and_no_control_socket(make_server, sig):
    server = make_server(CONFIG.format(pid=""), {"app.py": APP}, ready=READY)
    logs = server.prefix / "logs"
    assert (logs / "pyresty.pid").exists() and (logs / "pyresty.sock").exists()
    assert server.stop(sig) == 0
    assert not (logs / "pyresty.pid").exists()
    assert not (logs / "pyresty.sock").exists()


def test_a_reload_that_moves_the_pid_file_moves_the_control_socket_too(make_server):
    server = make_server(CONFIG.format(pid=""), {"app.py": APP}, ready=READY)
    logs = server.prefix / "logs"
    server.write_config(CONFIG.format(pid='pid = "run/other.pid"'))
    # HUP: `-s reload` reads the new path and finds no master there yet (nginx alike)
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    run = server.prefix / "run"
    assert (run / "other.pid").read_text().strip() == str(server.pid)
    assert (run / "other.sock").exists()
    assert not (logs / "pyresty.pid").exists() and not (logs / "pyresty.sock").exists()
    status = server.cli("status")
    assert status.returncode == 0 and "worker" in status.stdout, status.stderr
    assert http_get(server.port, "/hello")[0] == 200
    quit_ = server.cli("-s", "quit")
    assert quit_.returncode == 0, quit_.stderr
    assert server.proc.wait(10) == 0
    assert not (run / "other.pid").exists() and not (run / "other.sock").exists()


def test_a_reload_that_moves_the_status_listener_rebinds_it(make_server):
    """``[status] listen`` changed by a reload was ignored: the readiness probe
    pointed at the new address failed, and nothing said why."""
    import socket
    config = CONFIG.format(pid="") + '[status]\nlisten = "127.0.0.1:{status}"\n'
    server = make_server(config.replace("{status}", "{port2}"), {"app.py": APP}, ready=READY)
    assert http_get(server.ports[1], "/status")[0] == 200
    server.write_config(config.replace("{status}", "{port3}"))
    server.signal(signal.SIGHUP)
    server.wait_log(r"generation 2 ready")
    assert http_get(server.ports[2], "/status")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.ports[1]), timeout=5).close()


def test_a_reload_onto_another_servers_pid_file_leaves_it_alone(make_server):
    first = make_server(CONFIG.format(pid=""), {"app.py": APP}, ready=READY)
    theirs = first.prefix / "logs" / "pyresty.pid"
    second = make_server(CONFIG.format(pid=""), {"app.py": APP}, ready=READY,
                         expect_log=(r"belongs to another running server",))
    second.write_config(CONFIG.format(pid=f'pid = "{theirs}"'))
    second.signal(signal.SIGHUP)
    second.wait_log(r"\[alert\] .*belongs to another running server")
    assert theirs.read_text().strip() == str(first.pid)
    assert (first.prefix / "logs" / "pyresty.sock").exists()
    status = first.cli("status")
    assert status.returncode == 0, status.stderr
    assert (second.prefix / "logs" / "pyresty.pid").read_text().strip() == str(second.pid)
