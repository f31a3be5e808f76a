"""What every shared-dict backend promises: the ``SharedDict`` protocol, the
limits on keys and values, and the argument checks both backends share.

Rules (SPEC §7, modelled on OpenResty's ``ngx.shared.DICT``):

- Keys are ``str`` or ``bytes``; a ``str`` key is its UTF-8 bytes, so ``"a"``
  and ``b"a"`` name the same entry (OpenResty keys are Lua strings, which are
  bytes). A key is 1 to 65535 bytes (``ngx_http_lua_shdict`` stores the key
  length in a 16-bit field and refuses empty keys; we keep both limits).
  ``keys()`` returns ``str`` for keys that are valid UTF-8, ``bytes`` otherwise.
- Values are ``str``, ``bytes``, ``int``, ``float`` or ``bool`` and come back
  with the type they went in with. ``set(key, None)`` deletes, as
  ``ngx.shared.DICT:set(key, nil)`` does. Anything else is a ``TypeError``.
- A TTL is seconds as a float. ``None`` or ``0`` means "never expires"
  (OpenResty's ``exptime = 0``); a negative TTL, NaN, or one above ``MAX_TTL``
  (``math.inf`` included) is a ``ValueError``.
- A key holds either a scalar or a list. Using one as the other is a
  ``TypeError`` naming the key; an *expired* entry counts as absent.

Return values (the choices OpenResty users expect, made Pythonic):

=================================  ===========================================
``get``                            value, or ``None`` if absent or expired
``get_stale``                      ``(value, stale)``; ``(None, False)`` if absent
``set`` / ``safe_set``             ``None``
``add`` / ``safe_add``             ``False`` if a live entry exists, else ``True``
``replace``                        ``False`` if no live entry exists, else ``True``
``delete``                         ``None``
``incr``                           the new number; ``None`` if the key is absent
                                   and ``init`` is ``None`` (OpenResty returns
                                   ``nil, "not found"``; a ``KeyError`` would make
                                   the common "count if present" idiom a try block)
``ttl``                            seconds left; ``0.0`` if it never expires;
                                   ``None`` if absent (OpenResty's convention)
``expire``                         ``False`` if absent, else ``True``
``flush_all``                      ``None``
``flush_expired``                  how many entries were removed
``keys``                           live keys, at most ``max_count`` (0 = all)
``capacity`` / ``free_space``      bytes
``lpush`` / ``rpush``              the list's new length
``lpop`` / ``rpop``                the value, or ``None`` if the list is absent
``llen``                           the length; ``0`` if absent
=================================  ===========================================
"""
from __future__ import annotations

from typing import Any, Protocol, TypedDict

Key = str | bytes
Value = str | bytes | int | float | bool
Number = int | float

class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# What a read-decide-write step (``EmbeddedDict.update``, pyresty.limit) may
# return for an entry instead of a new value.
UNCHANGED: Any = _Marker("UNCHANGED")
DELETE: Any = _Marker("DELETE")

MAX_KEY_BYTES = 65535          # ngx_http_lua_shdict_node_t.key_len is a u_short
# The longest TTL, seconds (100 years): the embedded store keeps expiry as u64
# monotonic nanoseconds (~584 years, so 1e11 s or math.inf overflowed struct.pack),
# Redis as int64 milliseconds; "never" is None or 0.
MAX_TTL = 100 * 365 * 86400


class DictStats(TypedDict):
    """One dict's figures for ``/metrics``."""

    capacity: int              # configured bytes (Redis: maxmemory, 0 = unlimited)
    used: int                  # bytes accounted to live and stale entries
    keys: int                  # entries, expired ones not yet evicted included
    evictions: int             # live entries removed to make room, ever


class SharedDict(Protocol):
    """A dictionary shared by every process (see the module docstring for returns).

    Every method may raise ``TypeError`` / ``ValueError`` for a bad key, value or
    TTL, ``TypeError`` for a list/scalar mismatch, and ``SharedDictError`` when
    the store itself fails (the backend's exception is chained).
    """

    name: str

    async def get(self, key: Key) -> Value | None: ...
    async def get_stale(self, key: Key) -> tuple[Value | None, bool]: ...
    async def set(self, key: Key, value: Value | None, ttl: float | None = None) -> None: ...
    async def safe_set(self, key: Key, value: Value | None, ttl: float | None = None) -> None: ...
    async def add(self, key: Key, value: Value, ttl: float | None = None) -> bool: ...
    async def safe_add(self, key: Key, value: Value, ttl: float | None = None) -> bool: ...
    async def replace(self, key: Key, value: Value, ttl: float | None = None) -> bool: ...
    async def delete(self, key: Key) -> None: ...
    async def incr(self, key: Key, delta: Number = 1, init: Number | None = None,
                   init_ttl: float | None = None) -> Number | None: ...
    async def ttl(self, key: Key) -> float | None: ...
    async def expire(self, key: Key, ttl: float | None) -> bool: ...
    async def flush_all(self) -> None: ...
    async def flush_expired(self, max_count: int = 0) -> int: ...
    async def keys(self, max_count: int = 1024) -> list[Key]: ...
    async def capacity(self) -> int: ...
    async def free_space(self) -> int: ...
    async def lpush(self, key: Key, value: Value) -> int: ...
    async def rpush(self, key: Key, value: Value) -> int: ...
    async def lpop(self, key: Key) -> Value | None: ...
    async def rpop(self, key: Key) -> Value | None: ...
    async def llen(self, key: Key) -> int: ...
    async def stats(self) -> DictStats: ...
    def stats_now(self) -> DictStats: ...
    async def aclose(self) -> None: ...


def key_bytes(key: object) -> bytes:
    """The key as bytes. Raises TypeError (not str/bytes), ValueError (empty or too long)."""
    if type(key) is str:
        raw = key.encode()
    elif type(key) is bytes:
        raw = key
    elif isinstance(key, (str, bytes)):
        raw = key.encode() if isinstance(key, str) else bytes(key)
    else:
        raise TypeError(f"shared dict key must be str or bytes, not {type(key).__name__}")
    if not raw:
        raise ValueError("shared dict key must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"shared dict key is {len(raw)} bytes (at most {MAX_KEY_BYTES})")
    return raw


def key_out(raw: bytes) -> Key:
    """A stored key as ``keys()`` returns it: ``str`` when it is UTF-8."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def ttl_ns(ttl: object) -> int:
    """A TTL in whole nanoseconds, 0 for "never". Raises TypeError / ValueError."""
    if ttl is None:
        return 0
    if type(ttl) is not int and type(ttl) is not float:
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if ttl < 0 or ttl != ttl:
        raise ValueError(f"ttl must be >= 0 (got {ttl!r})")
    if ttl > MAX_TTL:
        raise ValueError(f"ttl must be at most {MAX_TTL} s (got {ttl!r}); "
                         "use None or 0 for no expiry")
    if ttl == 0:
        return 0
    return max(1, int(ttl * 1e9))


def count(max_count: object) -> int:
    """``keys``/``flush_expired``'s ``max_count``: an int (0 or less = all). Raises TypeError."""
    if type(max_count) is not int:
        raise TypeError(f"max_count must be an int, not {type(max_count).__name__}")
    return max_count


def check_number(what: str, value: object) -> None:
    """Raise TypeError unless ``value`` is an int or float (bool is not a number here)."""
    if type(value) not in (int, float):
        raise TypeError(f"{what} must be an int or float, not {type(value).__name__}")


def check_incr_init(init: object, init_ttl: object) -> None:
    """``incr``'s rule, as OpenResty's: ``init_ttl`` means nothing without ``init``."""
    if init is None:
        if init_ttl is not None:
            raise ValueError("incr: init_ttl requires init (the TTL applies only to an "
                             "entry that incr creates from init)")
    else:
        check_number("init", init)


def bad_value(value: object) -> TypeError:
    return TypeError("shared dict values are str, bytes, int, float or bool, "
                     f"not {type(value).__name__}")


def not_a_list(key: bytes) -> TypeError:
    return TypeError(f"shared dict key {key_out(key)!r} holds a value, not a list")


def is_a_list(key: bytes) -> TypeError:
    return TypeError(f"shared dict key {key_out(key)!r} holds a list, not a value")


def not_a_number(key: bytes) -> TypeError:
    return TypeError(f"shared dict key {key_out(key)!r} does not hold a number")


def base_value(value: object) -> Value:
    """A subclass of a value type (IntEnum, HTTPStatus, a str enum) as its base type.

    Raises TypeError for anything else.
    """
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes(value)
    raise bad_value(value)
