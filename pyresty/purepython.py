"""``PYRESTY_PURE_PYTHON=1``: run the hot path from its ``.py`` source even
where setup.py compiled it with mypyc.

The compiled and the interpreted module are the same source; interpreted is
slower but lets pdb step through it and profilers see its frames. The switch
is read once, when ``pyresty`` is first imported, and is inherited by the
workers the master forks.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

ENV = "PYRESTY_PURE_PYTHON"
PACKAGES = ("pyresty.http.", "pyresty.server.", "pyresty.upstream.",   # where setup.py's
            "pyresty.runtime.")                                         # compiled modules live


class SourceFirst:
    """A meta path finder that picks ``name.py`` over ``name.*.so`` in PACKAGES."""

    @staticmethod
    def find_spec(fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PACKAGES) or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            source = os.path.join(folder, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def enabled() -> bool:
    """``PYRESTY_PURE_PYTHON`` is 1, true, yes or on (any case); 0, false or unset is off."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def install() -> None:
    """Put the finder first when ``PYRESTY_PURE_PYTHON`` is on (idempotent)."""
    if enabled() and not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst())


def compiled() -> bool:
    """True when the request path runs the mypyc-compiled modules."""
    from pyresty.server import connection
    return not connection.__file__.endswith(".py")


def describe() -> str:
    """For the start-up log line."""
    if compiled():
        return "request path compiled (mypyc)"
    reason = f"{ENV} is on" if enabled() else "not compiled at install"
    return f"request path interpreted ({reason})"
