"""The master out of file descriptors: a reload that cannot create a worker's
channel (EMFILE) is refused and logged; the master and the generation serving
now go on (it used to raise out of the signal dispatch: the master exited, its
workers followed, and the error went nowhere)."""
from __future__ import annotations

import os
import resource
import signal
import subprocess

import pytest

from harness import PYRESTY, http_get

pytestmark = pytest.mark.timeout(60)

CONFIG = '''
workers = 1
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /hello"
content = "app:hello"
'''

APP = '''
async def hello(r):
    await r.say("hello")
'''


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _start_with_nofile(server, soft: int) -> None:
    def limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server.proc = subprocess.Popen([*PYRESTY, "-c", str(server.config_path)], cwd=server.prefix,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=limit, close_fds=True)
    server.wait_log(r"generation 1 ready")


def test_a_master_out_of_descriptors_refuses_the_reload_and_serves_on(make_server):
    probe = make_server(CONFIG, {"app.py": APP}, ready=r"generation 1 ready")
    steady = _fds(probe.pid)          # what a started master holds (1 worker)
    probe.stop()
    server = make_server(CONFIG, {"app.py": APP}, start=False)
    _start_with_nofile(server, steady + 1)   # one to spare: a channel needs two
    assert _fds(server.pid) == steady
    server.signal(signal.SIGHUP)
    server.wait_log(r"reload refused: cannot start the new generation: .*Too many open files")
    assert server.proc.poll() is None
    assert http_get(server.port, "/hello")[0] == 200
    assert server.stop(signal.SIGQUIT) == 0
