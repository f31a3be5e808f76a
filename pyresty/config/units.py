"""Sizes and durations as operators write them in nginx configs.

Sizes: a number of bytes, or digits followed by ``k``, ``m`` or ``g``
(binary multiples, case-insensitive, as nginx's ``ngx_parse_size``).
Durations: a number of seconds, or one or more ``<number><unit>`` parts with
units ``ms``, ``s``, ``m``, ``h``, ``d`` in decreasing order (``"1m30s"``), as
nginx's ``ngx_parse_time``. Both raise ``ValueError`` whose message is the
reason only; the loader adds the file and key path.
"""
from __future__ import annotations

import math
import re

from pyresty.config.problems import invalid

__all__ = ["parse_duration", "parse_size"]

_SIZE = re.compile(r"(\d+)([kmg]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_EXPECTED = 'a size like "512k", "10m", "1g" or a number of bytes'

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_SECONDS = re.compile(_NUMBER)
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = list(_DURATION_UNITS)  # largest first: "1m30s" yes, "30s1m" no
_DURATION_EXPECTED = 'a duration like "500ms", "10s", "2m", "1h", "1m30s" or a number of seconds'


def parse_size(text: str | int) -> int:
    """``"10m"`` -> 10485760; an int or a digit string is bytes.

    Raises ``ValueError`` for anything else (negative, fractional, unknown unit, bool).
    """
    if isinstance(text, bool):
        raise invalid(text, _SIZE_EXPECTED)
    if isinstance(text, int):
        if text < 0:
            raise invalid(text, _SIZE_EXPECTED)
        return text
    if not isinstance(text, str):
        raise invalid(text, _SIZE_EXPECTED)
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise invalid(text, _SIZE_EXPECTED)
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_duration(text: str | int | float) -> float:
    """``"1m30s"`` -> 90.0; an int, a float or a plain number string is seconds.

    Raises ``ValueError`` for negative or non-finite numbers, unknown units,
    units out of order or repeated, and non-numbers.
    """
    if isinstance(text, bool):
        raise invalid(text, _DURATION_EXPECTED)
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise invalid(text, _DURATION_EXPECTED)
        return float(text)
    if not isinstance(text, str):
        raise invalid(text, _DURATION_EXPECTED)
    stripped = text.strip()
    if _PLAIN_SECONDS.fullmatch(stripped):
        return float(stripped)
    seconds = _sum_parts(stripped)
    if seconds is None:
        raise invalid(text, _DURATION_EXPECTED)
    return seconds


def _sum_parts(text: str) -> float | None:
    """Add up ``<number><unit>`` parts; None when the text is not exactly such parts."""
    total, pos, last_rank = 0.0, 0, -1
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        rank = _UNIT_ORDER.index(match.group(2))
        if rank <= last_rank:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos, last_rank = match.end(), rank
    return total if text else None
