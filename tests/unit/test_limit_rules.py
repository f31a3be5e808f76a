"""The limiting rules, pure: GCRA against a reference leaky bucket, windows, concurrency.

The request-rate rule is compared with the model nginx's limit_req and
resty.limit.req implement, ``excess = max(excess - rate * elapsed + 1, 0)``,
over random arrival sequences, in exact arithmetic (``Fraction``), so every
decision and every delay must be equal, not close.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyresty.runtime import limit
from pyresty.runtime.limit.rules import (
    DELETE,
    UNCHANGED,
    Concurrency,
    CountWindow,
    Decision,
    RequestRate,
    decide_all,
    merge,
)

pytestmark = pytest.mark.timeout(120)


class LeakyBucket:
    """The reference: nginx's ngx_http_limit_req_lookup / resty.limit.req, exact.

    ``excess`` is requests in the bucket beyond the one being served; a
    rejected request changes nothing; ``uncommit`` takes one request out again.
    """

    def __init__(self, rate: Fraction, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.excess: Fraction | None = None
        self.last = Fraction(0)

    def incoming(self, now: Fraction, commit: bool) -> tuple[bool, Fraction]:
        if self.excess is None:
            excess = Fraction(0)
        else:
            excess = max(self.excess - self.rate * (now - self.last) + 1, Fraction(0))
        if excess > self.burst:
            return False, Fraction(0)
        if commit:
            self.excess, self.last = excess, now
        return True, excess / self.rate

    def uncommit(self) -> None:
        if self.excess is not None:
            self.excess -= 1


class Stored:
    """One dict entry the way a store keeps it: a value that expires after its ttl."""

    def __init__(self) -> None:
        self.value = None
        self.expires: Fraction | None = None

    def read(self, now: Fraction):
        if self.expires is not None and now >= self.expires:
            self.value = self.expires = None
        return self.value

    def write(self, new, ttl, now: Fraction) -> None:
        if new is UNCHANGED:
            return
        if new is DELETE:
            self.value = self.expires = None
            return
        self.value = new
        self.expires = None if ttl is None else now + ttl


ops = st.lists(st.tuples(st.integers(0, 400),                     # ms since the last op
                         st.sampled_from(["commit", "commit", "commit", "peek", "undo"])),
               min_size=1, max_size=80)


@settings(max_examples=400, deadline=None)
@given(rate_num=st.integers(1, 1000), rate_den=st.sampled_from([1, 60]),
       burst=st.integers(0, 12), steps=ops)
def test_gcra_decides_as_the_leaky_bucket(rate_num: int, rate_den: int, burst: int,
                                         steps: list[tuple[int, str]]) -> None:
    rate = Fraction(rate_num, rate_den)
    rule = RequestRate(rate, burst, epsilon=0)
    bucket = LeakyBucket(rate, burst)
    entry = Stored()
    now = Fraction(1000)
    for gap_ms, op in steps:
        now += Fraction(gap_ms, 1000)
        state = entry.read(now)
        if op == "undo":
            bucket.uncommit()
            entry.write(rule.undo(state, now, now), _ttl(rule.undo(state, now, now), now), now)
            continue
        decision, new, ttl = rule.decide(state, now, now)
        allowed, delay = bucket.incoming(now, op == "commit")
        assert decision.allowed == allowed
        if allowed:
            assert decision.delay == delay
            if op == "commit":
                entry.write(new, ttl, now)
        else:
            assert new is UNCHANGED


def _ttl(new, now):
    return new - now if isinstance(new, Fraction) else None


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1, 200), burst=st.integers(0, 15), gaps=st.lists(st.integers(0, 50), max_size=30))
def test_remaining_is_what_would_pass_now(rate: int, burst: int, gaps: list[int]) -> None:
    rule = RequestRate(Fraction(rate), burst, epsilon=0)
    state, now = None, Fraction(0)
    for gap in gaps:
        now += Fraction(gap, 1000)
        decision, new, _ = rule.decide(state, now, now)
        if not decision.allowed:
            assert decision.remaining == 0
            continue
        state = new
        # exactly `remaining` more requests pass at this same instant
        assert passed_at(rule, state, now) == decision.remaining
        # reset is when the bucket is empty again: then burst + 1 pass at once, no more
        assert passed_at(rule, state, now + decision.reset) == burst + 1


def passed_at(rule: RequestRate, state, now) -> int:
    passed = 0
    while True:
        decision, state, _ = rule.decide(state, now, now)
        if not decision.allowed:
            return passed
        passed += 1


def test_request_rate_with_floats_admits_exactly_rate_times_time_plus_burst() -> None:
    rule = RequestRate(100.0, 5)
    state, admitted = None, 0
    for i in range(50_000):                 # 5 s of arrivals every 0.1 ms
        now = 1000.0 + i * 1e-4
        decision, new, _ = rule.decide(state, now, now)
        if decision.allowed:
            admitted += 1
            state = new
    assert 500 <= admitted <= 506


class Float(float):
    """A float the rule does not recognise as one: it takes the generic path."""


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.01, 1e7), burst=st.integers(0, 2000),
       steps=st.lists(st.tuples(st.floats(0, 2.0), st.booleans()), min_size=1, max_size=60))
def test_float_path_decides_as_the_generic_one(rate: float, burst: int,
                                               steps: list[tuple[float, bool]]) -> None:
    """The stores pass floats, and RequestRate decides those in float arithmetic of
    its own (compiled, unboxed): the same operations as the generic code the model
    test checks, so the same decisions to the last bit."""
    rule = RequestRate(rate, burst)
    state: float | None = None
    now = 1000.0
    for gap, fresh in steps:
        now += gap / rate
        if fresh:
            state = None
        fast = rule.decide(state, now, now)
        generic = rule.decide(state, Float(now), now)
        assert fast == generic and [type(x) for x in fast[0]] == [type(x) for x in generic[0]]
        if fast[0].allowed:
            state = fast[1]


def test_request_rate_rejection_says_when_to_retry() -> None:
    rule = RequestRate(10.0, 2)
    state = None
    for _ in range(3):
        state = rule.decide(state, 0.0, 0.0)[1]
    refused = rule.decide(state, 0.0, 0.0)[0]
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.reset == pytest.approx(0.3)
    assert rule.excess(refused) == pytest.approx(3.0)      # nginx's "excess: 3.000"
    assert rule.decide(state, 0.1, 0.1)[0].allowed


def test_request_rate_undo_and_expiry() -> None:
    rule = RequestRate(10.0, 0)
    _, state, ttl = rule.decide(None, 5.0, 5.0)
    assert state == pytest.approx(5.1) and ttl == pytest.approx(0.1)
    assert rule.undo(state, 5.0, 5.0) is DELETE
    assert rule.undo(state, 6.0, 6.0) is UNCHANGED
    assert rule.undo(None, 5.0, 5.0) is UNCHANGED
    assert rule.limit == 1


# -- count windows ----------------------------------------------------------------

def test_count_windows_are_aligned_to_the_clock() -> None:
    rule = CountWindow(3, 3600.0)
    wall = 7200.0 + 3000.0                   # 50 minutes into the hour
    state = None
    for left in (2, 1, 0):
        decision, state, ttl = rule.decide(state, 0.0, wall)
        assert decision.allowed and decision.remaining == left
        assert decision.reset == pytest.approx(600.0)
        assert ttl == pytest.approx(600.0)
    refused = rule.decide(state, 0.0, wall + 10)[0]
    assert not refused.allowed and refused.retry_after == pytest.approx(590.0)
    # on the hour, a new window: the old state counts for nothing
    fresh, new, _ = rule.decide(state, 0.0, 10800.0)
    assert fresh.allowed and fresh.remaining == 2
    assert fresh.reset == pytest.approx(3600.0)
    assert new == "3:1"


def test_count_undo_stays_in_its_window() -> None:
    rule = CountWindow(5, 60.0)
    assert rule.undo("1:2", 0.0, 61.0) == "1:1"
    assert rule.undo("1:1", 0.0, 61.0) is DELETE
    assert rule.undo("0:4", 0.0, 61.0) is UNCHANGED     # an old window
    assert rule.undo(None, 0.0, 61.0) is UNCHANGED
    assert rule.decide("garbage", 0.0, 61.0)[0].remaining == 4


# -- concurrency --------------------------------------------------------------------

def test_concurrency_admits_max_then_burst_with_delay() -> None:
    rule = Concurrency(2, burst=2, delay=0.5)
    decisions, state = [], None
    for _ in range(5):
        decision, new, _ = rule.decide(state, 0.0, 0.0)
        decisions.append(decision)
        if decision.allowed:
            state = new
    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.delay for d in decisions[:4]] == [0.0, 0.0, 0.5, 0.5]    # resty: floor((n-1)/max)
    assert [d.remaining for d in decisions[:4]] == [3, 2, 1, 0]
    assert decisions[4].retry_after == 1.0
    assert state == 4
    assert rule.undo(4, 0.0, 0.0) == 3
    assert rule.undo(1, 0.0, 0.0) is DELETE
    assert rule.undo(None, 0.0, 0.0) is UNCHANGED


# -- several rules ------------------------------------------------------------------

def test_decide_all_commits_nothing_unless_all_admit() -> None:
    rules = [RequestRate(10.0, 5), CountWindow(1, 60.0)]
    decisions, news, _ = decide_all(rules, [None, "0:1"], 1.0, 1.0, True)
    assert [d.allowed for d in decisions] == [True, False]
    assert news == [UNCHANGED, UNCHANGED]
    decisions, news, ttls = decide_all(rules, [None, None], 1.0, 1.0, True)
    assert all(d.allowed for d in decisions)
    assert news[1] == "0:1" and ttls[1] == pytest.approx(59.0)
    _, news, _ = decide_all(rules, [None, None], 1.0, 1.0, False)
    assert news == [UNCHANGED, UNCHANGED]


def test_merge_takes_the_tightest() -> None:
    a = Decision(True, 0.2, 5, 1.0)
    b = Decision(False, 0.0, 0, 30.0, 30.0)
    assert merge([a]) is a
    assert merge([a, b]) == Decision(False, 0.2, 0, 30.0, 30.0)


# -- the API's arguments --------------------------------------------------------------

@pytest.mark.parametrize("make, error", [
    (lambda: limit.req("limits", rate=0), ValueError),
    (lambda: limit.req("limits", rate=math.inf), ValueError),
    (lambda: limit.req("limits", rate=10, burst=-1), ValueError),
    (lambda: limit.req("limits", rate="10r/s"), TypeError),
    (lambda: limit.count("limits", limit=0, window=60), ValueError),
    (lambda: limit.count("limits", limit=1.5, window=60), TypeError),
    (lambda: limit.count("limits", limit=10, window=0), ValueError),
    (lambda: limit.conn("limits", max=0), ValueError),
    (lambda: limit.conn("limits", max=1, delay=-1), ValueError),
    (lambda: limit.combine(), ValueError),
    (lambda: limit.combine("limits"), TypeError),
    (lambda: limit.req(None, rate=1), TypeError),
])
def test_bad_arguments_are_refused(make, error) -> None:
    with pytest.raises(error):
        make()


def test_state_keys_are_namespaced() -> None:
    assert limit.req("d", 1).state_key("1.2.3.4") == b"limit_req:1.2.3.4"
    assert limit.count("d", 1, 1, name="hourly").state_key(b"k") == b"limit_count:hourly:k"
    with pytest.raises(ValueError):
        limit.conn("d", 1).state_key("")
    with pytest.raises(ValueError):
        limit.conn("d", 1).state_key("x" * 70000)
    with pytest.raises(TypeError):
        limit.conn("d", 1).state_key(5)


def test_set_rate_and_burst() -> None:
    lim = limit.req("d", 10, 2)
    lim.set_rate(20)
    lim.set_burst(4)
    assert (lim.rate, lim.burst) == (20.0, 4.0)
    assert lim.rule.limit == 5
