"""Embedded shared dicts: one LMDB environment per dict, shared by every process.

Rules
-----
- Every process opens its own ``Environment`` *after* fork; a process never
  uses one it inherited (LMDB's locks are per process; py-lmdb refuses it).
- Every operation is one LMDB transaction, so it is atomic across processes
  and a process killed at any instant leaves either all of an operation or
  none of it: an ``incr`` that returned is in the store (LMDB commits by
  writing a meta page last; the robust writer mutex lets the next writer in
  at once after a writer is SIGKILLed). Nothing here is ever ``await``ed in the
  middle of a transaction.
- ``writemap=True, sync=False, metasync=False``: the store lives on tmpfs and
  must survive process crashes, not machine crashes (the master wipes it at
  start anyway). Measured here: ~0.5M raw write txns/s, ~1.5M reads/s.
- Capacity is the configured size in bytes, counted as
  ``len(key) + len(value) + ENTRY_OVERHEAD`` per entry (list items:
  ``len(key) + len(item) + ITEM_OVERHEAD``); the overheads stand for the index
  records and LMDB node headers, so the count errs on the high side.
- The map is ``MAP_FACTOR`` x capacity (sparse on tmpfs), never smaller than
  the data file: LMDB is copy-on-write and random churn was measured at
  2.1-2.3x the logical size; a map of 2x wedged for good (even deletes fail
  with MDB_MAP_FULL). With ``writemap`` LMDB ftruncates the file to the map
  size on open, so shrinking the map under another process would SIGBUS it:
  we open with ``max(wanted, file size)``. The map grows at run time only as
  the last resort against a wedge (``_emergency_evict``), and never shrinks.
- Besides the logical count, every ``PAGE_CHECK_EVERY`` growing writes a
  process compares the pages the B-trees really use with ``PAGE_FACTOR`` x
  capacity and evicts until under it (pitfall (b) of issue 5).

Theory of operation
-------------------
Five named databases in one environment::

    data   stored key -> header + [full key] + payload
    lru    seq (u64 BE) -> stored key           oldest first = eviction order
    exp    expiry (u64 BE) + stored key -> b""  soonest first = flush order
    items  stored key + index (i64 BE) -> type byte + payload   (list items)
    meta   b"used" / b"evictions" -> u64

The header is ``<BBQQ``: value type, flags, expiry and ``seq``, both in
``time.monotonic_ns()`` (CLOCK_MONOTONIC is one clock for every process on the
machine, and the store never outlives a boot: it is on tmpfs or wiped at
start). ``seq`` is the time of the entry's last *recency refresh* and its key
in ``lru``. A refresh needs a write transaction, and doing one on every
``get`` cut reads from ~1.6M to ~0.4M ops/s (pitfall (c)), so a read or write
refreshes an entry only when its ``seq`` is older than ``touch_interval``
(``TOUCH_INTERVAL`` by default): LRU order is exact to within that interval.

LMDB keys are at most 511 bytes; a key longer than ``SHORT_KEY_MAX`` is
stored under ``key[:LONG_PREFIX] + blake2b-256(key) + b"\\x01"`` (always 500
bytes, so never equal to a short key) with the full key kept in the value
and compared on every read.

To make room, a write removes expired entries first (soonest expiry first),
then live ones from the cold end of ``lru``; ``safe_*`` writes remove only
expired ones and raise ``SharedDictFull`` if that is not enough. The entry
being written is never a victim of its own write. Expired entries stay
readable through ``get_stale`` until evicted or flushed.
"""
from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable
from typing import Any, Final, TypeAlias, TypeVar, cast

import lmdb

from pyresty.errors import SharedDictError, SharedDictFull
from pyresty.runtime.shared import contract
from pyresty.runtime.shared.contract import DictStats, Key, Number, Value

TOUCH_INTERVAL = 1.0       # seconds; LRU order is exact to within this (see above)
ENTRY_OVERHEAD = 64        # bytes per entry: lru + exp records, 3 LMDB node headers
ITEM_OVERHEAD = 16         # bytes per list item: LMDB node header + index
MAP_FACTOR = 4             # map = 4 x capacity + MAP_SLACK (issue 5, pitfall (b))
PAGE_FACTOR = 2            # evict when B-tree pages exceed 2 x capacity + MAP_SLACK/2
MAP_SLACK = 1 << 20        # room for the fixed trees, metas and freelist of tiny dicts
PAGE_CHECK_EVERY = 64      # growing writes between two page-usage checks (per process)
MAX_READERS = 1024         # reader slots: one per process in practice; dead ones leak
                           # until reader_check(), so keep plenty
SHORT_KEY_MAX: Final = 480   # LMDB's key limit is 511; longer keys are hashed
LONG_PREFIX = 467          # 467 + 32 (digest) + 1 (marker) = 500 > SHORT_KEY_MAX
UPDATE_EXPIRY_SLACK = 1_000_000_000   # ns an update() sets beyond the TTL it needs, so a
                           # steady limiter moves its expiry about once a second, not per write

HDR = struct.Struct("<BBQQ")            # type, flags, expires_ns, seq_ns
HDR_SIZE = HDR.size
INT_ENTRY = struct.Struct("<BBQQq")     # header + int64, the incr fast path
FLOAT_ENTRY = struct.Struct("<BBQQd")   # header + double, the update_one fast path
NUMBER_ENTRY_SIZE: Final = FLOAT_ENTRY.size   # == INT_ENTRY.size
FLOAT_ENTRY_PACK: Final = FLOAT_ENTRY.pack
FLOAT_ENTRY_UNPACK: Final = FLOAT_ENTRY.unpack
KEY_LEN = struct.Struct("<H")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
F64 = struct.Struct("<d")
BE64 = struct.Struct(">Q")              # lru / exp keys sort by time
INDEX = struct.Struct(">q")             # list item index
LIST_META = struct.Struct("<qqQ")       # head, tail (exclusive), bytes of items

T_BYTES: Final = 0           # value types, the first byte of an entry
T_STR: Final = 1
T_INT: Final = 2
T_BIGINT: Final = 3
T_FLOAT: Final = 4
T_FALSE: Final = 5
T_TRUE: Final = 6
T_LIST: Final = 7
F_LONG = 1
SET, ADD, REPLACE = range(3)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
USED, EVICTIONS = b"used", b"evictions"

monotonic_ns: Final = time.monotonic_ns
wall_time: Final = time.time
UNCHANGED, DELETE = contract.UNCHANGED, contract.DELETE
R = TypeVar("R")

# An LMDB transaction (values come back as bytes: buffers=False). Typed as
# Any: the compiled build runs mypy where lmdb is not installed yet (a fresh
# venv builds pyresty before its dependencies), and a method call on lmdb's
# C type is a generic call either way.
Txn: TypeAlias = Any


def map_size_for(capacity: int, path: str) -> int:
    """The map size for ``capacity``, never below the current data file's size."""
    wanted = MAP_FACTOR * capacity + MAP_SLACK
    try:
        return max(wanted, os.path.getsize(os.path.join(path, "data.mdb")))
    except OSError:
        return wanted


def open_env(path: str, capacity: int) -> lmdb.Environment:
    """Open (creating) the environment of one dict with our flags."""
    return lmdb.open(path, map_size=map_size_for(capacity, path), subdir=True,
                     writemap=True, sync=False, metasync=False, max_dbs=8,
                     max_readers=MAX_READERS, max_spare_txns=1, mode=0o600)


def stored_key(full: bytes) -> bytes:
    """The LMDB key for a validated key (see "long keys" above)."""
    if len(full) <= SHORT_KEY_MAX:
        return full
    return full[:LONG_PREFIX] + hashlib.blake2b(full, digest_size=32).digest() + b"\x01"


def encode(value: object) -> tuple[int, bytes]:
    """``(type, payload)`` for a value. Raises TypeError for other types."""
    if type(value) is str:
        return T_STR, value.encode()
    if type(value) is bytes:
        return T_BYTES, value
    if type(value) is int:
        if INT64_MIN <= value <= INT64_MAX:
            return T_INT, I64.pack(value)
        return T_BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if type(value) is float:
        return T_FLOAT, F64.pack(value)
    if type(value) is bool:
        return (T_TRUE if value else T_FALSE), b""
    return _encode_subclass(value)


def _encode_subclass(value: object) -> tuple[int, bytes]:
    """Subclasses (IntEnum, HTTPStatus, str enums...) are stored as their base type."""
    return encode(contract.base_value(value))


def expired(v: bytes, now: int) -> bool:
    """Whether entry ``v`` has an expiry at or before ``now``."""
    exp: int = HDR.unpack_from(v)[2]
    return exp != 0 and exp <= now


def decode(t: int, buf: bytes, off: int) -> Value:
    """The value of type ``t`` whose payload starts at ``buf[off]``."""
    if t == T_STR:
        return buf[off:].decode()
    if t == T_INT:
        return I64.unpack_from(buf, off)[0]  # type: ignore[no-any-return]
    if t == T_BYTES:
        return buf[off:]
    if t == T_FLOAT:
        return F64.unpack_from(buf, off)[0]  # type: ignore[no-any-return]
    if t == T_TRUE or t == T_FALSE:
        return t == T_TRUE
    if t == T_BIGINT:
        return int.from_bytes(buf[off:], "little", signed=True)
    raise SharedDictError(f"corrupt shared dict entry (type {t})")


def payload_offset(v: bytes, full: bytes) -> int:
    """Where the payload starts; -1 if ``v`` belongs to another long key (hash clash)."""
    if not v[1] & F_LONG:
        return HDR_SIZE
    n = KEY_LEN.unpack_from(v, HDR_SIZE)[0]
    off = HDR_SIZE + 2 + n
    return off if v[HDR_SIZE + 2:off] == full else -1


def key_blob(full: bytes) -> tuple[int, bytes]:
    """``(flags, bytes after the header)`` that carry a long key in its value."""
    if len(full) <= SHORT_KEY_MAX:
        return 0, b""
    return F_LONG, KEY_LEN.pack(len(full)) + full


class EmbeddedDict:
    """One shared dict in an LMDB environment at ``path`` (see the module docstring).

    Raises SharedDictError if the environment cannot be opened. ``touch_interval``
    trades LRU exactness for read speed; 0 gives exact LRU order. The public
    methods take keys and values as ``object`` and check them here (TypeError
    with our message): the module is compiled (setup.py), and a narrower
    annotation would be checked first, with mypyc's words.
    """

    def __init__(self, name: str, path: str, capacity: int, *,
                 touch_interval: float = TOUCH_INTERVAL) -> None:
        if capacity <= 0:
            raise ValueError(f"shared dict {name!r}: capacity must be > 0 bytes")
        self.name = name
        self.path = path
        self._capacity = capacity
        self._page_budget = PAGE_FACTOR * capacity + MAP_SLACK // 2
        self._touch_ns = int(touch_interval * 1e9)
        self._grown = 0
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            self._env = open_env(path, capacity)
            self._env.reader_check()      # a respawned process cleans up after the dead
            self._open_dbs()
        except (OSError, lmdb.Error) as exc:
            raise SharedDictError(f"shared dict {name!r}: cannot open {path}: {exc}") from exc
        self._begin = self._env.begin
        try:
            self._write(self._shrink)     # the configured size may have shrunk (reload)
        except BaseException:
            self._env.close()
            raise

    def _open_dbs(self) -> None:
        env = self._env
        self._data = env.open_db(b"data")
        self._lru = env.open_db(b"lru")
        self._exp = env.open_db(b"exp")
        self._items = env.open_db(b"items")
        self._meta = env.open_db(b"meta")

    def close(self) -> None:
        """Close the environment (idempotent)."""
        self._env.close()

    async def aclose(self) -> None:
        self.close()

    # -- transactions -------------------------------------------------------

    def _read(self, fn: Callable[..., R], *args: Any) -> R:
        for attempt in (0, 1):
            try:
                txn = self._begin(self._data)
                try:
                    return fn(txn, *args)
                finally:
                    txn.abort()
            except lmdb.Error as exc:
                self._recover(exc, attempt)
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[..., R], *args: Any) -> R:
        for attempt in (0, 1):
            try:
                txn = self._begin(self._data, None, True)
                try:
                    result = fn(txn, *args)
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()
                return result
            except lmdb.Error as exc:
                self._recover(exc, attempt)
        raise AssertionError("unreachable")

    def _recover(self, exc: lmdb.Error, attempt: int) -> None:
        """Make a failed transaction worth one retry, or raise ours."""
        if attempt == 0 and isinstance(exc, lmdb.MapResizedError):
            self._adopt_map_size()
            return
        if attempt == 0 and isinstance(exc, lmdb.MapFullError):
            self._env.reader_check()      # a dead reader may be pinning pages
            self._emergency_evict()
            return
        if isinstance(exc, lmdb.MapFullError):
            raise SharedDictFull(f"shared dict {self.name!r}: store map full") from exc
        raise SharedDictError(f"shared dict {self.name!r}: {exc}") from exc

    def _adopt_map_size(self) -> None:
        """Another process grew the file (a reload with a larger size): map it all."""
        self._env.set_mapsize(map_size_for(self._capacity, self.path))

    def _emergency_evict(self) -> None:
        """The map is full despite the page budget: drop the coldest eighth.

        A full map can refuse even deletes (issue 5, pitfall (b)); then the map
        grows by a quarter first, the one way out that is safe for the other
        processes (growing never truncates the file under them).
        """
        for attempt in (0, 1):
            try:
                with self._begin(self._data, None, True) as txn:
                    count = max(1, txn.stat(self._lru)["entries"] // 8)
                    used = self._evict_lru(txn, self._used(txn), count, None)
                    self._put_meta(txn, USED, used)
                return
            except lmdb.MapFullError as exc:
                if attempt:
                    raise SharedDictFull(f"shared dict {self.name!r}: store map full") from exc
                self._grow_map()
            except lmdb.Error as exc:
                raise SharedDictError(f"shared dict {self.name!r}: {exc}") from exc

    def _grow_map(self) -> None:
        size = max(map_size_for(self._capacity, self.path), self._env.info()["map_size"])
        self._env.set_mapsize((size * 5 // 4 + 4095) // 4096 * 4096)

    # -- meta, recency, room ------------------------------------------------

    def _used(self, txn: Txn) -> int:
        raw = txn.get(USED, None, self._meta)
        return U64.unpack(raw)[0] if raw else 0

    def _put_meta(self, txn: Txn, name: bytes, n: int) -> None:
        txn.put(name, U64.pack(max(0, n)), db=self._meta)

    def _add_used(self, txn: Txn, delta: int) -> None:
        if delta:
            self._put_meta(txn, USED, self._used(txn) + delta)

    def _new_seq(self, txn: Txn, sk: bytes, now: int) -> int:
        """A fresh, unique recency stamp for ``sk``, recorded in ``lru``."""
        seq = now
        while not txn.put(BE64.pack(seq), sk, overwrite=False, db=self._lru):
            seq += 1
        return seq

    def _recency(self, txn: Txn, sk: bytes, seq: int, now: int) -> int:
        """``seq``, or a new one if the entry is due a refresh (see touch_interval)."""
        if now - seq <= self._touch_ns:
            return seq
        txn.delete(BE64.pack(seq), db=self._lru)
        return self._new_seq(txn, sk, now)

    def _make_room(self, txn: Txn, need: int, forcible: bool,
                   keep: bytes, now: int) -> None:
        """Make ``need`` more bytes fit; expired first, then LRU if ``forcible``.

        Raises SharedDictFull when that is not enough. Accounts ``need`` as used.
        """
        used = self._used(txn)
        if used + need > self._capacity:
            used = self._evict_expired(txn, used, used + need - self._capacity, keep, now)
        if used + need > self._capacity and forcible:
            used = self._evict_lru(txn, used, -1, keep, used + need - self._capacity)
        if used + need > self._capacity:
            raise SharedDictFull(f"shared dict {self.name!r} is full "
                                 f"({used} of {self._capacity} bytes used, {need} more needed)")
        self._put_meta(txn, USED, used + need)
        self._grown += 1
        if self._grown >= PAGE_CHECK_EVERY and forcible:
            self._grown = 0
            self._check_pages(txn, keep)

    def _evict_expired(self, txn: Txn, used: int, want: int,
                       keep: bytes, now: int) -> int:
        """Remove expired entries, soonest expiry first, until ``want`` bytes are freed."""
        cur = txn.cursor(self._exp)
        found = cur.first()
        freed = 0
        while found and freed < want:
            ek = cur.key()
            if BE64.unpack_from(ek)[0] > now:
                break
            if ek[8:] == keep:
                found = cur.next()
                continue
            freed += self._remove(txn, ek[8:])
            txn.delete(ek, db=self._exp)      # an orphan record must not loop us
            found = cur.set_range(ek)
        return used - freed

    def _evict_lru(self, txn: Txn, used: int, count: int,
                   keep: bytes | None, want: int = -1) -> int:
        """Remove up to ``count`` (-1: any number of) coldest entries, or until
        ``want`` bytes are freed; counts them as evictions."""
        cur = txn.cursor(self._lru)
        found = cur.first()
        freed = evicted = 0
        while found and count != 0 and (want < 0 or freed < want):
            lk, sk = cur.item()
            if sk == keep:
                found = cur.next()
                continue
            freed += self._remove(txn, sk)
            txn.delete(lk, db=self._lru)      # an orphan record must not loop us
            evicted += 1
            count -= 1
            found = cur.set_range(lk)
        if evicted:
            raw = txn.get(EVICTIONS, None, self._meta)
            self._put_meta(txn, EVICTIONS, (U64.unpack(raw)[0] if raw else 0) + evicted)
        return used - freed

    def _pages(self, txn: Txn) -> int:
        total = 0
        for db in (self._data, self._lru, self._exp, self._items, self._meta):
            st = txn.stat(db)
            total += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return total

    def _check_pages(self, txn: Txn, keep: bytes) -> None:
        """Evict by real page usage when B-tree pages outgrow the budget."""
        psize = txn.stat(self._data)["psize"]
        used = self._used(txn)
        while self._pages(txn) * psize > self._page_budget:
            after = self._evict_lru(txn, used, 16, keep)
            if after == used:
                break
            used = after
        self._put_meta(txn, USED, used)

    def _shrink(self, txn: Txn) -> None:
        used = self._used(txn)
        if used > self._capacity:
            used = self._evict_expired(txn, used, used - self._capacity, b"", monotonic_ns())
            used = self._evict_lru(txn, used, -1, None, used - self._capacity)
            self._put_meta(txn, USED, used)

    # -- entries ------------------------------------------------------------

    def _remove(self, txn: Txn, sk: bytes, v: bytes | None = None) -> int:
        """Delete entry ``sk`` with its index records and items; the bytes freed."""
        if v is None:
            v = txn.get(sk)
            if v is None:
                return 0
        txn.delete(sk)
        t, _, exp, seq = HDR.unpack_from(v)
        txn.delete(BE64.pack(seq), db=self._lru)
        if exp:
            txn.delete(BE64.pack(exp) + sk, db=self._exp)
        cost = len(sk) + len(v) + ENTRY_OVERHEAD
        if t == T_LIST:
            cost += self._drop_items(txn, sk, v)
        return cost

    def _drop_items(self, txn: Txn, sk: bytes, v: bytes) -> int:
        head, tail, nbytes = LIST_META.unpack_from(v, len(v) - LIST_META.size)
        for i in range(head, tail):
            txn.delete(sk + INDEX.pack(i), db=self._items)
        return nbytes  # type: ignore[no-any-return]

    def _cost(self, txn: Txn, sk: bytes, v: bytes) -> int:
        cost = len(sk) + len(v) + ENTRY_OVERHEAD
        if v[0] == T_LIST:
            cost += LIST_META.unpack_from(v, len(v) - LIST_META.size)[2]
        return cost

    def _put(self, txn: Txn, sk: bytes, full: bytes, t: int, payload: bytes,
             exp: int, old: bytes | None, forcible: bool, now: int) -> None:
        """Write a scalar over whatever ``sk`` held, keeping index and size in step."""
        flags, blob = key_blob(full)
        size = len(sk) + HDR_SIZE + len(blob) + len(payload) + ENTRY_OVERHEAD
        if size > self._capacity:
            raise SharedDictFull(f"shared dict {self.name!r}: a {size}-byte entry "
                                 f"does not fit in {self._capacity} bytes")
        seq, old_exp, old_cost = 0, 0, 0
        if old is not None:
            _, _, old_exp, seq = HDR.unpack_from(old)
            old_cost = self._cost(txn, sk, old)
            if old[0] == T_LIST:
                self._drop_items(txn, sk, old)
            seq = self._recency(txn, sk, seq, now)
        else:
            seq = self._new_seq(txn, sk, now)
        if old_exp != exp:
            if old_exp:
                txn.delete(BE64.pack(old_exp) + sk, db=self._exp)
            if exp:
                txn.put(BE64.pack(exp) + sk, b"", db=self._exp)
        value = HDR.pack(t, flags, exp, seq) + blob + payload
        delta = len(value) + len(sk) + ENTRY_OVERHEAD - old_cost
        if delta > 0:
            self._make_room(txn, delta, forcible, sk, now)
        else:
            self._add_used(txn, delta)
        txn.put(sk, value)

    def _lookup(self, txn: Txn, sk: bytes,
                full: bytes) -> tuple[bytes | None, int]:
        """``(raw, payload offset)``; ``(None, 0)`` if absent. Expired entries included."""
        v = txn.get(sk)
        if v is None:
            return None, 0
        off = payload_offset(v, full)
        return (v, off) if off >= 0 else (None, 0)

    # -- reads --------------------------------------------------------------

    async def get(self, key: object) -> Value | None:
        """The value, or None if absent or expired. Raises TypeError for a list."""
        k = key.encode() if type(key) is str else key
        if type(k) is not bytes or not 0 < len(k) <= SHORT_KEY_MAX:
            return self._get_slow(*self._keys(key))
        try:
            txn = self._begin(self._data)
            v = txn.get(k)
            txn.abort()
        except lmdb.Error:
            return self._get_slow(k, k)     # retries once after a map resize
        if v is None:
            return None
        t, _, exp, seq = HDR.unpack_from(v)
        now = monotonic_ns()
        if exp and exp <= now:
            return None
        if t == T_LIST:
            raise contract.is_a_list(k)
        if now - seq > self._touch_ns:
            self._write(self._touch, k, k)
        if t == T_STR:                    # the common types inline: a call is ~60 ns
            return v[HDR_SIZE:].decode()
        if t == T_INT:
            return I64.unpack_from(v, HDR_SIZE)[0]  # type: ignore[no-any-return]
        return decode(t, v, HDR_SIZE)

    def _get_slow(self, sk: bytes, full: bytes) -> Value | None:
        value, touch = self._read(self._get, sk, full)
        if touch:                         # after the read transaction has ended
            self._write(self._touch, sk, full)
        return value

    def _get(self, txn: Txn, sk: bytes, full: bytes) -> tuple[Value | None, bool]:
        now = monotonic_ns()
        v, off = self._lookup(txn, sk, full)
        if v is None:
            return None, False
        t, _, exp, seq = HDR.unpack_from(v)
        if exp and exp <= now:
            return None, False
        if t == T_LIST:
            raise contract.is_a_list(full)
        return decode(t, v, off), now - seq > self._touch_ns

    def _touch(self, txn: Txn, sk: bytes, full: bytes) -> None:
        now = monotonic_ns()
        v, off = self._lookup(txn, sk, full)
        if v is None:
            return
        t, flags, exp, seq = HDR.unpack_from(v)
        fresh = self._recency(txn, sk, seq, now)
        if fresh != seq:
            txn.put(sk, HDR.pack(t, flags, exp, fresh) + v[HDR_SIZE:])

    @staticmethod
    def _keys(key: object) -> tuple[bytes, bytes]:
        full = contract.key_bytes(key)
        return stored_key(full), full

    async def get_stale(self, key: object) -> tuple[Value | None, bool]:
        """``(value, stale)``: an expired value comes back with ``stale=True`` until
        it is evicted or flushed; ``(None, False)`` if absent. TypeError for a list."""
        return self._read(self._get_stale, *self._keys(key))

    def _get_stale(self, txn: Txn, sk: bytes,
                   full: bytes) -> tuple[Value | None, bool]:
        now = monotonic_ns()
        v, off = self._lookup(txn, sk, full)
        if v is None:
            return None, False
        t, _, exp, _ = HDR.unpack_from(v)
        if t == T_LIST:
            raise contract.is_a_list(full)
        return decode(t, v, off), bool(exp and exp <= now)

    async def ttl(self, key: object) -> float | None:
        """Seconds left; 0.0 if the entry never expires; None if absent or expired."""
        return self._read(self._ttl, *self._keys(key))

    def _ttl(self, txn: Txn, sk: bytes, full: bytes) -> float | None:
        now = monotonic_ns()
        v, _ = self._lookup(txn, sk, full)
        if v is None:
            return None
        exp = HDR.unpack_from(v)[2]
        if not exp:
            return 0.0
        return (exp - now) / 1e9 if exp > now else None

    async def keys(self, max_count: object = 1024) -> list[Key]:
        """Live keys, most recently used first; at most ``max_count`` (0 = all)."""
        return self._read(self._keys_list, contract.count(max_count))

    def _keys_list(self, txn: Txn, max_count: int) -> list[Key]:
        now = monotonic_ns()
        out: list[Key] = []
        cur = txn.cursor(self._lru)
        found = cur.last()
        while found and (max_count <= 0 or len(out) < max_count):
            sk = cur.value()
            v = txn.get(sk)
            if v is not None:
                exp = HDR.unpack_from(v)[2]
                if not exp or exp > now:
                    out.append(contract.key_out(self._full_key(sk, v)))
            found = cur.prev()
        return out

    @staticmethod
    def _full_key(sk: bytes, v: bytes) -> bytes:
        if not v[1] & F_LONG:
            return sk
        n = KEY_LEN.unpack_from(v, HDR_SIZE)[0]
        return v[HDR_SIZE + 2:HDR_SIZE + 2 + n]

    async def capacity(self) -> int:
        """The configured size in bytes."""
        return self._capacity

    async def free_space(self) -> int:
        """Bytes left before a write must evict (0 when full or over)."""
        used = self._read(self._used)
        return max(0, self._capacity - used)

    async def stats(self) -> DictStats:
        """capacity, used, keys and evictions (see DictStats)."""
        return self.stats_now()

    def stats_now(self) -> DictStats:
        """``stats()`` without a coroutine."""
        return self._read(self._stats)

    def _stats(self, txn: Txn) -> DictStats:
        raw = txn.get(EVICTIONS, None, self._meta)
        return DictStats(capacity=self._capacity, used=self._used(txn),
                         keys=txn.stat(self._data)["entries"],
                         evictions=U64.unpack(raw)[0] if raw else 0)

    # -- scalar writes ------------------------------------------------------

    async def set(self, key: object, value: object, ttl: object = None) -> None:
        """Store ``value`` (evicting LRU entries when full); ``None`` deletes.

        Raises SharedDictFull if the entry alone is larger than the dict.
        """
        self._store(key, value, ttl, SET, True)

    async def safe_set(self, key: object, value: object, ttl: object = None) -> None:
        """Like ``set`` but never evicts a live entry: SharedDictFull instead."""
        self._store(key, value, ttl, SET, False)

    async def add(self, key: object, value: object, ttl: object = None) -> bool:
        """Store only if no live entry exists; False otherwise. Evicts when full."""
        return self._store(key, value, ttl, ADD, True)

    async def safe_add(self, key: object, value: object, ttl: object = None) -> bool:
        """``add`` that never evicts a live entry: SharedDictFull instead."""
        return self._store(key, value, ttl, ADD, False)

    async def replace(self, key: object, value: object, ttl: object = None) -> bool:
        """Store only over a live entry; False if none. Evicts when full."""
        return self._store(key, value, ttl, REPLACE, True)

    def _store(self, key: object, value: object, ttl: object,
               mode: int, forcible: bool) -> bool:
        k = key.encode() if type(key) is str else key
        if type(k) is bytes and 0 < len(k) <= SHORT_KEY_MAX:
            sk = full = k
        else:
            sk, full = self._keys(key)
        if value is None:
            if mode != SET:
                raise contract.bad_value(value)
            self._write(self._delete, sk, full)
            return True
        t, payload = encode(value)
        exp = contract.ttl_ns(ttl) if ttl is not None else 0
        return self._write(self._store_txn, sk, full, t, payload, exp, mode, forcible)

    def _store_txn(self, txn: Txn, sk: bytes, full: bytes, t: int,
                   payload: bytes, exp: int, mode: int, forcible: bool) -> bool:
        now = monotonic_ns()
        if mode == SET and not exp:
            old = txn.get(sk)
            if old is not None and not old[1] and old[0] != T_LIST:
                _, _, old_exp, seq = HDR.unpack_from(old)
                if not old_exp and now - seq <= self._touch_ns:
                    value = HDR.pack(t, 0, 0, seq) + payload
                    if len(value) == len(old):      # same size, TTL, recency: in place
                        txn.put(sk, value)
                        return True
        old, _ = self._lookup(txn, sk, full)
        if mode != SET:
            live = old is not None and not expired(old, now)
            if live == (mode == ADD):
                return False
        if old is None:
            old = txn.get(sk)            # a long key's hash clash: overwrite it
        self._put(txn, sk, full, t, payload, now + exp if exp else 0, old, forcible, now)
        return True

    async def delete(self, key: object) -> None:
        """Remove the entry (a list with all its items); no error if absent."""
        self._write(self._delete, *self._keys(key))

    def _delete(self, txn: Txn, sk: bytes, full: bytes) -> None:
        v, _ = self._lookup(txn, sk, full)
        if v is not None:
            self._add_used(txn, -self._remove(txn, sk, v))

    async def incr(self, key: object, delta: object = 1, init: object = None,
                   init_ttl: object = None) -> Number | None:
        """Add ``delta`` atomically across processes and return the new number.

        An absent (or expired) key gives None unless ``init`` is given, in which
        case it is created as ``init + delta`` with ``init_ttl``. An existing
        entry keeps its TTL. Raises TypeError if the entry is not a number or
        ``delta``/``init`` are not int/float, ValueError for ``init_ttl`` without ``init``.
        """
        # the public parameters are typed ``object`` so that the contract's
        # TypeError names the argument (a compiled ``Number`` or ``float``
        # parameter raised mypyc's own check, which does not)
        if type(delta) is not int and type(delta) is not float:
            contract.check_number("delta", delta)
        contract.check_incr_init(init, init_ttl)
        number = cast(Number, delta)
        start = cast("Number | None", init)
        init_exp = contract.ttl_ns(init_ttl) if init_ttl is not None else 0
        k = key.encode() if type(key) is str else key
        if type(k) is bytes and 0 < len(k) <= SHORT_KEY_MAX:
            return self._write(self._incr, k, k, number, start, init_exp)
        return self._write(self._incr, *self._keys(key), number, start, init_exp)

    def _incr(self, txn: Txn, sk: bytes, full: bytes, delta: Number,
              init: Number | None, init_exp: int) -> Number | None:
        v = txn.get(sk)
        now = monotonic_ns()
        if v is not None and v[0] == T_INT and not v[1] and type(delta) is int:
            t, f, exp, seq, n = INT_ENTRY.unpack(v)
            n += delta
            if (not exp or exp > now) and now - seq <= self._touch_ns \
                    and INT64_MIN <= n <= INT64_MAX:
                txn.put(sk, INT_ENTRY.pack(t, 0, exp, seq, n))
                return n  # type: ignore[no-any-return]
        return self._incr_slow(txn, sk, full, delta, init, init_exp, now)

    def _incr_slow(self, txn: Txn, sk: bytes, full: bytes, delta: Number,
                   init: Number | None, init_exp: int, now: int) -> Number | None:
        v, off = self._lookup(txn, sk, full)
        exp = HDR.unpack_from(v)[2] if v is not None else 0
        if v is None or (exp and exp <= now):
            if init is None:
                return None
            n = init + delta
            self._put(txn, sk, full, *encode(n), now + init_exp if init_exp else 0,
                      txn.get(sk), True, now)
            return n
        t = v[0]
        if t == T_LIST:
            raise contract.is_a_list(full)
        if t not in (T_INT, T_BIGINT, T_FLOAT):
            raise contract.not_a_number(full)
        n = decode(t, v, off) + delta  # type: ignore[operator]
        self._put(txn, sk, full, *encode(n), exp, v, True, now)
        return n

    # -- read-decide-write in one transaction (pyresty.limit) -----------------

    def update(self, keys: list[bytes],
               decide: Callable[[list[Value | None], float, float],
                                tuple[list[Any], list[float | None], R]]) -> R:
        """Read ``keys``, let ``decide`` choose their new values, write them: one
        write transaction, so atomic across processes (the limiters' primitive).

        ``keys`` are validated keys as bytes. ``decide(values, now, wall)`` gets
        the live values (None for absent or expired), ``time.monotonic()`` and
        ``time.time()`` taken inside the transaction (so writers see the clock in
        the order they commit), and returns ``(new values, ttls, result)``:
        a new value is a value, ``contract.UNCHANGED`` or ``contract.DELETE``; a ttl is how long the entry must live
        at least, None for ever. An expiry already far enough is kept, so a
        steady limiter rewrites its value in place without touching the expiry
        index. Runs synchronously (never suspends); it may run ``decide`` twice
        (a retry after another process grew the map), so ``decide`` must be pure.
        Raises SharedDictError / SharedDictFull as the other writes do.
        """
        return self._write(self._update, keys, decide)

    def _update(self, txn: Txn, keys: list[bytes], decide: Callable[..., Any]) -> Any:
        mono = monotonic_ns()
        wall = time.time()
        olds: list[bytes | None] = []
        values: list[Value | None] = []
        for full in keys:
            sk = full if len(full) <= SHORT_KEY_MAX else stored_key(full)
            v, off = self._lookup(txn, sk, full)
            olds.append(v)
            if v is None or v[0] == T_LIST or expired(v, mono):
                values.append(None)
            else:
                values.append(decode(v[0], v, off))
        news, ttls, result = decide(values, mono / 1e9, wall)
        for full, old, new, ttl in zip(keys, olds, news, ttls):
            if new is contract.UNCHANGED:
                continue
            sk = full if len(full) <= SHORT_KEY_MAX else stored_key(full)
            if new is contract.DELETE:
                if old is not None:
                    self._add_used(txn, -self._remove(txn, sk, old))
                continue
            self._update_one(txn, sk, full, old, new, ttl, mono)
        return result

    def update_one(self, key: bytes, decide: Callable[[Value | None, float, float],
                                                      tuple[R, Any, float | None]]) -> R:
        """``update`` of one key, for the per-request limiters: ``decide(value, now,
        wall)`` returns ``(result, new value, ttl)``. An int or float entry whose
        expiry and recency need no change is rewritten in place (one get, one put).

        This runs for every limited request, so it is ``_write`` and ``_update1``
        written out in one frame for the common case (a live float entry rewritten
        in place, bench/results/limits.md); anything else goes to ``_update1``
        in the same transaction. Same transaction, same retries as ``_write``.
        """
        for attempt in (0, 1):
            try:
                txn = self._begin(self._data, None, True)
                try:
                    # a long key is stored under its hash (see "long keys"): _update1
                    v: bytes | None = txn.get(key) if len(key) <= SHORT_KEY_MAX else None
                    if v is not None and len(v) == NUMBER_ENTRY_SIZE and v[0] == T_FLOAT and not v[1]:
                        now: int = monotonic_ns()
                        entry: tuple[int, int, int, int, float] = FLOAT_ENTRY_UNPACK(v)
                        _, _, exp, seq, value = entry
                        if (not exp or exp > now) and now - seq <= self._touch_ns:
                            verdict: tuple[R, Any, float | None] = decide(value, now / 1e9, wall_time())
                            result, new, ttl = verdict
                            if type(new) is float and ttl is not None and exp and \
                                    exp >= now + int(ttl * 1e9) + 1:
                                txn.put(key, FLOAT_ENTRY_PACK(T_FLOAT, 0, exp, seq, new))
                            elif new is not UNCHANGED:
                                self._apply1(txn, key, v, value, now, new, ttl)
                        else:
                            result = self._update1(txn, key, decide)
                    else:
                        result = self._update1(txn, key, decide)
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()
                return result  # type: ignore[no-any-return]
            except lmdb.Error as exc:
                self._recover(exc, attempt)
        raise AssertionError("unreachable")

    def _update1(self, txn: Txn, full: bytes, decide: Callable[..., Any]) -> Any:
        v = txn.get(full) if len(full) <= SHORT_KEY_MAX else None
        size = len(v) if v is not None else 0
        if size != NUMBER_ENTRY_SIZE or v is None or v[1] or (v[0] != T_FLOAT and v[0] != T_INT):
            return self._update(txn, [full], lambda values, now, wall: _single(decide, values, now, wall))
        now = monotonic_ns()
        value = (FLOAT_ENTRY if v[0] == T_FLOAT else INT_ENTRY).unpack(v)[4]
        exp = HDR.unpack_from(v)[2]
        live = not exp or exp > now
        result, new, ttl = decide(value if live else None, now / 1e9, wall_time())
        if new is not UNCHANGED:
            self._apply1(txn, full, v, value if live else None, now, new, ttl)
        return result

    def _apply1(self, txn: Txn, full: bytes, v: bytes, value: Number | None, now: int,
                new: Any, ttl: float | None) -> None:
        """Write ``update_one``'s decision over the number entry ``v`` (live ``value``,
        None when expired): in place when type, expiry and recency allow."""
        t, _, exp, seq, _ = (FLOAT_ENTRY if v[0] == T_FLOAT else INT_ENTRY).unpack(v)
        kind = type(new)
        if value is not None and kind is type(value) and now - seq <= self._touch_ns:
            if ttl is None:
                same = not exp
            else:
                same = exp >= now + int(ttl * 1e9) + 1
            if same and (kind is float or INT64_MIN <= new <= INT64_MAX):
                txn.put(full, (FLOAT_ENTRY if kind is float else INT_ENTRY).pack(t, 0, exp, seq, new))
                return
        if new is DELETE:
            self._add_used(txn, -self._remove(txn, full, v))
        else:
            self._update_one(txn, full, full, v, new, ttl, now)

    def _update_one(self, txn: Txn, sk: bytes, full: bytes, old: bytes | None,
                    new: Value, ttl: float | None, now: int) -> None:
        t, payload = encode(new)
        if ttl is None:
            exp = 0
        else:
            need = now + max(1, int(ttl * 1e9))
            old_exp = HDR.unpack_from(old)[2] if old is not None else 0
            exp = old_exp if old_exp >= need else need + UPDATE_EXPIRY_SLACK
        if old is not None and not old[1] and old[0] != T_LIST:
            _, _, old_exp, seq = HDR.unpack_from(old)
            if old_exp == exp and now - seq <= self._touch_ns \
                    and len(old) == HDR_SIZE + len(payload):
                txn.put(sk, HDR.pack(t, 0, exp, seq) + payload)   # in place
                return
        self._put(txn, sk, full, t, payload, exp, old if old is not None else txn.get(sk),
                  True, now)

    async def expire(self, key: object, ttl: object) -> bool:
        """Give a live entry a new TTL (None or 0: never expires); False if absent."""
        exp = contract.ttl_ns(ttl)
        return self._write(self._expire, *self._keys(key), exp)

    def _expire(self, txn: Txn, sk: bytes, full: bytes, ttl: int) -> bool:
        now = monotonic_ns()
        v, _ = self._lookup(txn, sk, full)
        if v is None:
            return False
        t, flags, old_exp, seq = HDR.unpack_from(v)
        if old_exp and old_exp <= now:
            return False
        exp = now + ttl if ttl else 0
        if old_exp:
            txn.delete(BE64.pack(old_exp) + sk, db=self._exp)
        if exp:
            txn.put(BE64.pack(exp) + sk, b"", db=self._exp)
        txn.put(sk, HDR.pack(t, flags, exp, seq) + v[HDR_SIZE:])
        return True

    async def flush_all(self) -> None:
        """Remove every entry at once (and free the space, unlike OpenResty's
        flush_all, which only marks entries expired)."""
        self._write(self._flush_all)

    def _flush_all(self, txn: Txn) -> None:
        for db in (self._data, self._lru, self._exp, self._items):
            txn.drop(db, delete=False)
        self._put_meta(txn, USED, 0)

    async def flush_expired(self, max_count: object = 0) -> int:
        """Remove expired entries, soonest expiry first, at most ``max_count``
        (0 = all); returns how many were removed."""
        return self._write(self._flush_expired, contract.count(max_count))

    def _flush_expired(self, txn: Txn, max_count: int) -> int:
        now = monotonic_ns()
        cur = txn.cursor(self._exp)
        found = cur.first()
        count = freed = 0
        while found and (max_count <= 0 or count < max_count):
            ek = cur.key()
            if BE64.unpack_from(ek)[0] > now:
                break
            freed += self._remove(txn, ek[8:])
            txn.delete(ek, db=self._exp)
            count += 1
            found = cur.set_range(ek)
        self._add_used(txn, -freed)
        return count

    # -- lists --------------------------------------------------------------

    async def lpush(self, key: object, value: object) -> int:
        """Insert at the head; returns the new length. TypeError on a scalar key."""
        return self._write(self._push, *self._keys(key), encode(value), True)

    async def rpush(self, key: object, value: object) -> int:
        """Append at the tail; returns the new length. TypeError on a scalar key."""
        return self._write(self._push, *self._keys(key), encode(value), False)

    def _push(self, txn: Txn, sk: bytes, full: bytes,
              item: tuple[int, bytes], left: bool) -> int:
        now = monotonic_ns()
        v, _ = self._lookup(txn, sk, full)
        if v is not None and expired(v, now):
            self._add_used(txn, -self._remove(txn, sk, v))
            v = None
        if v is not None and v[0] != T_LIST:
            raise contract.not_a_list(full)
        raw_item = bytes((item[0],)) + item[1]
        cost = len(sk) + 8 + len(raw_item) + ITEM_OVERHEAD
        if v is None:
            flags, blob = key_blob(full)
            head = tail = nbytes = exp = 0
            seq = self._new_seq(txn, sk, now)
            base = len(sk) + HDR_SIZE + len(blob) + LIST_META.size + ENTRY_OVERHEAD
        else:
            _, flags, exp, seq = HDR.unpack_from(v)
            blob = v[HDR_SIZE:len(v) - LIST_META.size]
            head, tail, nbytes = LIST_META.unpack_from(v, len(v) - LIST_META.size)
            seq = self._recency(txn, sk, seq, now)
            base = 0
        total = (base if v is None else self._cost(txn, sk, v)) + cost
        if total > self._capacity:
            raise SharedDictFull(f"shared dict {self.name!r}: list {contract.key_out(full)!r} "
                                 f"would outgrow {self._capacity} bytes")
        self._make_room(txn, base + cost, True, sk, now)
        index = head - 1 if left else tail
        head, tail = min(head, index), max(tail, index + 1)
        txn.put(sk + INDEX.pack(index), raw_item, db=self._items)
        txn.put(sk, HDR.pack(T_LIST, flags, exp, seq) + blob
                + LIST_META.pack(head, tail, nbytes + cost))
        return tail - head

    async def lpop(self, key: object) -> Value | None:
        """Remove and return the head; None if absent. TypeError on a scalar key."""
        return self._write(self._pop, *self._keys(key), True)

    async def rpop(self, key: object) -> Value | None:
        """Remove and return the tail; None if absent. TypeError on a scalar key."""
        return self._write(self._pop, *self._keys(key), False)

    def _pop(self, txn: Txn, sk: bytes, full: bytes, left: bool) -> Value | None:
        now = monotonic_ns()
        v, _ = self._lookup(txn, sk, full)
        if v is None:
            return None
        t, flags, exp, seq = HDR.unpack_from(v)
        if exp and exp <= now:
            return None
        if t != T_LIST:
            raise contract.not_a_list(full)
        head, tail, nbytes = LIST_META.unpack_from(v, len(v) - LIST_META.size)
        index = head if left else tail - 1
        ik = sk + INDEX.pack(index)
        item = txn.get(ik, None, self._items)
        if item is None:
            raise SharedDictError(f"corrupt list {contract.key_out(full)!r} in {self.name!r}")
        if tail - head == 1:
            self._add_used(txn, -self._remove(txn, sk, v))
        else:
            txn.delete(ik, db=self._items)
            cost = len(sk) + 8 + len(item) + ITEM_OVERHEAD
            head, tail = (head + 1, tail) if left else (head, tail - 1)
            seq = self._recency(txn, sk, seq, now)
            txn.put(sk, v[:10] + U64.pack(seq) + v[HDR_SIZE:len(v) - LIST_META.size]
                    + LIST_META.pack(head, tail, nbytes - cost))
            self._add_used(txn, -cost)
        return decode(item[0], item, 1)

    async def llen(self, key: object) -> int:
        """The list's length; 0 if absent. TypeError on a scalar key."""
        return self._read(self._llen, *self._keys(key))

    def _llen(self, txn: Txn, sk: bytes, full: bytes) -> int:
        now = monotonic_ns()
        v, _ = self._lookup(txn, sk, full)
        if v is None:
            return 0
        t, _, exp, _ = HDR.unpack_from(v)
        if exp and exp <= now:
            return 0
        if t != T_LIST:
            raise contract.not_a_list(full)
        head, tail, _ = LIST_META.unpack_from(v, len(v) - LIST_META.size)
        return tail - head  # type: ignore[no-any-return]


def _single(decide: Callable[..., Any], values: list[Value | None], now: float,
            wall: float) -> tuple[list[Any], list[float | None], Any]:
    result, new, ttl = decide(values[0], now, wall)
    return [new], [ttl], result


def reader_check(path: str, capacity: int) -> int:
    """Clear the reader slots of dead processes in the store at ``path``.

    For the master after it reaps a child: a process killed inside a read
    transaction pins the pages that transaction saw until this runs (issue 5,
    pitfall (a)). Opens the environment briefly (~1 ms measured) with a map no
    smaller than any process's, so it never truncates the file under a child,
    and closes it again, so nothing stays open across the master's next fork.
    Returns the number of slots cleared (0 if the store does not exist yet).
    Raises SharedDictError if the store cannot be opened.
    """
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return 0
    try:
        env = open_env(path, capacity)
    except lmdb.Error as exc:
        raise SharedDictError(f"reader check of {path}: {exc}") from exc
    try:
        return env.reader_check()
    finally:
        env.close()
