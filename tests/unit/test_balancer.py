"""pyresty.upstream.balancer: the rules of its module docstring, on a fake clock.

Sequences are checked against what nginx does with the same weights (its
round robin, least_conn and consistent hash); properties with hypothesis.
"""
from __future__ import annotations

import logging
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyresty.config.model import Config, HealthCheck, Peer, Upstream
from pyresty.upstream.balancer import (POINTS_PER_WEIGHT, ConsistentHash, LeastConn, PeerState,
                                       RoundRobin, balancers, build, peer_stats)

pytestmark = pytest.mark.timeout(120)


def peers(*weights: int, backups: tuple[int, ...] = (), max_fails: int = 1,
          fail_timeout: float = 10.0) -> list[PeerState]:
    made = [PeerState("10.0.0.%d" % (i + 1), 80, weight=w, max_fails=max_fails,
                      fail_timeout=fail_timeout) for i, w in enumerate(weights)]
    made += [PeerState("10.0.1.%d" % (i + 1), 80, weight=w, backup=True, max_fails=max_fails,
                       fail_timeout=fail_timeout) for i, w in enumerate(backups)]
    return made


def names(balancer: RoundRobin, count: int, now: float = 0.0) -> str:
    letters = {p.addr: chr(ord("a") + i) for i, p in enumerate(balancer.peers)}
    out = []
    for _ in range(count):
        peer = balancer.pick(now, set())
        assert peer is not None
        out.append(letters[peer.addr])
    return " ".join(out)


# --- round robin -------------------------------------------------------------

def test_smooth_weighted_round_robin_is_nginx_sequence() -> None:
    # nginx's own example (ngx_http_upstream_round_robin.c, 5/1/1): a a b a c a a
    assert names(RoundRobin("up", peers(5, 1, 1)), 14) == "a a b a c a a a a b a c a a"


def test_equal_weights_take_turns() -> None:
    assert names(RoundRobin("up", peers(1, 1, 1)), 6) == "a b c a b c"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=8), st.integers(1, 3))
def test_weights_are_respected_over_every_cycle(weights: list[int], cycles: int) -> None:
    balancer = RoundRobin("up", peers(*weights))
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(balancer.pick(0.0, set()).addr for _ in range(total))  # type: ignore[union-attr]
        assert [counts[p.addr] for p in balancer.peers] == weights


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.data())
def test_no_peer_in_tried_is_returned(weights: list[int], data: st.DataObject) -> None:
    for kind in (RoundRobin, LeastConn, ConsistentHash):
        balancer = kind("up", peers(*weights))
        addrs = [p.addr for p in balancer.peers]
        tried = set(data.draw(st.lists(st.sampled_from(addrs), unique=True)))
        picked = balancer.pick(0.0, tried, key="k")
        if tried == set(addrs):
            assert picked is None
        else:
            assert picked is not None and picked.addr not in tried


def test_a_try_loop_visits_every_peer_once_then_none() -> None:
    balancer = RoundRobin("up", peers(3, 1, backups=(1,)))
    tried: set[str] = set()
    while (peer := balancer.pick(0.0, tried)) is not None:
        assert peer.addr not in tried
        tried.add(peer.addr)
    assert tried == {p.addr for p in balancer.peers}


# --- backups and passive health ------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=5), st.lists(st.booleans(), min_size=1, max_size=3))
def test_backups_only_when_no_primary_is_available(primary_up: list[bool],
                                                   backup_up: list[bool]) -> None:
    balancer = RoundRobin("up", peers(*[1] * len(primary_up), backups=tuple([1] * len(backup_up))))
    for peer, up in zip(balancer.primaries + balancer.backups, primary_up + backup_up):
        peer.healthy = up
    for _ in range(10):
        peer = balancer.pick(0.0, set())
        assert peer is not None
        if any(primary_up):
            assert not peer.backup and peer.healthy
        elif any(backup_up):
            assert peer.backup and peer.healthy
        else:      # everything down: any peer rather than none, primaries first
            assert not peer.backup


def test_max_fails_within_fail_timeout_disables_for_fail_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = peers(1, 1, max_fails=2, fail_timeout=10.0)
    balancer = RoundRobin("backend", [a, b])
    balancer.started(a)
    balancer.finished(a, 0.0, failed=True)
    assert a.available(1.0)                        # one failure of two
    balancer.started(a)
    with caplog.at_level(logging.WARNING, "pyresty.upstream"):
        balancer.finished(a, 5.0, failed=True)     # second within 10 s: down
    assert "upstream backend peer 10.0.0.1:80 temporarily disabled for 10s (2 failures)" in caplog.text
    assert a.active == 0 and a.disabled == 1
    assert not a.available(5.0) and not a.available(14.9)
    assert {balancer.pick(t, set()).addr for t in (6.0, 7.0, 8.0)} == {b.addr}   # type: ignore[union-attr]
    assert a.available(15.0)                       # fail_timeout after the last failure


def test_failures_further_apart_than_fail_timeout_do_not_add_up() -> None:
    (a,) = peers(1, max_fails=2, fail_timeout=10.0)
    balancer = RoundRobin("up", [a])
    balancer.finished(a, 0.0, failed=True)
    balancer.finished(a, 11.0, failed=True)
    assert a.available(11.0) and a.fails == 1


def test_after_fail_timeout_one_failure_disables_again_and_a_success_clears() -> None:
    (a,) = peers(1, max_fails=3, fail_timeout=10.0)
    balancer = RoundRobin("up", [a])
    for t in (0.0, 1.0, 2.0):
        balancer.finished(a, t, failed=True)
    assert not a.available(5.0) and a.available(12.0)
    balancer.finished(a, 12.0, failed=True)        # probation: down at once again
    assert not a.available(13.0) and a.available(22.0)
    balancer.finished(a, 22.0, failed=False)       # a success resets the count
    balancer.finished(a, 23.0, failed=True)
    assert a.available(23.0) and a.fails == 1


def test_a_success_sent_before_the_peer_went_out_does_not_bring_it_back() -> None:
    (a,) = peers(1, max_fails=1, fail_timeout=10.0)
    balancer = RoundRobin("up", [a])
    balancer.started(a)
    balancer.started(a)                            # two requests in flight
    balancer.finished(a, 1.0, failed=True)         # one fails: out until 11
    balancer.finished(a, 2.0, failed=False)        # the other succeeds afterwards
    assert a.down(2.0) and a.fails == 1 and a.active == 0
    balancer.finished(a, 11.0, failed=False)       # a success after the window clears it
    assert a.fails == 0 and a.available(11.0)


def test_max_fails_zero_never_disables() -> None:
    (a,) = peers(1, max_fails=0)
    balancer = RoundRobin("up", [a])
    for t in range(100):
        balancer.finished(a, float(t) / 100, failed=True)
    assert a.available(1.0) and a.fails == 0


def test_a_failure_lowers_the_effective_weight_and_picks_restore_it() -> None:
    a, b = peers(4, 4, max_fails=2)
    balancer = RoundRobin("up", [a, b])
    balancer.finished(a, 0.0, failed=True)
    assert a.effective_weight == 2                 # 4 - weight / max_fails
    assert balancer.pick(0.0, set()) is b          # without the failure a (first) would lead
    assert a.effective_weight == 3                 # +1 per pick that considers it
    balancer.pick(0.0, set())
    assert a.effective_weight == 4


def test_an_unhealthy_peer_is_skipped_and_all_down_still_picks(
        caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = peers(1, 1, 1)
    balancer = RoundRobin("up", [a, b, c])
    b.healthy = False
    assert {balancer.pick(0.0, set()).addr for _ in range(10)} == {a.addr, c.addr}  # type: ignore[union-attr]
    a.healthy = c.healthy = False
    with caplog.at_level(logging.WARNING, "pyresty.upstream"):
        picked = {balancer.pick(0.0, set()).addr for _ in range(9)}  # type: ignore[union-attr]
    assert picked == {a.addr, b.addr, c.addr}
    assert balancer.pick(0.0, {a.addr, b.addr}) is c
    # said once per spell, not once per request
    assert caplog.text.count("upstream up: no live peers; trying those marked down") == 1
    a.healthy = True
    balancer.pick(0.0, set())
    assert not balancer.all_down


# --- least_conn ----------------------------------------------------------------

def test_least_conn_takes_fewest_active_per_weight() -> None:
    a, b, c = peers(1, 2, 1)
    balancer = LeastConn("up", [a, b, c])
    a.active, b.active, c.active = 2, 3, 1
    assert balancer.pick(0.0, set()) is c          # 1/1 < 3/2 < 2/1
    c.active = 2
    assert balancer.pick(0.0, set()) is b          # 3/2 < 2/1


def test_least_conn_ties_go_round_robin_by_weight() -> None:
    balancer = LeastConn("up", peers(2, 1))
    assert names(balancer, 6) == "a b a a b a"     # all idle: smooth weighted 2:1


def test_least_conn_follows_started_and_finished() -> None:
    balancer = LeastConn("up", peers(1, 1))
    first = balancer.pick(0.0, set())
    assert first is not None
    balancer.started(first)
    second = balancer.pick(0.0, set())
    assert second is not None and second is not first
    balancer.started(second)
    balancer.finished(first, 0.0, failed=False)
    assert balancer.pick(0.0, set()) is first


# --- consistent hash -------------------------------------------------------------

KEYS = [f"/user/{i}" for i in range(4000)]


def hash_balancer(count: int, weights: list[int] | None = None) -> ConsistentHash:
    weights = weights or [1] * count
    return ConsistentHash("up", [PeerState(f"10.1.{i // 250}.{i % 250}", 8080, weight=w)
                                 for i, w in enumerate(weights)])


def test_the_same_key_goes_to_the_same_peer() -> None:
    balancer = hash_balancer(5)
    assert len({balancer.pick(0.0, set(), key="/a").addr for _ in range(20)}) == 1  # type: ignore[union-attr]
    other = hash_balancer(5)                       # another process, the same answer
    assert all(balancer.pick(0.0, set(), k).addr == other.pick(0.0, set(), k).addr  # type: ignore[union-attr]
               for k in KEYS[:200])


def test_hash_spreads_keys_by_weight() -> None:
    balancer = hash_balancer(4, [1, 1, 2, 4])
    counts = Counter(balancer.pick(0.0, set(), k).addr for k in KEYS)  # type: ignore[union-attr]
    shares = [counts[p.addr] / len(KEYS) for p in balancer.peers]
    for share, weight in zip(shares, [1, 1, 2, 4]):
        assert abs(share - weight / 8) < 0.06, shares


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.data())
def test_removing_one_of_n_peers_remaps_at_most_its_share(count: int, data: st.DataObject) -> None:
    before = hash_balancer(count)
    gone = data.draw(st.integers(0, count - 1))
    after = ConsistentHash("up", [PeerState(p.host, p.port) for i, p in enumerate(before.peers)
                                  if i != gone])
    moved = 0
    for key in KEYS:
        was = before.pick(0.0, set(), key)
        now = after.pick(0.0, set(), key)
        assert was is not None and now is not None
        if was.addr != now.addr:
            assert was.addr == before.peers[gone].addr     # only the removed peer's keys move
            moved += 1
    # ketama with 160 points per peer: a share strays from 1/N by ~1/sqrt(160) of it
    assert moved / len(KEYS) <= 1 / count * 1.35 + 0.01


def test_a_down_peers_keys_go_to_the_next_point_and_come_back() -> None:
    balancer = hash_balancer(5)
    home = {k: balancer.pick(0.0, set(), k).addr for k in KEYS}  # type: ignore[union-attr]
    down = balancer.peers[2]
    down.healthy = False
    moved = {k: balancer.pick(0.0, set(), k).addr for k in KEYS}  # type: ignore[union-attr]
    assert all(moved[k] == home[k] for k in KEYS if home[k] != down.addr)
    assert all(moved[k] != down.addr for k in KEYS)
    # the next point: the same peer a ring without it would give
    without = ConsistentHash("up", [PeerState(p.host, p.port) for p in balancer.peers if p is not down])
    assert all(moved[k] == without.pick(0.0, set(), k).addr for k in KEYS)  # type: ignore[union-attr]
    down.healthy = True
    assert {k: balancer.pick(0.0, set(), k).addr for k in KEYS} == home  # type: ignore[union-attr]


def test_hash_retry_goes_to_the_next_point_not_a_random_peer() -> None:
    balancer = hash_balancer(6)
    for key in KEYS[:100]:
        first = balancer.pick(0.0, set(), key)
        assert first is not None
        second = balancer.pick(0.0, {first.addr}, key)
        first.healthy = False
        assert second is balancer.pick(0.0, set(), key)
        first.healthy = True


def test_hash_without_a_key_is_round_robin() -> None:
    balancer = hash_balancer(3)
    assert len({balancer.pick(0.0, set()).addr for _ in range(3)}) == 3  # type: ignore[union-attr]


def test_ring_has_points_per_weight() -> None:
    balancer = hash_balancer(3, [1, 2, 3])
    owners = Counter(p.addr for p in balancer.primary_ring.owners)
    assert [owners[p.addr] for p in balancer.peers] == [POINTS_PER_WEIGHT * w for w in (1, 2, 3)]


# --- build and the registry ---------------------------------------------------------

def upstream(**kw: object) -> Upstream:
    servers = (Peer("127.0.0.1", 9001, weight=3), Peer("::1", 9002, max_fails=5, fail_timeout=2.0),
               Peer("127.0.0.1", 9003, backup=True))
    return Upstream(name="backend", servers=servers, **kw)  # type: ignore[arg-type]


def test_build_fills_per_peer_values_from_the_upstream() -> None:
    balancer = build(upstream(max_fails=2, fail_timeout=30.0))
    assert isinstance(balancer, RoundRobin) and balancer.name == "backend"
    assert [p.addr for p in balancer.peers] == ["127.0.0.1:9001", "[::1]:9002", "127.0.0.1:9003"]
    assert [(p.weight, p.backup, p.max_fails, p.fail_timeout) for p in balancer.peers] == [
        (3, False, 2, 30.0), (1, False, 5, 2.0), (1, True, 2, 30.0)]
    assert all(p.healthy and p.active == 0 for p in balancer.peers)


@pytest.mark.parametrize("name, kind", [("round_robin", RoundRobin), ("least_conn", LeastConn),
                                        ("hash", ConsistentHash), ("app.lb:pick", RoundRobin)])
def test_build_chooses_the_algorithm(name: str, kind: type) -> None:
    assert type(build(upstream(balancer=name))) is kind


def test_balancers_are_shared_per_config() -> None:
    config = Config(path="t.toml", prefix="/tmp", upstreams=(
        upstream(health_check=HealthCheck()), Upstream(name="b", servers=(Peer("h", 1),))))
    first = balancers(config)
    assert set(first) == {"backend", "b"}
    assert balancers(config) is first and balancers(config)["backend"] is first["backend"]
    other = Config(path="t.toml", prefix="/tmp", upstreams=config.upstreams)
    assert balancers(other)["backend"] is not first["backend"]
    assert balancers(config) is first            # two servers in one process keep their own


def test_peer_stats_report_what_status_shows() -> None:
    config = Config(path="t.toml", prefix="/tmp", upstreams=(
        Upstream(name="stats", servers=(Peer("10.9.0.1", 80), Peer("10.9.0.2", 80))),))
    balancer = balancers(config)["stats"]
    a, b = balancer.peers
    b.healthy, b.check_fails = False, 4
    balancer.started(a)
    balancer.started(b)
    balancer.finished(b, 100.0, failed=True)
    assert peer_stats(105.0)["stats"] == {
        "10.9.0.1:80": {"healthy": 1, "check_fails": 0, "down": 0, "disabled": 0, "active": 1},
        "10.9.0.2:80": {"healthy": 0, "check_fails": 4, "down": 1, "disabled": 1, "active": 0},
    }
    assert peer_stats(110.0)["stats"]["10.9.0.2:80"]["down"] == 0
