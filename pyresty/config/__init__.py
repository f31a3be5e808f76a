"""TOML config -> validated, frozen objects (SPEC §3); the only place that reads TOML.

``load(path, prefix=None)`` returns a :class:`Config` or raises
:class:`~pyresty.errors.ConfigError` listing every problem, one line each.
``builtin(port)`` is the welcome-page config used when ``pyresty`` has no ``-c``.
"""
from __future__ import annotations

from pyresty.config.loader import WELCOME_HANDLER, builtin, load
from pyresty.config.model import (
    Config,
    HealthCheck,
    Hooks,
    LimitUse,
    LimitZone,
    Listen,
    Location,
    Peer,
    Server,
    SharedDictSpec,
    Status,
    Upstream,
)
from pyresty.config.units import parse_duration, parse_size

__all__ = [
    "WELCOME_HANDLER",
    "Config",
    "HealthCheck",
    "Hooks",
    "LimitUse",
    "LimitZone",
    "Listen",
    "Location",
    "Peer",
    "Server",
    "SharedDictSpec",
    "Status",
    "Upstream",
    "builtin",
    "load",
    "parse_duration",
    "parse_size",
]
