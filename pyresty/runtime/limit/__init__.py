"""``pyresty.limit``: request rate, quota and concurrency limits on shared dicts (SPEC §8c).

    lim = pyresty.limit.req("limits", rate=10, burst=20)       # requests per second
    d = await lim.incoming(key)          # Decision(allowed, delay, remaining, reset)
    cnt = pyresty.limit.count("limits", limit=1000, window=3600)
    conn = pyresty.limit.conn("limits", max=10, burst=5, delay=0.1)
    async with conn.hold(key) as d: ...  # incoming, and leaving on the way out
    both = pyresty.limit.combine(lim, cnt)   # all or nothing

Rules
-----
- A limiter is a plain object holding its numbers and the *name* of a shared
  dict; it can be made anywhere (module level, ``init_worker``), and finds the
  dict when it decides, so it works after a reload reopens the dicts.
- Every decision is one atomic operation on the dict (``stores.py``): exact
  across the workers of a machine (embedded) and across servers (``redis://``).
- ``incoming(key, commit=True)`` admits or rejects; ``commit=False`` only asks.
  A rejection never changes the state. ``uncommit(key)`` takes one admission
  back (resty.limit.req/count have it; for ``conn`` it is ``leaving``).
- The decision does not wait: ``Decision.delay`` says how long the caller
  should (``await asyncio.sleep(d.delay)``), as with OpenResty's limiters.
- State lives under ``limit_<kind>:[<name>:]<key>`` in the dict; limiters of
  one kind on one dict share keys unless given different ``name``s.
- ``combine`` decides for limiters on one dict in one operation, committing
  nothing unless every one admits. Limiters on several dicts are decided dict
  by dict, and the dicts already committed are uncommitted when a later one
  rejects (resty.limit.traffic's way; between those steps another request may
  see the intermediate state).
- A store failure raises ``pyresty.SharedDictError`` (an unreachable Redis, or
  one slower than 1 s). Location limits in the config turn that into
  ``limit_fail = "open" | "closed"``.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pyresty.runtime.limit import stores
from pyresty.runtime.limit.rules import Concurrency, CountWindow, Decision, RequestRate, Rule, merge
from pyresty.runtime.shared import contract, shared
from pyresty.runtime.shared.contract import Key, SharedDict

__all__ = ["Combined", "ConnLimiter", "CountLimiter", "Decision", "Limiter", "RequestLimiter",
           "combine", "conn", "count", "req"]


class Limiter:
    """What every limiter has: its rule, its dict and its key prefix."""

    __slots__ = ("dict_name", "name", "rule", "_prefix")
    kind = ""

    def __init__(self, dict_name: str, rule: Rule, name: str = "") -> None:
        if not isinstance(dict_name, str) or not dict_name:
            raise TypeError("the shared dict is given by its name, e.g. \"limits\"")
        self.dict_name = dict_name
        self.name = name
        self.rule = rule
        self._prefix = f"limit_{self.kind}:{name}:".encode() if name else f"limit_{self.kind}:".encode()

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__name__}{label} on {self.dict_name!r}>"

    @property
    def dict(self) -> SharedDict:
        """The shared dict (KeyError naming the configured ones if absent)."""
        return shared[self.dict_name]

    def state_key(self, key: Key) -> bytes:
        """The dict key holding ``key``'s state. TypeError / ValueError for a bad key."""
        raw = key.encode() if type(key) is str else key
        if type(raw) is not bytes:
            raw = contract.key_bytes(key)
        elif not raw:
            raise ValueError("a limiter key must not be empty")
        full = self._prefix + raw
        if len(full) > contract.MAX_KEY_BYTES:
            contract.key_bytes(full)      # raises the usual ValueError
        return full

    async def incoming(self, key: Key, commit: bool = True) -> Decision:
        """Decide for one request with ``key``; with ``commit`` an admission is recorded.

        Raises SharedDictError if the store fails, KeyError for an unknown dict,
        TypeError / ValueError for a bad key.
        """
        decisions = await stores.decide(self.dict, (self.rule,), [self.state_key(key)], commit)
        return decisions[0]

    async def uncommit(self, key: Key) -> None:
        """Take back one admission of ``key`` (after a later step refused the request).

        Raises as ``incoming`` does.
        """
        await stores.undo(self.dict, (self.rule,), [self.state_key(key)])


class RequestLimiter(Limiter):
    """``rate`` requests per second per key, ``burst`` more admitted with a delay
    (nginx's ``limit_req``; GCRA, exact). ``Decision.delay`` is nginx's delay for
    the request; with ``nodelay`` semantics, ignore it."""

    __slots__ = ()
    kind = "req"

    def __init__(self, dict_name: str, rate: float, burst: float = 0, *, name: str = "") -> None:
        super().__init__(dict_name, RequestRate(_positive("rate", rate), _at_least("burst", burst, 0)),
                         name)

    @property
    def rate(self) -> float:
        return float(self.rule.rate)  # type: ignore[attr-defined]

    @property
    def burst(self) -> float:
        return float(self.rule.burst)  # type: ignore[attr-defined]

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (resty.limit.req's ``set_rate``)."""
        self.rule = RequestRate(_positive("rate", rate), self.burst)

    def set_burst(self, burst: float) -> None:
        """Change the burst from now on (resty.limit.req's ``set_burst``)."""
        self.rule = RequestRate(self.rate, _at_least("burst", burst, 0))


class CountLimiter(Limiter):
    """``limit`` requests per key per ``window`` seconds, windows aligned to the
    clock (an hourly window starts on the hour), so ``reset`` is the same for
    every key and every server."""

    __slots__ = ()
    kind = "count"

    def __init__(self, dict_name: str, limit: int, window: float, *, name: str = "") -> None:
        super().__init__(dict_name, CountWindow(_integer("limit", limit, 1), _positive("window", window)),
                         name)


class ConnLimiter(Limiter):
    """``max`` concurrent requests per key; ``burst`` more admitted with a delay of
    ``delay`` seconds per ``max`` already in excess (resty.limit.conn's rule),
    rejected beyond. Every admitted ``incoming`` needs a ``leaving``; ``hold``
    pairs them."""

    __slots__ = ()
    kind = "conn"

    def __init__(self, dict_name: str, max: int, burst: int = 0, delay: float = 0.0,  # noqa: A002
                 *, name: str = "") -> None:
        super().__init__(dict_name, Concurrency(_integer("max", max, 1), _integer("burst", burst, 0),
                                                _at_least("delay", delay, 0)), name)

    async def leaving(self, key: Key) -> None:
        """A request admitted for ``key`` has finished. Raises as ``incoming`` does."""
        await self.uncommit(key)

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[Decision]:
        """``incoming(key)``, and ``leaving(key)`` when the block ends, however it ends.

        The block runs whatever the decision: look at ``d.allowed`` (and
        ``d.delay``). Raises as ``incoming`` does.
        """
        decision = await self.incoming(key)
        try:
            yield decision
        finally:
            if decision.allowed:
                await self.leaving(key)


class Combined:
    """Several limiters deciding together, all or nothing (see the module docstring)."""

    __slots__ = ("limiters",)

    def __init__(self, limiters: Sequence[Limiter]) -> None:
        if not limiters:
            raise ValueError("combine() needs at least one limiter")
        for item in limiters:
            if not isinstance(item, Limiter):
                raise TypeError(f"combine() takes limiters, not {type(item).__name__}")
        self.limiters = tuple(limiters)

    def __repr__(self) -> str:
        return f"<Combined {', '.join(map(repr, self.limiters))}>"

    def _keys(self, key: Key | Sequence[Key]) -> list[bytes]:
        if isinstance(key, (str, bytes)):
            return [lim.state_key(key) for lim in self.limiters]
        keys = list(key)
        if len(keys) != len(self.limiters):
            raise ValueError(f"combine() of {len(self.limiters)} limiters got {len(keys)} keys")
        return [lim.state_key(k) for lim, k in zip(self.limiters, keys)]

    def _groups(self) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for i, lim in enumerate(self.limiters):
            groups.setdefault(lim.dict_name, []).append(i)
        return list(groups.values())

    async def incoming(self, key: Key | Sequence[Key], commit: bool = True) -> Decision:
        """Decide for every limiter (one key for all, or one per limiter): admitted
        only if all admit, and nothing is committed otherwise. The merged decision
        has the longest delay, the least remaining and the longest reset.

        Raises as ``Limiter.incoming`` does; a store failure after some dicts
        committed uncommits them first.
        """
        keys = self._keys(key)
        decisions: list[Decision] = []
        done: list[list[int]] = []
        try:
            for group in self._groups():
                lims = [self.limiters[i] for i in group]
                got = await stores.decide(lims[0].dict, [lim.rule for lim in lims],
                                          [keys[i] for i in group], commit)
                decisions += got
                if not all(d.allowed for d in got):
                    break
                done.append(group)
        except BaseException:
            if commit:
                await self._undo(done, keys)
            raise
        result = merge(decisions)
        if commit and not result.allowed:
            await self._undo(done, keys)
        return result

    async def _undo(self, groups: list[list[int]], keys: list[bytes]) -> None:
        for group in groups:
            lims = [self.limiters[i] for i in group]
            await stores.undo(lims[0].dict, [lim.rule for lim in lims], [keys[i] for i in group])

    async def uncommit(self, key: Key | Sequence[Key]) -> None:
        """Take back one admission from every limiter (conn limiters: ``leaving``)."""
        await self._undo(self._groups(), self._keys(key))

    async def leaving(self, key: Key | Sequence[Key]) -> None:
        """A request admitted by ``incoming`` has finished: ``leaving`` for the conn limiters."""
        keys = self._keys(key)
        conns = [[i] for i, lim in enumerate(self.limiters) if isinstance(lim, ConnLimiter)]
        await self._undo(conns, keys)


def req(dict_name: str, rate: float, burst: float = 0, *, name: str = "") -> RequestLimiter:
    """A request-rate limiter: ``rate`` per second, ``burst`` more with a delay.

    Raises ValueError for rate <= 0 or burst < 0.
    """
    return RequestLimiter(dict_name, rate, burst, name=name)


def count(dict_name: str, limit: int, window: float, *, name: str = "") -> CountLimiter:
    """A quota: ``limit`` requests per clock-aligned ``window`` seconds.

    Raises ValueError for limit < 1 or window <= 0.
    """
    return CountLimiter(dict_name, limit, window, name=name)


def conn(dict_name: str, max: int, burst: int = 0, delay: float = 0.0,  # noqa: A002
         *, name: str = "") -> ConnLimiter:
    """A concurrency limiter: ``max`` in flight per key, ``burst`` more delayed.

    Raises ValueError for max < 1, burst < 0 or delay < 0.
    """
    return ConnLimiter(dict_name, max, burst, delay, name=name)


def combine(*limiters: Limiter) -> Combined:
    """Limiters that decide together: admitted only if all admit, all or nothing.

    Raises ValueError without limiters, TypeError for something else.
    """
    return Combined(limiters)


def _number(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    return value


def _positive(what: str, value: Any) -> float:
    if not _number(what, value) > 0 or value != value or value == float("inf"):
        raise ValueError(f"{what} must be a finite number > 0 (got {value!r})")
    return value


def _at_least(what: str, value: Any, minimum: float) -> float:
    if not _number(what, value) >= minimum or value == float("inf"):
        raise ValueError(f"{what} must be a finite number >= {minimum} (got {value!r})")
    return value


def _integer(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum} (got {value!r})")
    return value
