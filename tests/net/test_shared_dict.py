"""Shared dicts against real stores: LMDB on tmpfs and a real redis-server on a
unix socket, real child processes, real SIGKILLs.

Every API test runs on both backends (``backend`` fixture); eviction, page
usage, crash and reload tests are the embedded store's own. Waits for expiry
poll with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import select
import signal
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import lmdb
import pytest
import redis
from children import reap

from pyresty.config.model import SharedDictSpec
from pyresty.errors import SharedDictError, SharedDictFull
from pyresty.runtime import shared as registry
from pyresty.runtime.shared import EmbeddedDict, RedisDict, SharedDict, embedded

pytestmark = pytest.mark.timeout(120)

FORK = multiprocessing.get_context("fork")
ACK = struct.Struct("<q")
Body = Callable[[Any], Awaitable[None]]


def _redis_config(url: str, **settings: str) -> None:
    client = redis.Redis.from_url(url)
    for name, value in settings.items():
        client.config_set(name.replace("_", "-"), value)
    client.close()


# -- dict factories -------------------------------------------------------------

class Stores:
    """Opens a fresh dict of the test's backend inside the test's event loop."""

    def __init__(self, backend: str, tmp: str, redis_url: str | None) -> None:
        self.backend = backend
        self.path = os.path.join(tmp, "store")
        self.url = redis_url or ""
        self.name = "t" + uuid.uuid4().hex[:12]

    def open(self, capacity: int = 1 << 20, **kw: Any) -> SharedDict:
        if self.backend == "embedded":
            return EmbeddedDict(self.name, self.path, capacity, **kw)
        return RedisDict(self.name, self.url, **kw)

    def run(self, body: Body, capacity: int = 1 << 20, **kw: Any) -> None:
        async def main() -> None:
            d = self.open(capacity, **kw)
            try:
                await body(d)
            finally:
                if self.backend == "redis":
                    await d.flush_all()
                await d.aclose()
        asyncio.run(main())


@pytest.fixture(params=["embedded", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Stores:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Stores(request.param, str(tmp_path), url)


@pytest.fixture
def lmdb_stores(tmp_path: os.PathLike[str]) -> Stores:
    return Stores("embedded", str(tmp_path), None)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


async def gone(d: SharedDict, key: str) -> None:
    async def check() -> bool:
        return await d.get(key) is None
    await until(check)


# -- values and keys --------------------------------------------------------------

ROUND_TRIP = ["", "héllo ☃", b"", b"\x00\xff", 0, -5, 2**63 - 1, -(2**63), 2**100,
              1.5, -0.0, 1e300, float("inf"), True, False]


def test_values_round_trip_with_their_type(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for i, value in enumerate(ROUND_TRIP):
            await d.set(f"k{i}", value)
        for i, value in enumerate(ROUND_TRIP):
            got = await d.get(f"k{i}")
            assert type(got) is type(value) and got == value, (value, got)
    stores.run(body)


def test_absent_key_everywhere(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        assert await d.get("nope") is None
        assert await d.get_stale("nope") == (None, False)
        assert await d.ttl("nope") is None
        assert await d.incr("nope") is None
        assert await d.expire("nope", 1) is False
        assert await d.replace("nope", 1) is False
        assert await d.llen("nope") == 0
        assert await d.lpop("nope") is None and await d.rpop("nope") is None
        await d.delete("nope")
        assert await d.get("nope") is None
    stores.run(body)


def test_str_and_bytes_keys_name_one_entry_and_limits_hold(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        await d.set("ключ", 1)
        assert await d.get("ключ".encode()) == 1
        longest = "k" * 65535
        await d.set(longest, "max")
        await d.set("k" * 700 + "a", "a")
        await d.set("k" * 700 + "b", "b")
        assert (await d.get(longest), await d.get("k" * 700 + "a")) == ("max", "a")
        assert await d.get("k" * 700 + "b") == "b" and await d.get("k" * 700) is None
        assert await d.incr("k" * 700 + "n", 1, init=0) == 1
        assert await d.rpush("k" * 900, 1) == 1 and await d.llen("k" * 900) == 1
        for bad, exc in ((1, TypeError), ("", ValueError), ("k" * 65536, ValueError)):
            with pytest.raises(exc):
                await d.get(bad)
            with pytest.raises(exc):
                await d.set(bad, 1)
    stores.run(body)


def test_bad_values_and_set_none_deletes(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for bad in ([1], {"a": 1}, object()):
            with pytest.raises(TypeError, match="str, bytes, int, float or bool"):
                await d.set("k", bad)
            with pytest.raises(TypeError):
                await d.lpush("l", bad)
        with pytest.raises(TypeError):
            await d.add("k", None)
        await d.set("k", 1)
        await d.set("k", None)
        assert await d.get("k") is None
    stores.run(body)


def test_add_replace_and_safe_add(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        assert await d.add("k", 1) is True
        assert await d.add("k", 2) is False
        assert await d.safe_add("k", 3) is False
        assert await d.replace("k", "two") is True
        assert await d.get("k") == "two"
        assert await d.replace("other", 1) is False and await d.get("other") is None
        assert await d.safe_add("new", b"x") is True
        await d.safe_set("new", b"y")
        assert await d.get("new") == b"y"
        await d.delete("k")
        assert await d.get("k") is None and await d.add("k", 9) is True
    stores.run(body)


# -- TTL ------------------------------------------------------------------------------

def test_ttl_expiry_and_stale_reads(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        await d.set("k", "v", ttl=0.2)
        left = await d.ttl("k")
        assert left is not None and 0 < left <= 0.2
        assert await d.get("k") == "v" and await d.get_stale("k") == ("v", False)
        await gone(d, "k")
        assert await d.get_stale("k") == ("v", True)
        assert await d.ttl("k") is None
        assert await d.replace("k", 1) is False and await d.expire("k", 5) is False
        assert await d.add("k", "new", ttl=0.05) is True
        assert await d.get("k") == "new"
    stores.run(body)


def test_no_ttl_is_zero_and_bad_ttls_raise(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        await d.set("a", 1)
        await d.set("b", 1, ttl=0)
        assert await d.ttl("a") == 0.0 and await d.ttl("b") == 0.0
        with pytest.raises(ValueError):
            await d.set("c", 1, ttl=-1)
        with pytest.raises(TypeError):
            await d.set("c", 1, ttl="1")
        with pytest.raises(ValueError):
            await d.expire("a", -0.5)
    stores.run(body)


def test_expire_sets_and_clears_a_ttl(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        await d.set("a", 1)
        await d.set("b", 2, ttl=0.05)
        assert await d.expire("b", None) is True
        assert await d.ttl("b") == 0.0
        assert await d.expire("a", 0.05) is True
        await gone(d, "a")
        assert await d.get_stale("a") == (1, True)
        assert await d.get("b") == 2
    stores.run(body)


def test_get_stale_until_flushed_and_flush_expired_counts(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for k in ("a", "b", "c"):
            await d.set(k, k, ttl=0.02)
        await d.set("live", 1, ttl=60)
        await d.set("forever", 1)
        for k in ("a", "b", "c"):
            await gone(d, k)
        assert await d.flush_expired(2) == 2
        assert await d.flush_expired() == 1
        assert await d.flush_expired() == 0
        for k in ("a", "b", "c"):
            assert await d.get_stale(k) == (None, False)
        assert await d.get("live") == 1 and await d.get("forever") == 1
    stores.run(body)


# -- incr ------------------------------------------------------------------------------

def test_incr(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        assert await d.incr("n") is None and await d.get("n") is None
        assert await d.incr("n", 5, init=10, init_ttl=60) == 15
        left = await d.ttl("n")
        assert left is not None and 0 < left <= 60
        assert await d.incr("n", -20, init=0) == -5          # init ignored once present
        assert await d.incr("n", 0.5) == -4.5
        assert type(await d.get("n")) is float
        assert await d.incr("n", 1) == -3.5
        assert (await d.ttl("n") or 0) > 0                  # incr keeps the TTL
        assert await d.incr("f", 1, init=0.25) == 1.25
        assert await d.incr("i", 2**40, init=2**40) == 2**41
        await d.set("s", "text")
        await d.set("b", True)
        for key in ("s", "b"):
            with pytest.raises(TypeError, match="does not hold a number"):
                await d.incr(key)
        for bad in (True, "1", None):
            with pytest.raises(TypeError):
                await d.incr("n", bad)
        with pytest.raises(TypeError):
            await d.incr("n", 1, init="0")
        # init_ttl means nothing without init (OpenResty refuses it too); nothing changes
        before = await d.get("n")
        with pytest.raises(ValueError, match="init_ttl requires init"):
            await d.incr("n", 1, init_ttl=5)
        with pytest.raises(ValueError, match="init_ttl requires init"):
            await d.incr("absent", 1, init=None, init_ttl=5)
        assert await d.get("n") == before and await d.get("absent") is None
        await d.set("gone", 1, ttl=0.02)
        await gone(d, "gone")
        assert await d.incr("gone") is None
        assert await d.incr("gone", 1, init=100) == 101
        assert await d.ttl("gone") == 0.0
    stores.run(body)


# -- bulk -------------------------------------------------------------------------------

def test_keys_and_flush_all(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for i in range(30):
            await d.set(f"k{i}", i)
        await d.set(b"\xff\xfe", 1)
        await d.set("dying", 1, ttl=0.02)
        await d.rpush("list", 1)
        await gone(d, "dying")
        everything = await d.keys(0)
        assert sorted(map(repr, everything)) == sorted(
            map(repr, [f"k{i}" for i in range(30)] + [b"\xff\xfe", "list"]))
        assert len(await d.keys(10)) == 10
        assert len(await d.keys()) == 32
        await d.flush_all()
        assert await d.keys(0) == []
        assert await d.get("k1") is None and await d.llen("list") == 0
        assert await d.get_stale("dying") == (None, False)
    stores.run(body)


def test_embedded_keys_are_most_recent_first(lmdb_stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for k in ("a", "b", "c"):
            await d.set(k, 1)
        await d.get("a")
        assert await d.keys() == ["a", "c", "b"]
    lmdb_stores.run(body, touch_interval=0)


# -- lists --------------------------------------------------------------------------------

def test_lists(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        assert await d.rpush("q", 1) == 1
        assert await d.rpush("q", "two") == 2
        assert await d.lpush("q", b"zero") == 3
        assert await d.rpush("q", 2.5) == 4
        assert await d.lpush("q", False) == 5
        assert await d.llen("q") == 5
        assert await d.lpop("q") is False
        assert await d.lpop("q") == b"zero"
        assert await d.rpop("q") == 2.5
        assert await d.rpop("q") == "two"
        assert await d.rpop("q") == 1
        assert await d.llen("q") == 0 and await d.lpop("q") is None
        assert await d.add("q", "scalar now") is True        # an emptied list is gone
        await d.rpush("e", 1)
        assert await d.expire("e", 0.05) is True
        async def empty() -> bool:
            return await d.llen("e") == 0
        await until(empty)
        assert await d.lpop("e") is None
        assert await d.lpush("e", "fresh") == 1
    stores.run(body)


def test_list_and_scalar_are_different_types(stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        await d.set("s", 1)
        await d.rpush("l", 1)
        for call in (d.lpush("s", 1), d.rpush("s", 1), d.lpop("s"), d.rpop("s"), d.llen("s")):
            with pytest.raises(TypeError, match="'s' holds a value, not a list"):
                await call
        for call in (d.get("l"), d.get_stale("l"), d.incr("l")):
            with pytest.raises(TypeError, match="'l' holds a list, not a value"):
                await call
        await d.set("l", "replaced")
        assert await d.get("l") == "replaced"
    stores.run(body)


# -- capacity -----------------------------------------------------------------------------

def test_embedded_capacity_free_space_and_too_large(lmdb_stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        assert await d.capacity() == 8192
        free = await d.free_space()
        await d.set("k", "x" * 1000)
        assert free - 1100 <= await d.free_space() <= free - 1000
        for call in (d.set, d.safe_set, d.add, d.safe_add):
            with pytest.raises(SharedDictFull, match="does not fit in 8192 bytes"):
                await call("big", "x" * 9000)
        with pytest.raises(SharedDictFull):
            await d.replace("k", "x" * 9000)
        await d.delete("k")
        assert await d.free_space() == free
        stats = await d.stats()
        assert stats == {"capacity": 8192, "used": 0, "keys": 0, "evictions": 0}
    lmdb_stores.run(body, capacity=8192)


def test_redis_capacity_is_maxmemory(redis_url: str, tmp_path: Any) -> None:
    stores = Stores("redis", str(tmp_path), redis_url)

    async def body(d: SharedDict) -> None:
        try:
            _redis_config(stores.url, maxmemory=str(64 << 20), maxmemory_policy="allkeys-lru")
            assert await d.capacity() == 64 << 20
            assert 0 < await d.free_space() < 64 << 20
            with pytest.raises(SharedDictFull, match="does not fit in maxmemory"):
                await d.set("big", b"x" * (65 << 20))
            used = (await d.stats())["used"]
            _redis_config(stores.url, maxmemory=str(used + (256 << 10)))
            await d.safe_set("fits", b"x" * 1000)
            with pytest.raises(SharedDictFull, match="at maxmemory"):
                await d.safe_set("safe", b"x" * (512 << 10))
            _redis_config(stores.url, maxmemory_policy="noeviction")
            with pytest.raises(SharedDictFull, match="Redis is full"):
                for i in range(100):                       # refused once over maxmemory
                    await d.set(f"over{i}", b"x" * (64 << 10))
            stats = await d.stats()
            assert set(stats) == {"capacity", "used", "keys", "evictions"}
        finally:
            _redis_config(stores.url, maxmemory="0", maxmemory_policy="noeviction")
    stores.run(body)


def test_redis_stats_now_refreshes_in_the_background(redis_url: str, tmp_path: Any) -> None:
    stores = Stores("redis", str(tmp_path), redis_url)

    async def body(d: SharedDict) -> None:
        await d.set("k", 1)
        assert d.stats_now()["keys"] == 0          # nothing fetched yet: zeros, no I/O

        async def refreshed() -> bool:
            return d.stats_now()["keys"] >= 1
        await until(refreshed)
    stores.run(body)


def fill(count: int, size: int) -> list[tuple[str, str]]:
    return [(f"k{i}", "v" * size) for i in range(count)]


def test_full_dict_evicts_least_recently_used(lmdb_stores: Stores) -> None:
    # each entry costs 2 + 18 + 100 + 64 = 184 bytes; 10 fit in 1900
    async def body(d: SharedDict) -> None:
        for k, v in fill(10, 100):
            await d.set(k, v)
        assert await d.get("k0") == "v" * 100              # k0 is now the most recent
        await d.set("new1", "v" * 98)
        assert await d.get("k1") is None                   # the coldest went first
        await d.set("k2", "v" * 100)                       # a write refreshes too
        await d.add("new2", "v" * 98)
        assert await d.get("k3") is None
        assert await d.get("k0") and await d.get("k2") and await d.get("new1")
        await d.incr("ctr", 1, init=0)
        assert await d.get("k4") is None
        assert (await d.stats())["evictions"] == 3
        assert (await d.stats())["used"] <= 1900
    lmdb_stores.run(body, capacity=1900, touch_interval=0)


def test_full_dict_evicts_expired_entries_first(lmdb_stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for k, v in fill(9, 100):
            await d.set(k, v)
        await d.set("dying", "v" * 97, ttl=0.02)           # the most recent entry
        await gone(d, "dying")
        assert await d.get_stale("dying") == ("v" * 97, True)
        await d.set("new", "v" * 98)
        assert await d.get_stale("dying") == (None, False)
        assert all([await d.get(k) for k, _ in fill(9, 100)])
        assert (await d.stats())["evictions"] == 0        # expired removals are not evictions
    lmdb_stores.run(body, capacity=1900, touch_interval=0)


def test_safe_writes_never_evict_live_entries(lmdb_stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for k, v in fill(10, 100):
            await d.set(k, v)
        with pytest.raises(SharedDictFull, match="is full"):
            await d.safe_set("new", "v" * 98)
        with pytest.raises(SharedDictFull):
            await d.safe_add("new", "v" * 98)
        assert all([await d.get(k) for k, _ in fill(10, 100)])
        await d.expire("k5", 0.02)
        await gone(d, "k5")
        await d.safe_set("new", "v" * 98)                 # an expired entry may make room
        assert await d.get("new") and (await d.stats())["evictions"] == 0
    lmdb_stores.run(body, capacity=1900, touch_interval=0)


def test_recency_is_refreshed_at_most_once_per_touch_interval(lmdb_stores: Stores) -> None:
    async def body(d: SharedDict) -> None:
        for k, v in fill(10, 100):
            await d.set(k, v)
        await d.get("k0")                                  # within the interval: no refresh
        await d.set("new1", "v" * 98)
        assert await d.get("k0") is None
        started = time.monotonic()
        async def interval_passed() -> bool:
            return time.monotonic() - started > 0.35
        await until(interval_passed)
        await d.get("k1")                                  # now it is refreshed
        await d.set("new2", "v" * 98)
        assert await d.get("k1") is not None and await d.get("k2") is None
    lmdb_stores.run(body, capacity=1900, touch_interval=0.3)


def test_the_entry_being_written_is_never_its_own_victim(lmdb_stores: Stores) -> None:
    # a list costs 107 bytes + 126 per 100-byte item; k0..k8 cost 184 each
    async def body(d: SharedDict) -> None:
        await d.rpush("q", "v" * 100)
        for k, v in fill(9, 100):
            await d.set(k, v)
        assert await d.rpush("q", "v" * 100) == 2         # q is the coldest: not refreshed
        assert await d.get("k0") is None and await d.llen("q") == 2
        with pytest.raises(SharedDictFull, match="would outgrow"):
            for _ in range(20):
                await d.rpush("q", "v" * 100)
        assert await d.llen("q") == 14
    lmdb_stores.run(body, capacity=1900, touch_interval=60)


def test_page_usage_stays_bounded_under_random_churn(lmdb_stores: Stores) -> None:
    capacity = 256 << 10
    rng = random.Random(5)

    async def body(d: SharedDict) -> None:
        for _ in range(20000):
            key = f"key-{rng.randrange(3000)}"
            if rng.random() < 0.2:
                await d.delete(key)
            else:
                await d.set(key, "x" * rng.choice((10, 200, 1500, 3000, 5000)))
        stats = await d.stats()
        assert stats["used"] <= capacity and stats["evictions"] > 0
        assert isinstance(d, EmbeddedDict)
        info = d._env.info()
        assert (info["last_pgno"] + 1) * 4096 <= info["map_size"]
    lmdb_stores.run(body, capacity=capacity)


def test_a_map_too_small_for_the_churn_never_wedges(lmdb_stores: Stores,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a 1x map with no page checks: issue 5 measured such a store wedged for good
    monkeypatch.setattr(embedded, "MAP_FACTOR", 1)
    monkeypatch.setattr(embedded, "MAP_SLACK", 64 * 4096)
    monkeypatch.setattr(embedded, "PAGE_CHECK_EVERY", 10**9)
    rng = random.Random(3)

    async def body(d: SharedDict) -> None:
        refused = 0
        for _ in range(6000):
            try:
                await d.set(f"k{rng.randrange(2000)}", "x" * rng.choice((2050, 3000, 4100)))
            except SharedDictFull:
                refused += 1
        assert refused < 600
        await d.delete("k1")
        await d.set("after", 1)
        assert await d.get("after") == 1
    lmdb_stores.run(body, capacity=1 << 20)


# -- processes ------------------------------------------------------------------------------

def _child_incr(backend: str, where: str, name: str, count: int) -> None:
    async def main() -> None:
        d: SharedDict = (EmbeddedDict(name, where, 1 << 20) if backend == "embedded"
                         else RedisDict(name, where))
        for _ in range(count):
            await d.incr("hits", 1, init=0)
        await d.aclose()
    asyncio.run(main())



def test_four_processes_incr_one_key_exactly(stores: Stores) -> None:
    where = stores.path if stores.backend == "embedded" else stores.url
    procs = [FORK.Process(target=_child_incr, args=(stores.backend, where, stores.name, 5000))
             for _ in range(4)]
    for p in procs:
        p.start()
    reap(procs)

    async def body(d: SharedDict) -> None:
        assert await d.get("hits") == 20000
    stores.run(body)


def _child_writer(path: str, name: str, ack_fd: int) -> None:
    async def main() -> None:
        d = EmbeddedDict(name, path, 16 << 20)
        while True:
            n = await d.incr("ctr", 1, init=0)
            await d.set(f"k{n}", n)
            os.write(ack_fd, ACK.pack(n))       # acknowledged: both writes returned
    asyncio.run(main())


class Acks:
    """The numbers a writer acknowledged through a pipe, read as they come."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen: set[int] = set()

    def take(self, data: bytes) -> int:
        self.seen.update(n for (n,) in ACK.iter_unpack(data))
        return len(data) // ACK.size

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while count > 0:
            assert time.monotonic() < deadline, "the writer stopped acknowledging"
            if select.select([self.fd], [], [], 1.0)[0]:
                data = os.read(self.fd, ACK.size * 512)
                assert data, "the writer died"
                count -= self.take(data)

    def drain(self) -> None:
        while data := os.read(self.fd, ACK.size * 512):   # EOF: the writer is dead
            self.take(data)


def test_sigkilled_writer_loses_no_acknowledged_write(lmdb_stores: Stores) -> None:
    specs = [SharedDictSpec(lmdb_stores.name, 16 << 20)]
    base = os.path.dirname(lmdb_stores.path)
    path = registry.store_path(base, lmdb_stores.name)
    rng = random.Random(7)
    acked: set[int] = set()
    kills = 10
    for _ in range(kills):
        r, w = os.pipe()
        child = FORK.Process(target=_child_writer, args=(path, lmdb_stores.name, w))
        child.start()
        os.close(w)
        acks = Acks(r)
        try:
            acks.wait_for(rng.randrange(200, 2000))
        finally:
            os.kill(child.pid, signal.SIGKILL)     # mid-loop, likely mid-transaction
            child.join(10)
        acks.drain()
        os.close(r)
        acked |= acks.seen
        registry.reader_check(specs, base)        # what the master does when it reaps

    async def body(d: SharedDict) -> None:
        ctr = await d.get("ctr")
        assert isinstance(ctr, int) and ctr >= max(acked)
        assert [n for n in sorted(acked) if await d.get(f"k{n}") != n] == []
        unacked = set(range(1, ctr + 1)) - acked
        assert len(unacked) <= kills              # at most one in flight per kill
        assert await d.incr("ctr") == ctr + 1     # the next writer proceeds at once
    lmdb_stores.path = path
    lmdb_stores.run(body, capacity=16 << 20)


def _child_reader_stuck(path: str, ready_fd: int) -> None:
    env = embedded.open_env(path, 1 << 20)
    txn = env.begin()
    txn.get(b"x")
    os.write(ready_fd, b"R")
    time.sleep(120)                               # killed long before


def _child_hold(path: str, name: str, ready_fd: int, go_fd: int) -> None:
    d = EmbeddedDict(name, path, 1 << 20)
    os.write(ready_fd, b"H")
    os.read(go_fd, 1)
    d.close()


def test_master_reader_check_clears_dead_readers_without_disturbing_children(
        lmdb_stores: Stores) -> None:
    base = os.path.dirname(lmdb_stores.path)
    name = lmdb_stores.name
    specs = [SharedDictSpec(name, 1 << 20)]
    path = registry.store_path(base, name)
    lmdb_stores.path = path
    lmdb_stores.run(lambda d: d.set("x", 1))
    # a live holder keeps the store open: were nobody left, the next opener would
    # reset the whole reader table (LMDB does when it gets the exclusive lock)
    hr, hw = os.pipe()
    gr, gw = os.pipe()
    holder = FORK.Process(target=_child_hold, args=(path, name, hw, gr))
    holder.start()
    assert select.select([hr], [], [], 30)[0] and os.read(hr, 1) == b"H"
    r, w = os.pipe()
    stuck = FORK.Process(target=_child_reader_stuck, args=(path, w))
    stuck.start()
    assert select.select([r], [], [], 30)[0] and os.read(r, 1) == b"R"
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.join(10)
    os.close(r), os.close(w)
    assert registry.reader_check(specs, base) == 1   # before anyone else opens it
    writers = [FORK.Process(target=_child_incr, args=("embedded", path, name, 3000))
               for _ in range(2)]
    for p in writers:
        p.start()
    for _ in range(20):                           # the master checking while they write
        registry.reader_check(specs, base)
    reap(writers)
    os.write(gw, b"G")
    reap([holder])
    for fd in (hr, hw, gr, gw):
        os.close(fd)
    later = FORK.Process(target=_child_incr, args=("embedded", path, name, 1))
    later.start()                                 # a fork after the master's checks works
    reap([later])

    async def body(d: SharedDict) -> None:
        assert await d.get("hits") == 6001
    lmdb_stores.run(body)


def test_reader_check_of_a_store_never_opened_is_zero(tmp_path: Any) -> None:
    assert registry.reader_check([SharedDictSpec("nothing", 1 << 20)], str(tmp_path)) == 0


# -- reload, wipe, registry ------------------------------------------------------------------

def test_data_survives_reopen_with_another_capacity(lmdb_stores: Stores) -> None:
    async def write(d: SharedDict) -> None:
        for i in range(100):
            await d.set(f"k{i}", i)
        await d.rpush("q", "item")

    async def intact(d: SharedDict) -> None:
        assert [await d.get(f"k{i}") for i in range(100)] == list(range(100))
        assert await d.llen("q") == 1

    async def shrunk(d: SharedDict) -> None:
        stats = await d.stats()
        assert stats["used"] <= 4096 and stats["keys"] > 0 and stats["evictions"] > 0
        assert await d.get("k99") == 99                     # the most recent survive

    lmdb_stores.run(write, capacity=1 << 20)
    lmdb_stores.run(intact, capacity=8 << 20)               # grown
    lmdb_stores.run(intact, capacity=64 << 10)              # smaller, still room
    lmdb_stores.run(shrunk, capacity=4096)                  # smaller than the data


def _child_small_map(path: str, name: str, ready_fd: int, go_fd: int) -> None:
    async def main() -> None:
        d = EmbeddedDict(name, path, 64 << 10)
        await d.set("small", 1)
        os.write(ready_fd, b"R")
        os.read(go_fd, 1)                               # the parent grew the store meanwhile
        assert await d.get("big-0") == "x" * 1000       # beyond this process's map
        await d.set("after", 2)
        await d.aclose()
    asyncio.run(main())


def test_a_process_with_the_old_size_keeps_working_after_a_reload_grows_the_store(
        lmdb_stores: Stores) -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = FORK.Process(target=_child_small_map, args=(lmdb_stores.path, lmdb_stores.name, w1, r2))
    child.start()
    assert select.select([r1], [], [], 30)[0] and os.read(r1, 1) == b"R"

    async def grow(d: SharedDict) -> None:
        for i in range(2000):
            await d.set(f"big-{i}", "x" * 1000)
        assert await d.get("small") == 1
    lmdb_stores.run(grow, capacity=8 << 20)
    os.write(w2, b"G")
    reap([child])
    for fd in (r1, w1, r2, w2):
        os.close(fd)

    async def check(d: SharedDict) -> None:
        assert await d.get("after") == 2 and await d.get("big-1999") == "x" * 1000
    lmdb_stores.run(check, capacity=8 << 20)


def test_registry_open_wipe_reload_and_unknown_names(tmp_path: Any, redis_url: str) -> None:
    base = str(tmp_path / "shm")
    specs = [SharedDictSpec("cache", 1 << 20), SharedDictSpec("limits", 1 << 20),
             SharedDictSpec("remote", 0, redis_url)]

    async def session(check: Callable[[], Awaitable[None]]) -> None:
        registry.open_all(specs, base)
        try:
            await check()
        finally:
            await registry.aclose_all()

    async def first() -> None:
        assert isinstance(registry.shared["cache"], EmbeddedDict)
        assert isinstance(registry.shared["remote"], RedisDict)
        await registry.shared["cache"].set("k", "v")
        await registry.shared["remote"].set("k", "r")
        with pytest.raises(KeyError) as info:
            registry.shared["x"]
        assert str(info.value) == "no shared dict 'x' (configured: cache, limits, remote)"
        stats = registry.stats()                   # no I/O: Redis figures come later
        assert stats["cache"]["keys"] == 1 and stats["limits"]["keys"] == 0
        assert stats["cache"]["capacity"] == 1 << 20
        fresh = await registry.astats()
        assert fresh["remote"]["keys"] >= 1 and fresh["cache"] == stats["cache"]
        assert registry.stats()["remote"] == fresh["remote"]

    async def after_reload() -> None:
        assert await registry.shared["cache"].get("k") == "v"

    async def after_restart() -> None:
        assert await registry.shared["cache"].get("k") is None
        assert await registry.shared["remote"].get("k") == "r"    # Redis is never wiped
        await registry.shared["remote"].flush_all()

    registry.wipe(specs, base)
    asyncio.run(session(first))
    assert len(registry.shared) == 0
    asyncio.run(session(after_reload))       # a reload reopens without wiping
    registry.wipe(specs, base)               # a restart wipes first
    asyncio.run(session(after_restart))
    registry.open_all(specs, base)           # the sync close a worker does at exit
    registry.close_all()
    assert len(registry.shared) == 0
    with pytest.raises(ValueError, match="unknown backend"):
        registry.open_all([SharedDictSpec("odd", 1 << 20, "memcached://x")], base)
    assert len(registry.shared) == 0


def test_open_failure_is_a_shared_dict_error(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SharedDictError, match="cannot open"):
        EmbeddedDict("x", str(blocker / "store"), 1 << 20)
    with pytest.raises(ValueError, match="capacity"):
        EmbeddedDict("x", str(tmp_path / "s"), 0)


def test_two_opens_of_one_store_in_one_process_are_refused(lmdb_stores: Stores) -> None:
    first = lmdb_stores.open()
    try:
        with pytest.raises((SharedDictError, lmdb.Error)):
            lmdb_stores.open()
    finally:
        assert isinstance(first, EmbeddedDict)
        first.close()


# -- TTLs the stores cannot hold -----------------------------------------------

def _open_store(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> SharedDict:
    if backend == "embedded":
        return EmbeddedDict("edges", os.path.join(str(tmp_path), "store"), 1 << 20)
    url = request.getfixturevalue("redis_url")
    return RedisDict("edges" + uuid.uuid4().hex[:8], url)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ttl", [math.inf, 1e11, 10**30])
@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_a_ttl_too_long_for_the_store_is_a_value_error(
        backend: str, ttl: float, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    """The contract: a bad TTL is a ValueError. ``ttl=math.inf`` (a natural
    way to say "forever") and TTLs past ~584 years used to leak
    ``OverflowError`` / ``struct.error`` from the embedded store's u64
    nanosecond header, and Redis reported an int64 overflow "of incr" for a
    plain ``set``. The entry must be left as it was."""
    async def body() -> None:
        d = _open_store(backend, tmp_path, request)
        try:
            await d.set("k", "before")
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: d.set("k", "after", ttl),
                lambda: d.safe_set("k", "after", ttl),
                lambda: d.add("new", "after", ttl),
                lambda: d.safe_add("new", "after", ttl),
                lambda: d.replace("k", "after", ttl),
                lambda: d.expire("k", ttl),
                lambda: d.incr("n", 1, init=0, init_ttl=ttl),
            ]
            for call in calls:
                with pytest.raises(ValueError, match="ttl"):
                    await call()
            assert await d.get("k") == "before"
            assert await d.ttl("k") == 0.0
            assert await d.get("new") is None and await d.get("n") is None
            # The longest allowed TTL still works on both stores.
            await d.set("k", "long", ttl=100 * 365 * 86400)
            left = await d.ttl("k")
            assert left is not None and left > 99 * 365 * 86400
        finally:
            if backend == "redis":
                await d.flush_all()
            await d.aclose()
    asyncio.run(body())
