"""``--dev`` watches Python sources under code_path and the config file, nothing else."""
from __future__ import annotations

import pytest

from pyresty.config.model import Config
from pyresty.supervisor.devwatch import Watched

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def watched(tmp_path):
    (tmp_path / "lib").mkdir()
    config = Config(path=str(tmp_path / "pyresty.toml"), prefix=str(tmp_path),
                    code_path=(str(tmp_path), str(tmp_path / "lib"), str(tmp_path / "missing")))
    return Watched(config), tmp_path


@pytest.mark.parametrize("relative, expected", [
    ("pyresty.toml", True),
    ("app.py", True),
    ("app/handlers/hello.py", True),
    ("lib/util.py", True),
    # the server's own output, in the default layout (everything under the prefix)
    ("logs/error.log", False),
    ("logs/access.log", False),
    ("logs/pyresty.pid", False),
    ("logs/pyresty.sock", False),
    ("logs/pyresty.pid.1234.tmp", False),
    # compiled files and editors' leftovers
    ("app/__pycache__/hello.cpython-311.pyc", False),
    ("app/__pycache__/hello.py", False),
    ("app/.#hello.py", False),
    ("app/hello.py~", False),
    ("app/#hello.py#", False),
    ("app/.hello.py.swp", False),
    ("app/4913", False),
    (".git/hooks/pre-commit.py", False),
    ("other.toml", False),
    ("public/index.html", False),
])
def test_what_triggers_a_reload(watched, relative, expected) -> None:
    is_watched, prefix = watched
    assert is_watched(str(prefix / relative)) is expected


def test_outside_code_path_nothing_is_watched_but_the_config(tmp_path) -> None:
    (tmp_path / "code").mkdir()
    watched = Watched(Config(path=str(tmp_path / "conf" / "pyresty.toml"), prefix=str(tmp_path),
                             code_path=(str(tmp_path / "code"),)))
    assert watched(str(tmp_path / "code" / "a.py"))
    assert not watched(str(tmp_path / "conf" / "b.py"))
    assert watched(str(tmp_path / "conf" / "pyresty.toml"))
    assert watched.roots() == [str(tmp_path / "code"), str(tmp_path / "conf")]
