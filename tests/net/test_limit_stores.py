"""pyresty.limit against real stores: LMDB on tmpfs and a real redis-server, real
child processes contending for one limit.

Every test runs on both backends (``backend`` fixture): the Lua script on
Redis and the LMDB transaction must make the same decisions as ``rules.py``.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from children import reap

from pyresty.errors import SharedDictError
from pyresty.runtime import limit
from pyresty.runtime.limit import stores as limit_stores
from pyresty.runtime.shared import EmbeddedDict, RedisDict, SharedDict, shared
from pyresty.runtime.shared.embedded import stored_key

pytestmark = pytest.mark.timeout(120)

FORK = multiprocessing.get_context("fork")


class Backend:
    """Opens the test's dict as ``shared["limits"]`` (and an extra embedded one)."""

    def __init__(self, kind: str, tmp: str, url: str | None) -> None:
        self.kind = kind
        self.tmp = tmp
        self.url = url or ""
        self.name = "l" + uuid.uuid4().hex[:10]

    def open(self) -> SharedDict:
        if self.kind == "embedded":
            return EmbeddedDict(self.name, os.path.join(self.tmp, "store"), 1 << 20)
        return RedisDict(self.name, self.url)

    def run(self, body: Callable[[SharedDict], Awaitable[None]]) -> None:
        async def main() -> None:
            d = self.open()
            extra = EmbeddedDict("extra", os.path.join(self.tmp, "extra"), 1 << 20)
            saved = shared._dicts
            shared._dicts = {"limits": d, "extra": extra}
            try:
                await body(d)
            finally:
                shared._dicts = saved
                if self.kind == "redis":
                    await d.flush_all()
                await d.aclose()
                extra.close()
        asyncio.run(main())


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Backend:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(request.param, str(tmp_path), url)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


# -- each call -------------------------------------------------------------------------

def test_req_admits_burst_then_rejects_and_recovers(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        # 5 r/s: one excess request drains in 200 ms, far longer than a few
        # Redis round trips on a loaded machine, so the peek below still sees
        # the bucket full
        lim = limit.req("limits", rate=5, burst=3)
        began = time.monotonic()
        got, elapsed = [], []
        for _ in range(5):
            got.append(await lim.incoming("1.2.3.4"))
            elapsed.append(time.monotonic() - began)
        assert [g.allowed for g in got] == [True, True, True, True, False]
        assert [g.remaining for g in got] == [3, 2, 1, 0, 0]

        def near(value: float, due: float, i: int) -> bool:
            # the bucket drains while the calls run (a loaded machine takes ms
            # per Redis round trip): the figure is ``due`` less the time since
            # the first call, within 5 ms of clock granularity
            return due - elapsed[i] - 0.005 <= value <= due + 0.005
        assert got[0].delay == 0
        assert near(got[1].delay, 0.2, 1)     # nginx: excess / rate
        assert near(got[3].delay, 0.6, 3)
        assert near(got[4].retry_after, 0.2, 4)
        assert near(got[4].reset, 0.8, 4)
        assert (await lim.incoming("other")).allowed             # keys are separate
        peek = await lim.incoming("1.2.3.4", commit=False)
        assert not peek.allowed
        await lim.uncommit("1.2.3.4")                            # takes one back
        assert (await lim.incoming("1.2.3.4")).allowed
        state = await d.get(b"limit_req:1.2.3.4")
        assert isinstance(state, float)                           # the dict shows it

        async def recovered() -> bool:
            return (await lim.incoming("1.2.3.4", commit=False)).remaining == 3
        await until(recovered)
    backend.run(body)


def test_count_is_a_clock_aligned_quota(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        cnt = limit.count("limits", limit=3, window=3600, name="hourly")
        got = [await cnt.incoming("key") for _ in range(4)]
        assert [g.allowed for g in got] == [True, True, True, False]
        assert [g.remaining for g in got] == [2, 1, 0, 0]
        to_the_hour = 3600 - time.time() % 3600
        assert got[0].reset == pytest.approx(to_the_hour, abs=2)
        assert got[3].retry_after == pytest.approx(to_the_hour, abs=2)
        await cnt.uncommit("key")
        assert (await cnt.incoming("key")).remaining == 0
        ttl = await d.ttl(b"limit_count:hourly:key")
        assert ttl is not None and to_the_hour - 2 <= ttl <= to_the_hour + 3
    backend.run(body)


def test_count_window_rolls_over_on_the_boundary(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        cnt = limit.count("limits", limit=2, window=0.2)
        first = [await cnt.incoming("k") for _ in range(3)]
        assert [g.allowed for g in first] == [True, True, False]

        async def next_window() -> bool:
            return (await cnt.incoming("k", commit=False)).allowed
        await until(next_window, 2)
        assert first[2].retry_after <= 0.2
    backend.run(body)


def test_conn_hold_releases_on_exceptions(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        conn = limit.conn("limits", max=1, burst=1, delay=0.25)
        async with conn.hold("k") as first:
            assert first.allowed and first.delay == 0 and first.remaining == 1
            with pytest.raises(RuntimeError):
                async with conn.hold("k") as second:
                    assert second.allowed and second.delay == 0.25
                    third = await conn.incoming("k")
                    assert not third.allowed and third.retry_after == 1.0
                    raise RuntimeError("handler failed")
            assert await d.get(b"limit_conn:k") == 1
        assert await d.get(b"limit_conn:k") is None               # back to nothing
        await conn.leaving("k")                                   # never below zero
        assert (await conn.incoming("k")).remaining == 1
    backend.run(body)


def test_combine_commits_nothing_when_one_rejects(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        rate = limit.req("limits", rate=1000, burst=100)
        quota = limit.count("limits", limit=2, window=3600)
        conn = limit.conn("limits", max=5)
        both = limit.combine(rate, quota, conn)
        assert (await both.incoming("k")).allowed
        assert (await both.incoming("k")).allowed
        refused = await both.incoming("k")
        assert not refused.allowed and refused.retry_after > 1
        before = await rate.incoming("k", commit=False)
        for _ in range(5):
            assert not (await both.incoming("k")).allowed
        after = await rate.incoming("k", commit=False)
        assert after.remaining >= before.remaining                # no token was spent
        assert await d.get(b"limit_conn:k") == 2                  # no slot was taken
        await both.leaving("k")
        assert await d.get(b"limit_conn:k") == 1
        await both.uncommit("k")
        assert await d.get(b"limit_conn:k") is None
        assert (await quota.incoming("k", commit=False)).remaining == 0   # 2 - 1 + 1 more
        with pytest.raises(ValueError):
            await both.incoming(["a", "b"])
    backend.run(body)


def test_combine_across_dicts_uncommits_the_first(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        here = limit.count("limits", limit=10, window=3600)
        there = limit.count("extra", limit=1, window=3600)
        both = limit.combine(here, there)
        assert (await both.incoming(["k", "k"])).allowed
        assert not (await both.incoming(["k", "k"])).allowed
        assert (await here.incoming("k", commit=False)).remaining == 8   # only one counted
    backend.run(body)


def test_unknown_dict_and_bad_keys(backend: Backend) -> None:
    async def body(d: SharedDict) -> None:
        with pytest.raises(KeyError, match="limits"):
            await limit.req("nope", 1).incoming("k")
        with pytest.raises(ValueError):
            await limit.req("limits", 1).incoming("")
    backend.run(body)


# -- exact across processes ---------------------------------------------------------------

def _child_count(kind: str, where: str, name: str, tries: int, fd: int) -> None:
    async def main() -> None:
        d = EmbeddedDict(name, where, 1 << 20) if kind == "embedded" else RedisDict(name, where)
        shared._dicts = {"limits": d}
        cnt = limit.count("limits", limit=1000, window=3600)
        rate = limit.req("limits", rate=50, burst=10)
        admitted = rated = 0
        for _ in range(tries):
            admitted += (await cnt.incoming("k")).allowed
            rated += (await rate.incoming("k")).allowed
        os.write(fd, f"{admitted} {rated}\n".encode())
        await d.aclose()
    asyncio.run(main())



def test_four_processes_admit_exactly_the_quota(backend: Backend) -> None:
    where = os.path.join(backend.tmp, "store") if backend.kind == "embedded" else backend.url
    r, w = os.pipe()
    started = time.monotonic()
    procs = [FORK.Process(target=_child_count, args=(backend.kind, where, backend.name, 400, w))
             for _ in range(4)]
    for p in procs:
        p.start()
    reap(procs, 90)
    elapsed = time.monotonic() - started
    os.close(w)
    lines = os.read(r, 4096).decode().split()
    os.close(r)
    admitted = sum(int(x) for x in lines[0::2])
    rated = sum(int(x) for x in lines[1::2])
    assert admitted == 1000                     # 1600 tries, a quota of 1000: exactly
    assert 11 <= rated <= 50 * elapsed + 11     # burst + 1 at once, then 50/s at most

    async def body(d: SharedDict) -> None:
        if backend.kind == "redis":
            await d.flush_all()
    backend.run(body)


def _child_conn(kind: str, where: str, name: str, rounds: int, fd: int) -> None:
    async def main() -> None:
        d = EmbeddedDict(name, where, 1 << 20) if kind == "embedded" else RedisDict(name, where)
        shared._dicts = {"limits": d}
        conn = limit.conn("limits", max=3)
        worst = 0
        for _ in range(rounds):
            async with conn.hold("k") as decision:
                if decision.allowed:
                    inside = await d.incr("inside", 1, init=0)
                    worst = max(worst, int(inside or 0))
                    await d.incr("inside", -1)
        os.write(fd, f"{worst}\n".encode())
        await d.aclose()
    asyncio.run(main())


def test_conn_never_admits_more_than_max_across_processes(backend: Backend) -> None:
    where = os.path.join(backend.tmp, "store") if backend.kind == "embedded" else backend.url
    r, w = os.pipe()
    procs = [FORK.Process(target=_child_conn, args=(backend.kind, where, backend.name, 300, w))
             for _ in range(6)]
    for p in procs:
        p.start()
    reap(procs, 90)
    os.close(w)
    worst = max(int(x) for x in os.read(r, 4096).decode().split())
    os.close(r)
    assert 1 <= worst <= 3

    async def body(d: SharedDict) -> None:
        assert await d.get(b"limit_conn:k") is None       # every slot came back
        if backend.kind == "redis":
            await d.flush_all()
    backend.run(body)


# -- Redis trouble ------------------------------------------------------------------------

@pytest.fixture
def own_redis(tmp_path: os.PathLike[str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    sock = os.path.join(str(tmp_path), "own.sock")
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.01)        # polling a condition, bounded by the deadline
        yield f"unix://{sock}", proc
    finally:
        proc.kill()
        proc.wait(10)


def test_an_unreachable_redis_raises_shared_dict_error(own_redis) -> None:
    url, proc = own_redis

    async def main() -> None:
        d = RedisDict("limits", url)
        shared._dicts = {"limits": d}
        lim = limit.req("limits", 10)
        assert (await lim.incoming("k")).allowed
        proc.kill()
        proc.wait(10)
        with pytest.raises(SharedDictError):
            await lim.incoming("k")
        with pytest.raises(SharedDictError):
            await limit_stores.undo(d, [lim.rule], [lim.state_key("k")])
        shared._dicts = {}
        await d.aclose()
    asyncio.run(main())


def test_update_one_rewrites_in_place_and_keeps_the_accounting(tmp_path: os.PathLike[str]) -> None:
    d = EmbeddedDict("acct", os.path.join(str(tmp_path), "acct"), 1 << 20)
    try:
        rule = limit.req("acct", rate=1e6, burst=10).rule
        key = b"limit_req:k"
        d.update_one(key, rule.decide)
        used = d.stats_now()["used"]
        for _ in range(2000):                   # a steady limiter: value rewritten in place
            assert d.update_one(key, rule.decide).allowed
        assert d.stats_now()["used"] == used
        long_key = b"limit_req:" + b"x" * 600   # a long key takes the general way
        assert d.update_one(long_key, rule.decide).allowed
        assert d.stats_now()["keys"] == 2
        conn = limit.conn("acct", max=2).rule
        assert [d.update_one(b"c", conn.decide).allowed for _ in range(3)] == [True, True, False]
    finally:
        d.close()


def test_update_one_agrees_with_update_whichever_way_it_writes(tmp_path: os.PathLike[str]) -> None:
    """update_one's in-place path and update()'s general one store the same values and
    expiries: in place, with a later expiry, with a refreshed recency (touch_interval 0),
    over an expired entry, and when the decision leaves the entry unchanged."""
    def step(value: Any, now: float, wall: float) -> tuple[Any, Any, float]:
        n = value if value is not None else 0.0
        if n == 7.0:
            return n, limit_stores.UNCHANGED, 1.0
        return n, n + 1.0, (100.0 if n < 4 else 1000.0 * n)   # later steps need a later expiry

    def general(values: list[Any], now: float, wall: float) -> tuple[list[Any], list[Any], Any]:
        result, new, ttl = step(values[0], now, wall)
        return [new], [ttl], result

    async def main(touch: float) -> None:
        d = EmbeddedDict("agree", os.path.join(str(tmp_path), f"agree-{touch}"), 1 << 20,
                         touch_interval=touch)
        try:
            fast = [d.update_one(b"fast", step) for _ in range(10)]
            slow = [d.update([b"slow"], general) for _ in range(10)]
            assert fast == slow == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.0, 7.0]
            assert await d.get("fast") == await d.get("slow") == 7.0
            ttl_fast, ttl_slow = await d.ttl("fast"), await d.ttl("slow")
            assert ttl_fast is not None and ttl_slow is not None and abs(ttl_fast - ttl_slow) < 1.0
            assert ttl_fast > 6000 - 1.0
            assert await d.keys() == ["slow", "fast"]      # recency kept by both ways
            await d.set("gone", 3.0, ttl=0.001)
            deadline = time.monotonic() + 5
            while await d.ttl("gone") is not None:         # expired: the decision sees None
                assert time.monotonic() < deadline
            assert d.update_one(b"gone", step) == 0.0
            assert await d.get("gone") == 1.0
            long_key = b"limit_req:" + b"y" * 600
            assert [d.update_one(long_key, step) for _ in range(2)] == [0.0, 1.0]
            alias = stored_key(long_key)        # a key that spells another key's stored form
            assert d.update_one(alias, step) == 0.0     # its own entry, not long_key's
            assert d.update_one(long_key, step) == 2.0
        finally:
            d.close()

    for touch in (1.0, 0.0):
        asyncio.run(main(touch))
