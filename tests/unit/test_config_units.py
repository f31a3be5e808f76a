"""Sizes and durations (pyresty.config.units)."""
from __future__ import annotations

import pytest

from pyresty.config import parse_duration, parse_size

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1024, 1024),
        ("0", 0),
        ("512", 512),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("10m", 10 * 1024**2),
        ("10M", 10 * 1024**2),
        ("1g", 1024**3),
        (" 8k ", 8192),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "k", "-1", -1, "1.5m", 1.5, "10mb", "10 m", "10t", True, None, [1]]
)
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"^invalid value .* \(expected a size like"):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0.0),
        (10, 10.0),
        (2.5, 2.5),
        ("10", 10.0),
        ("0.25", 0.25),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        ("1.5s", 1.5),
        (".5s", 0.5),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["", "s", "-1", -1, -0.5, "10x", "10 s", "30s1m", "1m1m", "ten", "1S", True,
     float("inf"), float("nan"), None, {"a": 1}],
)
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"^invalid value .* \(expected a duration like"):
        parse_duration(text)  # type: ignore[arg-type]


def test_reason_shows_the_value_as_written() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("10x")
    assert str(caught.value) == (
        'invalid value "10x" (expected a duration like "500ms", "10s", "2m", "1h", "1m30s" '
        "or a number of seconds)"
    )
