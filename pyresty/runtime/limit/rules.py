"""The three limiting rules as pure functions: state and clock in, decision out.

Nothing here does I/O or reads a clock. A store (``stores.py``) reads each
limiter's state from a shared dict, calls ``decide`` with the time it took
*inside* its atomic operation, and writes back what the rule says, in the same
LMDB write transaction or Redis script. So a rule never sees a state that
another worker changed between its read and its write (resty.limit.req reads
with ``get`` and writes with ``set``; its source marks that race "FIXME").

Rules
-----
- ``decide(state, now, wall) -> (decision, new state, ttl)``: ``now`` is
  seconds on a clock every sharer of the dict agrees on and that never steps
  (CLOCK_MONOTONIC for the embedded store, Redis's ``TIME`` for ``redis://``);
  ``wall`` is Unix time, used only to align count windows with the clock. The
  new state is what to store (or ``UNCHANGED`` / ``DELETE``), ttl how long the
  entry must live at least (``None``: no expiry).
- ``undo(state, now, wall)`` returns the state with one admission taken back
  (``uncommit``), ``UNCHANGED`` when there is nothing to take back.
- Rejections never change the state (nginx: a rejected request does not fill
  the bucket).
- The arithmetic is generic: the unit tests run the same code on
  ``fractions.Fraction`` to compare decisions exactly with a leaky bucket
  (a decision's times have the type of ``now``: float in production).

Request rate: GCRA
------------------
nginx's ``limit_req`` and ``resty.limit.req`` keep a leaky bucket per key,
``(excess, last)``: at each request ``excess = max(excess - rate * elapsed + 1, 0)``,
rejected when ``excess > burst``, delayed by ``excess / rate``. GCRA (the
Generic Cell Rate Algorithm, ITU-T I.371) keeps one number instead, the
theoretical arrival time ``tat``, and makes the same decisions: with
``T = 1/rate`` and ``tau = burst * T``, a request at ``now`` is admitted iff
``max(tat, now) - now <= tau``, then ``tat = max(tat, now) + T``; its delay is
``max(tat, now) - now``, which is nginx's ``excess / rate`` (``tat`` is
``last + (excess + 1) / rate``). One number means one read and one write,
and a state that is simply absent once ``tat`` has passed (the entry expires).
``Decision.remaining`` is how many more requests would be admitted at once,
``reset`` the seconds until the bucket is empty again.

Count per window
----------------
``limit`` requests per ``window`` seconds, windows aligned to the clock
(``floor(wall / window)``: an hourly window starts on the hour, UTC), so
``reset`` is the time to the next boundary and every server sharing the dict
agrees on it (resty.limit.count starts the window at the first request, so
its reset differs per key and per restart). The state is ``"<window>:<count>"``.

Concurrency
-----------
``max`` requests in flight per key, ``burst`` more admitted with a delay of
``delay * floor((n - 1) / max)`` seconds (resty.limit.conn's rule), rejected
beyond ``max + burst``. The state is the count; ``undo`` is ``leaving``.
A process killed while holding a slot leaves it counted (as in OpenResty):
the embedded store outlives workers.
"""
from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

from pyresty.runtime.shared import contract

__all__ = ["DELETE", "UNCHANGED", "Concurrency", "CountWindow", "Decision", "RequestRate",
           "Rule", "Verdict"]

# Float slack for "exactly at the boundary": Redis's TIME-based clock is held
# in doubles; 1 us errs on admitting, never on a spurious rejection.
EPSILON: Final = 1e-6


UNCHANGED: Final[Any] = contract.UNCHANGED    # "leave the entry as it is"
DELETE: Final[Any] = contract.DELETE


class Decision(NamedTuple):
    """What a limiter decided for one request.

    ``allowed``: admit it. ``delay``: seconds to wait before serving it (0 when
    served at once). ``remaining``: further requests that would be admitted
    right now. ``reset``: seconds until the limit has fully recovered.
    ``retry_after``: for a rejection, seconds after which the same request
    would be admitted (0 when allowed).
    """

    allowed: bool
    delay: float
    remaining: int
    reset: float
    retry_after: float = 0.0


# A Decision without the Python-level ``__new__`` a NamedTuple call runs: the
# rules build one per limited request (all five fields, always in this order).
_make_decision: Final = tuple.__new__

# What ``decide`` returns: the decision, the value to store (or UNCHANGED /
# DELETE) and how long that entry must live at least (None: for ever).
# A plain tuple: this runs for every limited request.
Verdict = tuple[Decision, Any, Any]


class Rule:
    """What every rule has; ``kind`` names it in keys, metrics and scripts."""

    __slots__ = ()
    kind: str = ""

    @property
    def limit(self) -> int:
        """What ``RateLimit-Limit`` says for this rule."""
        raise NotImplementedError

    def decide(self, state: Any, now: Any, wall: Any) -> Verdict:
        raise NotImplementedError

    def undo(self, state: Any, now: Any, wall: Any) -> Any:
        raise NotImplementedError

    def params(self) -> tuple[str, ...]:
        """The rule's numbers as the Redis script reads them (``stores.py``)."""
        raise NotImplementedError


class RequestRate(Rule):
    """``rate`` requests per second with ``burst`` more queued (GCRA, see above)."""

    __slots__ = ("rate", "burst", "interval", "tolerance", "epsilon", "floats", "interval_f",
                 "tolerance_f", "epsilon_f")
    kind = "req"

    def __init__(self, rate: Any, burst: Any = 0, *, epsilon: Any = EPSILON) -> None:
        if not rate > 0 or burst < 0:
            raise ValueError(f"rate must be > 0 and burst >= 0 (got rate={rate!r}, burst={burst!r})")
        self.rate = rate
        self.burst = burst
        self.interval = 1 / rate              # T
        self.tolerance = burst * self.interval   # tau
        self.epsilon = epsilon
        # the same numbers typed as floats, for _decide_float (compiled: unboxed)
        self.floats = all(type(x) is float for x in (self.interval, self.tolerance, epsilon))
        self.interval_f = float(self.interval)
        self.tolerance_f = float(self.tolerance)
        self.epsilon_f = float(epsilon)

    @property
    def limit(self) -> int:
        return int(self.burst) + 1

    def decide(self, state: Any, now: Any, wall: Any) -> Verdict:
        if self.floats and type(now) is float and (state is None or type(state) is float):
            return self._decide_float(state, now)
        tat = state if state is not None and state > now else now
        ahead = tat - now                     # nginx's excess / rate, before this request
        if ahead > self.tolerance + self.epsilon:
            retry = ahead - self.tolerance
            return _make_decision(Decision, (False, 0.0, 0, ahead, retry)), UNCHANGED, None
        new = tat + self.interval
        left = (self.tolerance - ahead) / self.interval
        remaining = int(left + self.epsilon) if left > 0 else 0   # floor: left > 0
        reset = new - now
        return _make_decision(Decision, (True, ahead, remaining, reset, 0.0)), new, reset

    def _decide_float(self, state: float | None, now: float) -> Verdict:
        """``decide`` in floats, step for step (the stores' case; a test compares them)."""
        tat = state if state is not None and state > now else now
        ahead = tat - now
        if ahead > self.tolerance_f + self.epsilon_f:
            retry = ahead - self.tolerance_f
            return _make_decision(Decision, (False, 0.0, 0, ahead, retry)), UNCHANGED, None
        new = tat + self.interval_f
        left = (self.tolerance_f - ahead) / self.interval_f
        remaining = int(left + self.epsilon_f) if left > 0 else 0
        reset = new - now
        return _make_decision(Decision, (True, ahead, remaining, reset, 0.0)), new, reset

    def undo(self, state: Any, now: Any, wall: Any) -> Any:
        if state is None or state <= now:
            return UNCHANGED
        back = state - self.interval
        return back if back > now else DELETE

    def excess(self, decision: Decision) -> float:
        """nginx's "excess" of a request (requests beyond one), for log lines."""
        ahead = decision.retry_after + self.tolerance if not decision.allowed else decision.delay
        return float(ahead * self.rate)

    def params(self) -> tuple[str, ...]:
        return (repr(float(self.interval)), repr(float(self.tolerance)))


class CountWindow(Rule):
    """``count`` requests per clock-aligned ``window`` seconds."""

    __slots__ = ("count", "window")
    kind = "count"

    def __init__(self, count: int, window: Any) -> None:
        if count < 1 or not window > 0:
            raise ValueError(f"limit must be >= 1 and window > 0 (got {count!r}, {window!r})")
        self.count = count
        self.window = window

    @property
    def limit(self) -> int:
        return self.count

    def _current(self, state: Any, wall: Any) -> tuple[int, int]:
        index = int(math.floor(wall / self.window))
        if isinstance(state, str):
            stored, _, used = state.partition(":")
            if stored == str(index) and used.isdigit():
                return index, int(used)
        return index, 0

    def decide(self, state: Any, now: Any, wall: Any) -> Verdict:
        index, used = self._current(state, wall)
        reset = (index + 1) * self.window - wall
        if used + 1 > self.count:
            return Decision(False, 0.0, 0, float(reset), float(reset)), UNCHANGED, None
        used += 1
        return Decision(True, 0.0, self.count - used, float(reset)), f"{index}:{used}", reset

    def undo(self, state: Any, now: Any, wall: Any) -> Any:
        index, used = self._current(state, wall)
        if used <= 0:
            return UNCHANGED
        return f"{index}:{used - 1}" if used > 1 else DELETE

    def params(self) -> tuple[str, ...]:
        return (str(self.count), repr(float(self.window)))


class Concurrency(Rule):
    """``max`` requests in flight per key, ``burst`` more delayed by ``delay`` steps."""

    __slots__ = ("max", "burst", "delay")
    kind = "conn"

    def __init__(self, max: int, burst: int = 0, delay: float = 0.0) -> None:  # noqa: A002
        if max < 1 or burst < 0 or delay < 0:
            raise ValueError(f"max must be >= 1, burst and delay >= 0 (got {max!r}, {burst!r}, {delay!r})")
        self.max = max
        self.burst = burst
        self.delay = delay

    @property
    def limit(self) -> int:
        return self.max

    def decide(self, state: Any, now: Any, wall: Any) -> Verdict:
        held = state if isinstance(state, int) and state > 0 else 0
        n = held + 1
        if n > self.max + self.burst:
            # no clock says when a slot frees up; one second is the usual advice
            return Decision(False, 0.0, 0, 0.0, 1.0), UNCHANGED, None
        wait = self.delay * ((n - 1) // self.max) if n > self.max else 0.0
        return Decision(True, float(wait), self.max + self.burst - n, 0.0), n, None

    def undo(self, state: Any, now: Any, wall: Any) -> Any:
        held = state if isinstance(state, int) else 0
        if held <= 0:
            return UNCHANGED
        return held - 1 if held > 1 else DELETE

    def params(self) -> tuple[str, ...]:
        return (str(self.max), str(self.burst), repr(float(self.delay)))


def decide_all(rules: list[Rule], states: list[Any], now: Any, wall: Any,
               commit: bool) -> tuple[list[Decision], list[Any], list[Any]]:
    """All or nothing: every rule decides; states change only if all admit and ``commit``.

    Returns the decisions, the states to store and their TTLs (``UNCHANGED``
    everywhere when something was rejected or ``commit`` is false).
    """
    verdicts = [rule.decide(state, now, wall) for rule, state in zip(rules, states)]
    decisions = [v[0] for v in verdicts]
    if commit and all(d.allowed for d in decisions):
        return decisions, [v[1] for v in verdicts], [v[2] for v in verdicts]
    return decisions, [UNCHANGED] * len(rules), [None] * len(rules)


def merge(decisions: list[Decision]) -> Decision:
    """One decision for several limiters: allowed only if all are; the longest
    delay, the least remaining, the longest reset and wait."""
    if len(decisions) == 1:
        return decisions[0]
    return Decision(all(d.allowed for d in decisions),
                    max(d.delay for d in decisions),
                    min(d.remaining for d in decisions),
                    max(d.reset for d in decisions),
                    max(d.retry_after for d in decisions))
