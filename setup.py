"""Build step: compile the per-request hot path to C extensions with mypyc.

The modules in ``HOT_PATH`` run for every request and every received byte
string; compiled, they cost about half the CPU instructions (bench/README).
They stay plain Python source: the same files run interpreted when
``PYRESTY_PURE_PYTHON=1`` is set at build time or when no C compiler is
available (a warning says so), and pyresty behaves the same either way, only
slower. A type error in one of them fails the build: mypyc needs correct
annotations, and a silent fallback would hide a slow server.

An editable install (``make``) builds the extensions next to their ``.py``
files; ``tests/conftest.py`` refuses to test an extension older than its
source, and the Makefile rebuilds them when a source changes.
"""
from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_PATH = [
    "pyresty/http/client.py",
    "pyresty/http/headers.py",
    "pyresty/http/parser.py",
    "pyresty/http/persistence.py",
    "pyresty/http/response.py",
    "pyresty/runtime/limit/rules.py",
    "pyresty/runtime/shared/embedded.py",
    "pyresty/server/connection.py",
    "pyresty/server/h2connection.py",
    "pyresty/server/limits.py",
    "pyresty/server/phases.py",
    "pyresty/server/request.py",
    "pyresty/server/routes.py",
    "pyresty/server/server.py",
    "pyresty/server/state.py",
    "pyresty/server/stream.py",
    "pyresty/upstream/balancer.py",
    "pyresty/upstream/pool.py",
    "pyresty/upstream/proxy.py",
]


class OptionalBuildExt(build_ext):
    """Build every extension, or none: without a C compiler, plain Python.

    All or nothing because the compiled modules share one runtime library
    module; a module whose library did not build would fail to import.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - distutils raises several unrelated types
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            print(f"warning: pyresty's request path was not compiled ({exc}); "
                  "it runs as plain Python, correct but slower", file=sys.stderr)


def ext_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("PYRESTY_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on"):
        return []
    from mypyc.build import mypycify
    return mypycify(HOT_PATH, opt_level="3", debug_level="1")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
