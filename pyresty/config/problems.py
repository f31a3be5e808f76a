"""How a config problem is worded.

Every problem is one line, ``<file as given>: <key path>: <reason>``, the way
nginx's ``ngx_conf_file.c`` prefixes every message with file:line. Validators
know only the value, so they raise ``ValueError(reason)``; whoever walks the
document knows where it is and adds the file and key path through
:class:`Problems`. Bad values are always worded
``invalid value <as written> (expected <what>)``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["Problems", "invalid", "join_key", "show", "unknown_key"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHOW_MAX = 60


def show(value: object) -> str:
    """Render a TOML value the way the user wrote it, short enough for one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + " }"
    else:
        text = str(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def invalid(value: object, expected: str) -> ValueError:
    """The one shape every bad value is reported in: ``invalid value X (expected Y)``."""
    return ValueError(f"invalid value {show(value)} (expected {expected})")


def join_key(parent: str, name: str) -> str:
    """``upstream`` + ``api`` -> ``upstream.api``; names that are not bare TOML keys get quotes."""
    part = name if _BARE_KEY.fullmatch(name) else show(name)
    return f"{parent}.{part}" if parent else part


def unknown_key(name: str, known: Iterable[str]) -> str:
    """The reason for a key the schema does not have, with the closest known key as a hint."""
    choices = sorted(known)
    import difflib   # here: only a misspelt key pays for it
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return "unknown key (known: " + ", ".join(choices) + ")"


class Problems:
    """Collects every problem of one file, each as a finished line."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lines: list[str] = []

    def add(self, key: str, reason: str) -> None:
        """Record ``reason`` at ``key`` (an empty key means the file as a whole)."""
        self.lines.append(f"{self.label}: {key}: {reason}" if key else f"{self.label}: {reason}")

    def __bool__(self) -> bool:
        return bool(self.lines)
