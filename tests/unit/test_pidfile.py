"""``pidfile.locate``: the pid file and control socket ``pyresty -s`` finds
without the config layer must be the ones the config loader computes."""
from __future__ import annotations

from pathlib import Path

import pytest

from pyresty import config as configuration
from pyresty.supervisor.pidfile import DEFAULT_PID, control_socket_for, locate

pytestmark = pytest.mark.timeout(10)

SERVER = '\n[[server]]\nlisten = "127.0.0.1:8080"\n'


@pytest.mark.parametrize("top, prefix", [
    ("", None),
    ('pid = "run/x.pid"\n', None),
    ('pid = "/tmp/abs/pyresty.pid"\n', None),
    ('pid = "../up/p"\n', None),              # no .pid suffix: the socket is p.sock
    ('pid = "run/x.pid"\nworkers = 0\n', "other"),
    ("workers = 3\n", "other"),
    ('"pid" = "quoted.pid"\n', None),
    ('  pid="spaced.pid"\n', None),
    ('# pid = "not/this.pid"\nerror_log = "pid.log"\n', None),   # no pid line: the default
])
def test_locate_agrees_with_the_config_loader(tmp_path: Path, top: str, prefix: str | None) -> None:
    path = tmp_path / "conf" / "pyresty.toml"
    path.parent.mkdir()
    path.write_text(top + SERVER)
    full_prefix = str(tmp_path / prefix) if prefix else None
    config = configuration.load(str(path), full_prefix)
    located = locate(str(path), full_prefix)
    assert located is not None
    assert (located, control_socket_for(located)) == (config.pid, config.control_socket)


def test_the_default_pid_is_the_configs() -> None:
    assert DEFAULT_PID == configuration.Config.__dataclass_fields__["pid"].default


@pytest.mark.parametrize("text", ["pid = ", "pid = 3\n", "pid = 'x'\n[[server]\n"])
def test_locate_is_none_when_unsure(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pyresty.toml"
    path.write_text(text)
    assert locate(str(path), None) is None
    assert locate(str(tmp_path / "missing.toml"), None) is None
