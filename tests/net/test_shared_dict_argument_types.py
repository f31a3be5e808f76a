"""A shared dict argument of the wrong type (``incr``'s delta or init, a ttl,
a max_count) gets the contract's clear ``TypeError`` ("delta must be an int or
float, not str"), not the compiled module's own argument check ("union[int,
float] object expected; got str"), which names neither the argument nor what
it takes."""
from __future__ import annotations

import asyncio
import os

import pytest

from pyresty.runtime.shared.embedded import EmbeddedDict


@pytest.mark.timeout(10)
@pytest.mark.parametrize("call, message", [
    (lambda d: d.incr("n", "1", init=0), "delta must be an int or float, not str"),
    (lambda d: d.incr("n", None), "delta must be an int or float, not NoneType"),
    (lambda d: d.incr("n", True), "delta must be an int or float, not bool"),
    (lambda d: d.incr("n", 1, init="0"), "init must be an int or float, not str"),
    (lambda d: d.incr("n", 1, init=[0]), "init must be an int or float, not list"),
])
def test_incr_names_the_argument_that_is_no_number(tmp_path: os.PathLike[str], call, message):
    d = EmbeddedDict("counts", str(tmp_path), 1 << 20)
    try:
        async def attempt() -> None:
            with pytest.raises(TypeError) as raised:
                await call(d)
            assert str(raised.value) == message
            assert await d.incr("n", 2, init=1) == 3      # the dict still works
        asyncio.run(attempt())
    finally:
        d.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("call, message", [
    (lambda d: d.set("a", 1, ttl="5"), "ttl must be a number of seconds, not str"),
    (lambda d: d.safe_set("a", 1, ttl="5"), "ttl must be a number of seconds, not str"),
    (lambda d: d.add("a", 1, ttl=[5]), "ttl must be a number of seconds, not list"),
    (lambda d: d.replace("a", 1, ttl="5"), "ttl must be a number of seconds, not str"),
    (lambda d: d.expire("a", "5"), "ttl must be a number of seconds, not str"),
    (lambda d: d.incr("n", 1, init=0, init_ttl="5"), "ttl must be a number of seconds, not str"),
    (lambda d: d.keys("5"), "max_count must be an int, not str"),
    (lambda d: d.keys(5.0), "max_count must be an int, not float"),
    (lambda d: d.flush_expired("5"), "max_count must be an int, not str"),
])
def test_ttl_and_max_count_errors_name_the_argument(tmp_path: os.PathLike[str], call, message):
    d = EmbeddedDict("counts", str(tmp_path), 1 << 20)
    try:
        async def attempt() -> None:
            with pytest.raises(TypeError) as raised:
                await call(d)
            assert str(raised.value) == message
        asyncio.run(attempt())
    finally:
        d.close()
