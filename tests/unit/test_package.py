"""The package's shape: a lazy public facade, one version, and a supervisor
that loads neither the HTTP layer nor the server (each checked in a fresh
interpreter, since this one has imported everything already)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pyresty

pytestmark = pytest.mark.timeout(60)


def _modules_after(statement: str) -> set[str]:
    """The pyresty modules a fresh interpreter holds after running ``statement``."""
    code = (f"import sys\n{statement}\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('pyresty'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def _layer(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.mark.parametrize("module", ["pyresty.supervisor.master", "pyresty.supervisor.single",
                                    "pyresty.supervisor.control", "pyresty.supervisor.metrics"])
def test_importing_the_supervisor_loads_neither_http_nor_server(module: str) -> None:
    modules = _modules_after(f"import {module}")
    assert module in modules
    assert _layer(modules, "pyresty.http") == []
    assert _layer(modules, "pyresty.server") == []


def test_import_pyresty_loads_only_the_facade() -> None:
    assert _modules_after("import pyresty") == {"pyresty", "pyresty._version", "pyresty.purepython"}


def test_each_public_name_is_imported_on_first_use() -> None:
    modules = _modules_after("import pyresty; pyresty.TimerError; pyresty.process.type()")
    assert "pyresty.errors" in modules and "pyresty.runtime.process" in modules
    assert _layer(modules, "pyresty.server") == [] and "pyresty.runtime.shared" not in modules


def test_the_facade_keeps_its_names() -> None:
    assert pyresty.__all__ == sorted(pyresty.__all__)
    for name in pyresty.__all__:
        assert getattr(pyresty, name) is not None, name
    assert set(pyresty.__all__) <= set(dir(pyresty))
    assert pyresty.process.type() in ("single", "master", "worker", "privileged agent")
    from pyresty import process, worker
    assert process is pyresty.process and worker is pyresty.worker
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pyresty.nothing  # noqa: B018


def test_the_version_is_defined_once_and_the_server_header_uses_it() -> None:
    from importlib.metadata import version

    from pyresty._version import __version__
    from pyresty.http.response import SERVER
    assert pyresty.__version__ == __version__ == version("pyresty")
    assert SERVER == f"pyresty/{__version__}"
    # http/ must not import the facade: that was a cycle resolved by import order
    modules = _modules_after("import pyresty.http.response")
    assert _layer(modules, "pyresty.server") == [] and "pyresty.runtime.process" not in modules
