"""Location limits: ``limit_req``, ``limit_conn``, ``limit_count`` of a location, applied
in the access phase before the user's access handler (SPEC §8c).

Rules
-----
- One ``LocationLimits`` per limited location per process, built with the
  routes. ``enter(r)`` runs before the access handler; it returns a ``Held``
  when a ``limit_conn`` slot was taken, whose ``release()`` the phase runner
  calls once the request is over, however it ended (nginx frees the slot at
  request cleanup).
- Every zone of the location that has a key for this request decides
  together, all or nothing: on one dict that is one atomic operation
  (``pyresty.runtime.limit.stores``), so a request refused by ``limit_count``
  costs no ``limit_req`` token and takes no ``limit_conn`` slot. An empty key
  (no such header, a key function returning None) is not limited, as in nginx.
- Refused: ``limit_status`` (429) with ``Retry-After`` (whole seconds, at least
  1) and a log line in nginx's words at ``limit_log_level``, at most
  ``LOG_LINES_PER_SECOND`` per zone per process (a flood must not fill the
  disk; the next line says how many were left out).
- Admitted: ``limit_req`` without ``nodelay`` waits ``excess / rate`` seconds
  (less the first ``delay`` excess requests), as nginx delays; that wait is
  logged one level below ``limit_log_level``, like nginx's "delaying request".
- ``limit_headers`` (default on): ``RateLimit-Limit``, ``RateLimit-Remaining``,
  ``RateLimit-Reset`` (IETF httpapi draft names) of the tightest limit on every
  response of the location, refusals included.
- A ``redis://`` dict that fails (unreachable, or slower than 1 s):
  ``limit_fail = "open"`` admits, ``"closed"`` refuses with ``limit_status``;
  one warning per ``FAIL_WARN_EVERY`` seconds per dict and mode per process, and every
  such decision is counted for ``/metrics``.
- Counters per zone (passed, delayed, rejected, failed_open, failed_closed)
  live in this process and go to the master with the worker's figures (``stats``).
"""
from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections.abc import Callable
from math import ceil
from typing import TYPE_CHECKING, Any, Final

from pyresty import errorlog
from pyresty.errors import Exit, SharedDictError
from pyresty.runtime.limit import stores
from pyresty.runtime.limit.rules import Concurrency, CountWindow, Decision, RequestRate, Rule
from pyresty.runtime.shared import shared
from pyresty.runtime.shared.embedded import EmbeddedDict

if TYPE_CHECKING:
    from pyresty.config.model import Config, LimitUse, LimitZone, Location
    from pyresty.server.request import Request

log = logging.getLogger("pyresty.limit")

LOG_LINES_PER_SECOND: Final = 10   # rejection lines per zone per process per second
FAIL_WARN_EVERY: Final = 10.0      # seconds between two "limits fail open/closed" warnings
RESULTS: Final = ("passed", "delayed", "rejected", "failed_open", "failed_closed")

# zone -> result -> count, for /metrics (see stats())
_counts: dict[str, dict[str, int]] = {}
# tasks releasing limit_conn slots on redis:// dicts (kept so they are not collected)
_releasing: set[asyncio.Task[None]] = set()


def stats() -> dict[str, dict[str, int]]:
    """``{zone: {result: count}}`` of this process, for the worker's figures."""
    return {zone: dict(counts) for zone, counts in _counts.items()}


def _counter(zone: str) -> dict[str, int]:
    counts = _counts.get(zone)
    if counts is None:
        counts = _counts[zone] = dict.fromkeys(RESULTS, 0)
    return counts


class _Throttle:
    """At most ``per_second`` lines a second; counts what it left out."""

    __slots__ = ("per_second", "second", "lines", "skipped")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.second = 0
        self.lines = 0
        self.skipped = 0

    def allow(self, now: float) -> tuple[bool, int]:
        """(may log now, lines left out since the last one logged)."""
        second = int(now)
        if second != self.second:
            self.second, self.lines = second, 0
        if self.lines >= self.per_second:
            self.skipped += 1
            return False, 0
        self.lines += 1
        skipped, self.skipped = self.skipped, 0
        return True, skipped


class _FailWarning:
    """One warning per FAIL_WARN_EVERY seconds per dict, counting the decisions between."""

    __slots__ = ("last", "since")

    def __init__(self) -> None:
        self.last = -math.inf
        self.since = 0

    def note(self, dict_name: str, mode: str, exc: BaseException) -> None:
        self.since += 1
        now = time.monotonic()
        if now - self.last < FAIL_WARN_EVERY:
            return
        self.last = now
        what = "requests pass unlimited" if mode == "open" else "requests are refused"
        log.warning("limit_fail %s: shared dict \"%s\" failed (%s); %s (%d decisions since the "
                    "last warning)", mode, dict_name, exc, what, self.since)
        self.since = 0


_fail_warnings: dict[tuple[str, str], _FailWarning] = {}


def _note_failure(dict_name: str, mode: str, exc: BaseException) -> None:
    _fail_warnings.setdefault((dict_name, mode), _FailWarning()).note(dict_name, mode, exc)


class _Applied:
    """One zone as one location uses it."""

    __slots__ = ("zone", "use", "kind", "rule", "decide", "limit_text", "fields_for",
                 "field_values", "field_lines", "prefix", "key_of",
                 "key_fn", "counts", "throttle", "free_excess", "dict_name", "is_conn")

    def __init__(self, zone: LimitZone, use: LimitUse,
                 resolve: Callable[..., Callable[..., Any]]) -> None:
        self.zone = zone
        self.use = use
        self.kind = zone.kind
        self.dict_name = zone.dict
        self.is_conn = zone.kind == "conn"
        self.rule: Rule
        self.free_excess = 0.0      # req: seconds of excess served without delay
        if zone.kind == "req":
            self.rule = RequestRate(zone.rate, use.burst)
            if use.nodelay:
                self.free_excess = math.inf
            else:
                self.free_excess = use.delay / zone.rate
        elif zone.kind == "count":
            self.rule = CountWindow(zone.limit, zone.window)
        else:
            self.rule = Concurrency(use.max)
        self.decide = self.rule.decide
        self.limit_text = str(self.rule.limit)
        # the RateLimit-* values and lines last sent, and for which (remaining, reset):
        # successive requests mostly repeat them (_set_rate_limit_headers)
        self.fields_for = (-1, -1)
        self.field_values: tuple[str, ...] = ()
        self.field_lines = b""
        self.prefix = f"limit_{zone.kind}:{zone.name}:".encode()
        self.key_fn: Callable[..., Any] | None = None
        self.key_of: Callable[[Request], Any] | None = None
        key = zone.key
        if key == "remote_addr":
            self.key_of = _remote_addr     # attrgetter: no Python frame per request
        elif key.startswith("header:"):
            field = key[len("header:"):].lower().encode("latin-1")
            self.key_of = lambda r: r.header(field)
        elif key.startswith("arg:"):
            name = key[len("arg:"):]
            self.key_of = lambda r: _first_arg(r, name)
        else:
            self.key_fn = resolve(key, phase="key")
        self.counts = _counter(zone.name)
        self.throttle = _Throttle(LOG_LINES_PER_SECOND)

    def rate_limit_fields(self, remaining: int, reset: int) -> None:
        """Make the RateLimit-* values and their lines for ``remaining`` and ``reset``."""
        left, seconds = str(remaining), str(reset)
        self.fields_for = (remaining, reset)
        self.field_values = (self.limit_text, left, seconds)
        self.field_lines = (f"RateLimit-Limit: {self.limit_text}\r\nRateLimit-Remaining: {left}\r\n"
                            f"RateLimit-Reset: {seconds}\r\n").encode("latin-1")

    async def state_key(self, r: Request) -> bytes | None:
        if self.key_of is not None:
            value = self.key_of(r)
        else:
            assert self.key_fn is not None
            value = await self.key_fn(r)
        if not value:
            return None
        if isinstance(value, str):
            return self.prefix + value.encode()
        if isinstance(value, bytes):
            return self.prefix + value
        raise TypeError(f"limit_{self.kind} zone \"{self.zone.name}\": key function "
                        f"{self.zone.key} returned {type(value).__name__}, not str, bytes or None")


_remote_addr: Final[Callable[[Request], str]] = operator.attrgetter("client_addr")


def _first_arg(r: Request, name: str) -> str | None:
    values = r.args.get(name)
    return values[0] if values else None


class Held:
    """``limit_conn`` slots a request holds; ``release()`` gives them back once."""

    __slots__ = ("limits", "entries")

    def __init__(self, limits: LocationLimits, entries: list[tuple[_Applied, bytes]]) -> None:
        self.limits = limits
        self.entries = entries

    def release(self) -> None:
        entries, self.entries = self.entries, []
        by_dict: dict[str, list[tuple[_Applied, bytes]]] = {}
        for applied, key in entries:
            by_dict.setdefault(applied.zone.dict, []).append((applied, key))
        for dict_name, group in by_dict.items():
            rules = [a.rule for a, _ in group]
            keys = [k for _, k in group]
            try:
                d = shared[dict_name]
                if isinstance(d, EmbeddedDict):
                    stores.undo_now(d, rules, keys)
                    continue
            except (SharedDictError, KeyError):
                log.error("limit_conn: could not release a slot in shared dict \"%s\"", dict_name,
                          exc_info=True)
                continue
            task = asyncio.get_running_loop().create_task(_release_remote(d, rules, keys))
            _releasing.add(task)
            task.add_done_callback(_releasing.discard)


async def _release_remote(d: Any, rules: list[Rule], keys: list[bytes]) -> None:
    try:
        await stores.undo(d, rules, keys)
    except SharedDictError as exc:
        _note_failure(d.name, "open", exc)


class LocationLimits:
    """The limits of one location (see the module docstring)."""

    __slots__ = ("location", "applied", "status", "headers", "level", "delay_level",
                 "fail_closed", "single_dict", "one")

    def __init__(self, config: Config, location: Location,
                 resolve: Callable[..., Callable[..., Any]]) -> None:
        """Raises KeyError for a zone the config does not define (the loader
        refuses those first) and HandlerError for a key function that does not import."""
        self.location = location
        applied: list[_Applied] = []
        for kind, uses in (("req", location.limit_req), ("count", location.limit_count),
                           ("conn", location.limit_conn)):
            for use in uses:
                applied.append(_Applied(config.limit_zone(kind, use.zone), use, resolve))
        self.applied = tuple(applied)
        self.status = location.limit_status
        self.headers = location.limit_headers
        self.level = errorlog.LEVELS[location.limit_log_level]
        # nginx logs delays one level below limit_req_log_level
        order = ["debug", "info", "notice", "warn", "error"]
        self.delay_level = errorlog.LEVELS[order[order.index(location.limit_log_level) - 1]]
        self.fail_closed = location.limit_fail == "closed"
        names = {a.zone.dict for a in applied}
        self.single_dict = names.pop() if len(names) == 1 else None
        # one zone keyed by the request itself: enter() takes a shorter way
        self.one = applied[0] if len(applied) == 1 and applied[0].key_of is not None else None

    async def enter(self, r: Request) -> Held | None:
        """Decide for ``r``: return (after any delay) with the slots it holds,
        or raise ``Exit(limit_status)``. Raises what a key function raises."""
        one = self.one
        if one is not None:
            # the common case, kept short (it runs for every request of the
            # location): one zone, a key from the request, an embedded dict, and
            # the request passes at once
            key_of = one.key_of
            assert key_of is not None    # self.one is keyed by the request (__init__)
            value = key_of(r)
            if not value:
                return None
            d = shared._dicts.get(one.dict_name)
            if type(d) is EmbeddedDict:
                key = one.prefix + (value.encode() if type(value) is str else value)
                decision: Decision = d.update_one(key, one.decide)
                allowed, delay, remaining, reset, _ = decision
                if allowed and delay <= one.free_excess:
                    one.counts["passed"] += 1
                    if self.headers:
                        _set_rate_limit_headers(r, one, remaining, reset)
                    return Held(self, [(one, key)]) if one.is_conn else None
                return await self._finish(r, [(one, key)], [(one, decision)], allowed, [])
        entries: list[tuple[_Applied, bytes]] = []
        for applied in self.applied:
            state_key = await applied.state_key(r)
            if state_key is not None:
                entries.append((applied, state_key))
        if not entries:
            return None
        decided: list[tuple[_Applied, Decision]] = []
        if self.single_dict is not None:
            ok = await self._decide(self.single_dict, entries, decided)
            committed = [self.single_dict] if ok else []
        else:
            ok, committed = await self._decide_by_dict(entries, decided)
        return await self._finish(r, entries, decided, ok, committed)

    async def _finish(self, r: Request, entries: list[tuple[_Applied, bytes]],
                      decided: list[tuple[_Applied, Decision]], ok: bool,
                      committed: list[str]) -> Held | None:
        """Refuse, or count, set the headers, wait the delay and hand back the slots."""
        if not ok:
            for dict_name in committed:
                await self._undo(dict_name, entries)
            self._refuse(r, decided)
        if self.headers and decided:
            _rate_limit_headers(r, decided)
        wait = 0.0
        for applied, decision in decided:
            counts = applied.counts
            if applied.kind == "req" and decision.delay > applied.free_excess:
                delay = decision.delay - applied.free_excess
                wait = max(wait, delay)
                counts["delayed"] += 1
                log.log(self.delay_level, "delaying request, excess: %.3f, by zone \"%s\", "
                        "client: %s, request: \"%s %s\"", decision.delay * applied.zone.rate,
                        applied.zone.name, r.client_addr, r.method, r.uri)
            else:
                counts["passed"] += 1
        conns = [(a, k) for a, k in entries if a.kind == "conn" and _decided(a, decided)]
        held = Held(self, conns) if conns else None
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except BaseException:
                if held is not None:
                    held.release()
                raise
        return held

    async def _decide_by_dict(self, entries: list[tuple[_Applied, bytes]],
                              decided: list[tuple[_Applied, Decision]]) -> tuple[bool, list[str]]:
        names: list[str] = []
        for applied, _ in entries:
            if applied.zone.dict not in names:
                names.append(applied.zone.dict)
        committed: list[str] = []
        for name in names:
            group = [(a, k) for a, k in entries if a.zone.dict == name]
            if not await self._decide(name, group, decided):
                return False, committed
            committed.append(name)
        return True, committed

    async def _decide(self, dict_name: str, entries: list[tuple[_Applied, bytes]],
                      decided: list[tuple[_Applied, Decision]]) -> bool:
        """Decide the entries on one dict; False when refused (or failed closed)."""
        rules = [a.rule for a, _ in entries]
        keys = [k for _, k in entries]
        try:
            d = shared[dict_name]
            if isinstance(d, EmbeddedDict):
                decisions = stores.decide_now(d, rules, keys, True)
            else:
                decisions = await stores.decide(d, rules, keys, True)
        except SharedDictError as exc:
            mode = "closed" if self.fail_closed else "open"
            _note_failure(dict_name, mode, exc)
            for applied, _ in entries:
                applied.counts["failed_" + mode] += 1
            if self.fail_closed:
                decided.extend((a, _FAILED) for a, _ in entries)
                return False
            return True
        decided.extend((a, dec) for (a, _), dec in zip(entries, decisions))
        return all(dec.allowed for dec in decisions)

    async def _undo(self, dict_name: str, entries: list[tuple[_Applied, bytes]]) -> None:
        group = [(a, k) for a, k in entries if a.zone.dict == dict_name]
        try:
            await stores.undo(shared[dict_name], [a.rule for a, _ in group], [k for _, k in group])
        except SharedDictError as exc:
            mode = "closed" if self.fail_closed else "open"
            _note_failure(dict_name, mode, exc)

    def _refuse(self, r: Request, decided: list[tuple[_Applied, Decision]]) -> None:
        retry = 1.0
        now = time.monotonic()
        for applied, decision in decided:
            if decision.allowed:
                continue
            if decision is not _FAILED:
                applied.counts["rejected"] += 1
                retry = max(retry, decision.retry_after)
                self._log_refusal(r, applied, decision, now)
        headers = r.headers_out
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
        if self.headers:
            _rate_limit_headers(r, decided)
        raise Exit(self.status)

    def _log_refusal(self, r: Request, applied: _Applied, decision: Decision, now: float) -> None:
        if not log.isEnabledFor(self.level):
            return
        ok, skipped = applied.throttle.allow(now)
        if not ok:
            return
        zone = applied.zone
        if applied.kind == "req":
            rule = applied.rule
            assert isinstance(rule, RequestRate)
            what = f"limiting requests, excess: {rule.excess(decision):.3f} by zone \"{zone.name}\""
        elif applied.kind == "conn":
            what = f"limiting connections by zone \"{zone.name}\""
        else:
            what = (f"limiting requests, quota of {zone.limit} per {zone.window:g}s used up "
                    f"by zone \"{zone.name}\"")
        host = r.header(b"host")
        server = r.server.name
        line = (f"{what}, client: {r.client_addr}, server: {server}, "
                f"request: \"{r.method} {r.uri} HTTP/{r.http_version}\"")
        if host:
            line += f", host: \"{host.decode('latin-1')}\""
        if skipped:
            line += f" ({skipped} similar lines left out)"
        log.log(self.level, "%s", line)


# A decision that stands for a failed store with limit_fail = "closed".
_FAILED: Final = Decision(False, 0.0, 0, 0.0, 1.0)


def _decided(applied: _Applied, decided: list[tuple[_Applied, Decision]]) -> bool:
    return any(a is applied and d.allowed for a, d in decided)


def _rate_limit_headers(r: Request, decided: list[tuple[_Applied, Decision]]) -> None:
    """The tightest limit's RateLimit-* fields: the one with the least remaining,
    among rate and quota limits; concurrency only when alone (it has no reset)."""
    known = [(a, d) for a, d in decided if d is not _FAILED]
    timed = [(a, d) for a, d in known if a.kind != "conn"] or known
    if not timed:
        return
    applied, decision = min(timed, key=lambda item: item[1].remaining)
    _set_rate_limit_headers(r, applied, decision.remaining, decision.reset)


# The RateLimit-* fields, set with their wire lines built here (Headers.set_encoded):
# through the generic path they cost about as much as the decision (issue 15).
_RATE_LIMIT_NAMES: Final = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
_RATE_LIMIT_LOWERED: Final = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def _set_rate_limit_headers(r: Request, applied: _Applied, remaining: int, reset: float) -> None:
    seconds = ceil(reset)
    if remaining != applied.fields_for[0] or seconds != applied.fields_for[1]:
        applied.rate_limit_fields(remaining, seconds)
    r.headers_out.set_encoded(_RATE_LIMIT_LOWERED, _RATE_LIMIT_NAMES, applied.field_values,
                              applied.field_lines)


def location_limits(config: Config, location: Location,
                    resolve: Callable[..., Callable[..., Any]]) -> LocationLimits | None:
    """The limits of ``location``, or None when it has none."""
    if not location.limited:
        return None
    return LocationLimits(config, location, resolve)
