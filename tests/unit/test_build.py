"""The request path is compiled with mypyc (setup.py), and the same source
still serves when it runs interpreted (``PYRESTY_PURE_PYTHON=1``)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def hot_path() -> list[str]:
    """setup.py's HOT_PATH, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HOT_PATH":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no HOT_PATH")


def modules(**env: str) -> dict[str, str]:
    """Where each hot module is imported from, in a fresh interpreter whose
    environment has ``env`` and otherwise no PYRESTY_PURE_PYTHON."""
    names = [p.removesuffix(".py").replace("/", ".") for p in hot_path()]
    code = ("import importlib, json, sys\n"
            "import pyresty\n"
            f"print(json.dumps({{n: importlib.import_module(n).__file__ for n in {names!r}}}))")
    base = {k: v for k, v in os.environ.items() if k != "PYRESTY_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**base, **env}, timeout=60, check=True)
    return json.loads(out.stdout)


def test_hot_path_modules_exist() -> None:
    for path in hot_path():
        assert (ROOT / path).is_file(), path


@pytest.mark.skipif(os.environ.get("PYRESTY_PURE_PYTHON", "").lower() in ("1", "true", "yes", "on"),
                    reason="PYRESTY_PURE_PYTHON is set: the request path runs interpreted")
def test_hot_path_is_compiled() -> None:
    """A build that silently fell back to plain Python would halve throughput."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): setup.py installed the request path as "
                    "plain Python, by design")
    files = modules(PYRESTY_PURE_PYTHON="")
    interpreted = [name for name, file in files.items() if file.endswith(".py")]
    assert not interpreted, f"not compiled (is a C compiler installed? see setup.py): {interpreted}"


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_pure_python_switch_loads_the_source(value: str) -> None:
    files = modules(PYRESTY_PURE_PYTHON=value)
    assert all(file.endswith(".py") for file in files.values()), files


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_pure_python_switch_off_values_keep_the_build(value: str) -> None:
    """Off values import what the install built (compiled, where it compiled)."""
    assert modules(PYRESTY_PURE_PYTHON=value) == modules()


def test_package_metadata_is_current_and_versioned_once() -> None:
    """setuptools >= 77 warns at every install about a ``license`` table (PEP 639):
    the license is an SPDX string, and the version lives in pyresty/_version.py."""
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    assert "setuptools>=77" in project["build-system"]["requires"]
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "pyresty._version.__version__"}
