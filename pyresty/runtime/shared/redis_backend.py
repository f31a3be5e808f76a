"""Shared dicts in Redis: the ``SharedDict`` API across machines.

Rules
-----
- One ``redis.asyncio`` client (one connection pool, hiredis parser) per Redis
  URL per process, created after fork like the embedded stores; dicts on the
  same URL share it. Every method is one round trip.
- Keys live under ``pyresty:<dict>:v:<key>``; Redis does the TTLs (``PX``,
  so millisecond resolution; a TTL below 1 ms becomes 1 ms).
- Values are tagged strings so they round-trip with their type: an ``int`` is
  its bare decimal form (so ``INCRBY`` works on it natively and exactly, within
  Redis's int64), a ``float`` is ``f<repr>``, ``str`` ``s<utf-8>``, ``bytes``
  ``b<raw>``, ``True``/``False`` ``T``/``F``. List items use the same tags in a
  native Redis list, so list/scalar mismatches are Redis's WRONGTYPE, raised
  here as ``TypeError``.
- ``set``/``add``/``replace``/``incr``/``expire`` that need more than one
  command are Lua scripts (atomic on the server; EVALSHA, so one round trip).

``get_stale``: Redis deletes a key when it expires, so an entry with a TTL
keeps a *shadow copy* at ``pyresty:<dict>:s:<key>`` that lives ``stale_ttl``
seconds (default ``STALE_TTL``) longer; the scripts keep it in step with the
value. ``get_stale`` returns the live value, else the shadow with
``stale=True``. Entries without a TTL have no shadow. ``flush_expired``
removes shadows whose value is gone; ``flush_all`` removes both.

Capacity is Redis's own: ``capacity()`` is ``maxmemory`` (0 = no limit, or
``CONFIG`` not permitted) and eviction follows the server's
``maxmemory-policy`` (use ``allkeys-lru`` for OpenResty-like behaviour; with
``noeviction`` every write to a full server raises ``SharedDictFull``). Redis
cannot be told "don't evict for this write", so ``safe_set``/``safe_add``
refuse (``SharedDictFull``) when ``used_memory`` plus the value would exceed
``maxmemory`` at the time of the check, which is advisory under concurrency.
A value larger than ``maxmemory`` raises ``SharedDictFull``. ``stats()``
reports the Redis server's figures (``used_memory``, ``DBSIZE``,
``evicted_keys``), not this dict's alone: counting one prefix would mean a
full ``SCAN``. ``stats_now()`` (no I/O) returns the last figures and starts a
refresh in the background, at most every ``STATS_EVERY`` seconds.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from pyresty.errors import SharedDictError, SharedDictFull
from pyresty.runtime.shared import contract
from pyresty.runtime.shared.contract import DictStats, Key, Number, Value

STALE_TTL = 600.0          # seconds a stale copy outlives its value (get_stale)
STATS_EVERY = 1.0          # seconds between two background refreshes of stats_now()
SCAN_COUNT = 1000          # keys per SCAN step in keys/flush_*

_STORE = """
local mode = ARGV[3]
if mode ~= 's' then
  local exists = redis.call('EXISTS', KEYS[1]) == 1
  if (mode == 'a') == exists then return 0 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl + tonumber(ARGV[4]))
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
return 1
"""

_GET_STALE = """
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'string' then return {redis.call('GET', KEYS[1]), 0} end
if t ~= 'none' then return redis.error_reply('WRONGTYPE holds a list') end
local s = redis.call('GET', KEYS[2])
if s then return {s, 1} end
return {false, 0}
"""

# ARGV: delta, delta is an int ('1'/'0'), init ('' = none), init ttl ms, grace ms
_INCR = """
local v = redis.call('GET', KEYS[1])
if not v then
  if ARGV[3] == '' then return false end
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
  else
    redis.call('SET', KEYS[1], ARGV[3])
    redis.call('DEL', KEYS[2])
  end
  v = ARGV[3]
end
local c = string.byte(v, 1)
local int = (c >= 48 and c <= 57) or c == 45
local r
if int and ARGV[2] == '1' then
  r = redis.call('INCRBY', KEYS[1], ARGV[1])
else
  local n
  if c == 102 then n = tonumber(string.sub(v, 2))
  elseif int then n = tonumber(v)
  else return redis.error_reply('PYRESTY_NAN not a number') end
  r = 'f' .. string.format('%.17g', n + tonumber(ARGV[1]))
  redis.call('SET', KEYS[1], r, 'KEEPTTL')
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]), 'PX', pttl + tonumber(ARGV[5]))
end
return r
"""

_EXPIRE = """
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then return 0 end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  if t == 'string' then
    redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]), 'PX', ttl + tonumber(ARGV[2]))
  end
else
  redis.call('PERSIST', KEYS[1])
  redis.call('DEL', KEYS[2])
end
return 1
"""

_INT_START = frozenset(b"0123456789-")


def encode(value: object) -> bytes:
    """The tagged string for a value (see the module docstring). TypeError otherwise."""
    if type(value) is str:
        return b"s" + value.encode()
    if type(value) is int:
        return str(value).encode()
    if type(value) is bytes:
        return b"b" + value
    if type(value) is float:
        return b"f" + repr(value).encode()
    if type(value) is bool:
        return b"T" if value else b"F"
    return encode(contract.base_value(value))


def decode(raw: bytes) -> Value:
    """The value a tagged string stands for."""
    c = raw[0]
    if c == 0x73:                       # s
        return raw[1:].decode()
    if c in _INT_START:
        return int(raw)
    if c == 0x62:                       # b
        return raw[1:]
    if c == 0x66:                       # f
        return float(raw[1:])
    if c == 0x54 or c == 0x46:          # T / F
        return c == 0x54
    raise SharedDictError(f"not a pyresty shared dict value: {raw[:20]!r}")


def ttl_ms(ttl: float | None) -> int:
    """A TTL in whole milliseconds (at least 1), 0 for never. TypeError/ValueError."""
    ns = contract.ttl_ns(ttl)
    return -(-ns // 1_000_000) if ns else 0


def glob_escape(raw: bytes) -> bytes:
    """``raw`` with Redis glob metacharacters escaped, for SCAN MATCH."""
    out = bytearray()
    for c in raw:
        if c in b"*?[]\\":
            out += b"\\"
        out.append(c)
    return bytes(out)


def connect(url: str) -> aioredis.Redis:
    """A client (with its own pool) for ``redis://``, ``rediss://`` or ``unix://`` URLs."""
    return aioredis.from_url(url, decode_responses=False)


class RedisDict:
    """One shared dict in Redis (see the module docstring).

    ``client`` is shared with other dicts on the same server; this dict closes
    it on ``aclose()`` only if it made it itself (from ``url``).
    """

    def __init__(self, name: str, url: str = "", *, client: aioredis.Redis | None = None,
                 stale_ttl: float = STALE_TTL) -> None:
        self.name = name
        self.url = url
        self._owns_client = client is None
        self._r = client if client is not None else connect(url)
        self._prefix = f"pyresty:{name}:".encode()
        self._value_prefix = self._prefix + b"v:"
        self._stale_prefix = self._prefix + b"s:"
        self._grace = str(ttl_ms(stale_ttl)).encode()
        self._maxmemory: int | None = None
        self._last_stats = DictStats(capacity=0, used=0, keys=0, evictions=0)
        self._stats_at = -STATS_EVERY
        self._refresh: asyncio.Task[DictStats] | None = None
        self._store = self._r.register_script(_STORE)
        self._get_stale = self._r.register_script(_GET_STALE)
        self._incr = self._r.register_script(_INCR)
        self._expire = self._r.register_script(_EXPIRE)

    @property
    def client(self) -> aioredis.Redis:
        """The (possibly shared) client this dict talks through."""
        return self._r

    def value_key(self, raw: bytes) -> bytes:
        """The Redis key that holds entry ``raw`` (a validated key), for scripts."""
        return self._value_prefix + raw

    async def aclose(self) -> None:
        """Close the connection pool if this dict made it."""
        if self._owns_client:
            await self._r.aclose()

    def _names(self, key: Key) -> tuple[bytes, bytes]:
        raw = contract.key_bytes(key)
        return self._value_prefix + raw, self._stale_prefix + raw

    def _fail(self, exc: RedisError, key: Key | None, as_list: bool) -> Exception:
        """Our exception for a Redis error on ``key``."""
        text = str(exc)
        raw = contract.key_bytes(key) if key is not None else b"?"
        if "WRONGTYPE" in text:
            return contract.not_a_list(raw) if as_list else contract.is_a_list(raw)
        if "PYRESTY_NAN" in text:
            return contract.not_a_number(raw)
        if isinstance(exc, OutOfMemoryError) or "used memory > 'maxmemory'" in text:
            return SharedDictFull(f"shared dict {self.name!r}: Redis is full: {text}")
        if "overflow" in text or "out of range" in text:
            return OverflowError(f"shared dict {self.name!r}: incr of "
                                 f"{contract.key_out(raw)!r} leaves Redis's int64 range")
        return SharedDictError(f"shared dict {self.name!r}: {text}")

    async def _call(self, key: Key | None, as_list: bool, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except ResponseError as exc:
            raise self._fail(exc, key, as_list) from exc
        except RedisError as exc:
            raise SharedDictError(f"shared dict {self.name!r}: {exc}") from exc

    # -- reads --------------------------------------------------------------

    async def get(self, key: Key) -> Value | None:
        """The value, or None if absent or expired. TypeError for a list."""
        raw = await self._call(key, False, self._r.get, self._value_prefix + contract.key_bytes(key))
        return None if raw is None else decode(raw)

    async def get_stale(self, key: Key) -> tuple[Value | None, bool]:
        """``(value, stale)`` from the value or its shadow copy; ``(None, False)``."""
        raw, stale = await self._call(key, False, self._get_stale, keys=self._names(key))
        return (None, False) if raw is None else (decode(raw), bool(stale))

    async def ttl(self, key: Key) -> float | None:
        """Seconds left; 0.0 if it never expires; None if absent."""
        ms = await self._call(key, False, self._r.pttl, self._names(key)[0])
        if ms == -2:
            return None
        return 0.0 if ms == -1 else ms / 1000

    async def keys(self, max_count: int = 1024) -> list[Key]:
        """Live keys (in SCAN order), at most ``max_count`` (0 = all)."""
        max_count = contract.count(max_count)
        out: list[Key] = []
        start = len(self._value_prefix)
        async for name in self._scan(self._value_prefix):
            out.append(contract.key_out(name[start:]))
            if 0 < max_count <= len(out):
                break
        return out

    async def _scan(self, prefix: bytes) -> Any:
        pattern = glob_escape(prefix) + b"*"
        try:
            async for name in self._r.scan_iter(match=pattern, count=SCAN_COUNT):
                yield name
        except RedisError as exc:
            raise SharedDictError(f"shared dict {self.name!r}: {exc}") from exc

    async def capacity(self) -> int:
        """Redis's ``maxmemory`` in bytes (0: no limit, or CONFIG is not allowed)."""
        try:
            reply: dict[Any, Any] = await self._r.config_get("maxmemory")
            self._maxmemory = int(reply.get(b"maxmemory", reply.get("maxmemory", 0)))
        except (RedisError, ValueError):
            self._maxmemory = 0
        return self._maxmemory

    async def free_space(self) -> int:
        """``maxmemory - used_memory`` (0 when there is no limit or none left)."""
        cap = await self.capacity()
        if not cap:
            return 0
        return max(0, cap - await self._used_memory())

    async def _used_memory(self) -> int:
        info = await self._call(None, False, self._r.info, "memory")
        return int(info["used_memory"])

    async def stats(self) -> DictStats:
        """Server-wide figures (see the module docstring)."""
        cap = await self.capacity()
        used = await self._used_memory()
        keys = await self._call(None, False, self._r.dbsize)
        info = await self._call(None, False, self._r.info, "stats")
        self._last_stats = DictStats(capacity=cap, used=used, keys=int(keys),
                                     evictions=int(info.get("evicted_keys", 0)))
        return self._last_stats

    def stats_now(self) -> DictStats:
        """The last figures ``stats()`` saw (zeros at first), without I/O; starts
        a refresh in the running loop, if any, at most every STATS_EVERY s."""
        now = time.monotonic()
        if self._refresh is None and now - self._stats_at >= STATS_EVERY:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return self._last_stats
            self._stats_at = now
            self._refresh = loop.create_task(self.stats())
            self._refresh.add_done_callback(self._refreshed)
        return self._last_stats

    def _refreshed(self, task: asyncio.Task[DictStats]) -> None:
        self._refresh = None
        if not task.cancelled():
            task.exception()            # a failed refresh keeps the old figures

    # -- writes -------------------------------------------------------------

    async def set(self, key: Key, value: Value | None, ttl: float | None = None) -> None:
        """Store ``value``; ``None`` deletes. SharedDictFull if Redis refuses it."""
        if value is None:
            await self.delete(key)
            return
        await self._write(key, value, ttl, b"s", False)

    async def safe_set(self, key: Key, value: Value | None, ttl: float | None = None) -> None:
        """``set`` that refuses (SharedDictFull) when it would push Redis past maxmemory."""
        if value is None:
            await self.delete(key)
            return
        await self._write(key, value, ttl, b"s", True)

    async def add(self, key: Key, value: Value, ttl: float | None = None) -> bool:
        """Store only if absent; False otherwise."""
        return await self._write(key, value, ttl, b"a", False)

    async def safe_add(self, key: Key, value: Value, ttl: float | None = None) -> bool:
        """``add`` that refuses (SharedDictFull) when Redis would have to evict."""
        return await self._write(key, value, ttl, b"a", True)

    async def replace(self, key: Key, value: Value, ttl: float | None = None) -> bool:
        """Store only if present; False otherwise."""
        return await self._write(key, value, ttl, b"r", False)

    async def _write(self, key: Key, value: Value, ttl: float | None, mode: bytes,
                     safe: bool) -> bool:
        if value is None:
            raise contract.bad_value(value)
        raw = encode(value)
        ms = ttl_ms(ttl)
        names = self._names(key)
        await self._check_room(len(names[0]) + len(raw), safe)
        done = await self._call(key, False, self._store, keys=names,
                                args=(raw, ms, mode, self._grace))
        return bool(done)

    async def _check_room(self, size: int, safe: bool) -> None:
        if self._maxmemory is None or safe:     # safe_* look afresh; others use the cache
            await self.capacity()
        cap = self._maxmemory
        if not cap:
            return
        if size > cap:
            raise SharedDictFull(f"shared dict {self.name!r}: a {size}-byte entry "
                                 f"does not fit in maxmemory {cap}")
        if safe and await self._used_memory() + size > cap:
            raise SharedDictFull(f"shared dict {self.name!r}: Redis is at maxmemory {cap}")

    async def delete(self, key: Key) -> None:
        """Remove the entry and its stale copy; no error if absent."""
        await self._call(key, False, self._r.unlink, *self._names(key))

    async def incr(self, key: Key, delta: Number = 1, init: Number | None = None,
                   init_ttl: float | None = None) -> Number | None:
        """Add ``delta`` atomically and return the new number (see SharedDict).

        Integer arithmetic is Redis's INCRBY: OverflowError outside int64.
        """
        if type(delta) is not int and type(delta) is not float:
            contract.check_number("delta", delta)
        contract.check_incr_init(init, init_ttl)
        args = (repr(delta), b"1" if type(delta) is int else b"0",
                b"" if init is None else encode(init), ttl_ms(init_ttl), self._grace)
        r = await self._call(key, False, self._incr, keys=self._names(key), args=args)
        if r is None or type(r) is int:
            return r
        return float(r[1:])

    async def expire(self, key: Key, ttl: float | None) -> bool:
        """Give the entry a new TTL (None or 0: never expires); False if absent."""
        done = await self._call(key, False, self._expire, keys=self._names(key),
                                args=(ttl_ms(ttl), self._grace))
        return bool(done)

    async def flush_all(self) -> None:
        """Remove every entry of this dict, stale copies included."""
        await self._unlink_all(self._scan(self._prefix))

    async def _unlink_all(self, names: Any) -> int:
        batch: list[bytes] = []
        count = 0
        async for name in names:
            batch.append(name)
            if len(batch) >= SCAN_COUNT:
                count += await self._call(None, False, self._r.unlink, *batch)
                batch.clear()
        if batch:
            count += await self._call(None, False, self._r.unlink, *batch)
        return count

    async def flush_expired(self, max_count: int = 0) -> int:
        """Remove stale copies whose value has expired, at most ``max_count``
        (0 = all); returns how many were removed."""
        return await self._unlink_all(self._orphans(contract.count(max_count)))

    async def _orphans(self, max_count: int) -> Any:
        start = len(self._stale_prefix)
        found = 0
        async for name in self._scan(self._stale_prefix):
            alive = await self._call(None, False, self._r.exists, self._value_prefix + name[start:])
            if not alive:
                yield name
                found += 1
                if 0 < max_count <= found:
                    return

    # -- lists --------------------------------------------------------------

    async def lpush(self, key: Key, value: Value) -> int:
        """Insert at the head; returns the new length. TypeError on a scalar key."""
        return await self._list(key, self._r.lpush, encode(value))  # type: ignore[no-any-return]

    async def rpush(self, key: Key, value: Value) -> int:
        """Append at the tail; returns the new length. TypeError on a scalar key."""
        return await self._list(key, self._r.rpush, encode(value))  # type: ignore[no-any-return]

    async def lpop(self, key: Key) -> Value | None:
        """Remove and return the head; None if absent. TypeError on a scalar key."""
        raw = await self._list(key, self._r.lpop)
        return None if raw is None else decode(raw)

    async def rpop(self, key: Key) -> Value | None:
        """Remove and return the tail; None if absent. TypeError on a scalar key."""
        raw = await self._list(key, self._r.rpop)
        return None if raw is None else decode(raw)

    async def llen(self, key: Key) -> int:
        """The list's length; 0 if absent. TypeError on a scalar key."""
        return await self._list(key, self._r.llen)  # type: ignore[no-any-return]

    async def _list(self, key: Key, fn: Any, *args: bytes) -> Any:
        return await self._call(key, True, fn, self._value_prefix + contract.key_bytes(key), *args)


def clients_for(urls: Iterable[str]) -> dict[str, aioredis.Redis]:
    """One client per distinct URL (the per-process pool)."""
    return {url: connect(url) for url in dict.fromkeys(urls)}
