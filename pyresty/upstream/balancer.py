"""Upstream balancers: which peer gets the next try. Pure: peers and the clock in, a peer out.

No I/O, no asyncio: the caller passes ``now`` (``loop.time()``), and the only
side effects are the peers' counters and a log line when passive health takes
a peer out. One ``Balancer`` per upstream per process; ``balancers(config)``
keeps them, so the proxy and the health refresh (``health.py``) share the same
``PeerState`` objects.

Rules (each checked against nginx's ``ngx_http_upstream_round_robin.c``,
``ngx_http_upstream_least_conn_module.c`` and ``ngx_http_upstream_hash_module.c``)
------------------------------------------------------------------------------
1. Availability. A peer is *available* when it is ``healthy`` (active health
   checks; always True without them) and passive health has not disabled it:
   ``max_fails`` failures, each within ``fail_timeout`` of the one before,
   disable it for ``fail_timeout`` after the last one (``max_fails = 0``: never).
   A success resets the count, except while the peer is out (that request was
   sent before it went out: nginx ignores it the same way). Once
   ``fail_timeout`` has passed the peer is available again on probation: its
   count stays at ``max_fails``, so one more failure disables it for another
   ``fail_timeout`` and a success clears it (nginx keeps ``fails`` until a
   success after the check, the same way).
2. Tiers. ``pick`` never returns a peer whose address is in ``tried``. It
   picks among the available primaries; backups only when no primary is
   available; when no peer at all is available, among every untried primary
   (then backup) regardless of health: trying a peer believed down beats
   failing every request while all look down (the issue's rule; nginx answers
   "no live upstreams" once and then clears the failure counts); a warning
   says so once per spell. None when every peer was tried.
3. ``round_robin`` is nginx's smooth weighted round robin: each pick adds
   every candidate's ``effective_weight`` to its ``current_weight`` and
   takes the largest, which then loses the sum. Weights 5, 1, 1 give
   ``a a b a c a a``. A failure lowers the peer's ``effective_weight`` by
   ``weight / max_fails``; each pick that considers it raises it by one, up
   to ``weight`` (nginx's slow recovery).
4. ``least_conn`` takes the candidate with the fewest requests in flight per
   weight (``active / weight``); ties go to smooth weighted round robin among
   the tied, as nginx's.
5. ``hash`` is consistent hashing (nginx's ``hash $key consistent``, ketama):
   each peer has ``POINTS_PER_WEIGHT * weight`` points on a 32-bit ring,
   placed by hashing its address, so every process and every config that
   lists the peer agrees on them. A key goes to the first point at or after
   its own hash; if that peer is not a candidate, to the next point's peer,
   and so on. Removing one of N peers moves only the keys that were on it
   (about 1/N); a down peer's keys go to the next point. No key (``None``)
   falls back to round robin.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import math
import zlib
from collections.abc import Iterable

from pyresty.config.model import Config, Upstream

__all__ = ["Balancer", "ConsistentHash", "LeastConn", "PeerState", "RoundRobin",
           "balancers", "build", "peer_stats"]

log = logging.getLogger("pyresty.upstream")

# nginx's ketama places 160 points per unit of weight (ngx_http_upstream_hash_module.c);
# with fewer, shares drift: a peer's share varies by about 1/sqrt(points).
POINTS_PER_WEIGHT = 160
_INF = math.inf


class PeerState:
    """One configured server of an upstream, in this process."""

    __slots__ = ("host", "port", "addr", "weight", "backup", "max_fails", "fail_timeout",
                 "active", "healthy", "fails", "failed_at", "out_until", "current_weight",
                 "effective_weight", "disabled", "check_fails")

    def __init__(self, host: str, port: int, *, weight: int = 1, backup: bool = False,
                 max_fails: int = 1, fail_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.weight = weight
        self.backup = backup
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.active = 0                 # requests in flight to it
        self.healthy = True             # active health checks (health.py) set it
        self.fails = 0                  # passive: failures counted (rule 1)
        self.failed_at = -_INF          # passive: time of the last failure
        self.out_until = -_INF          # passive: disabled before this time
        self.current_weight = 0         # smooth weighted round robin (rule 3)
        self.effective_weight = weight
        self.disabled = 0               # times passive health took it out (a metric)
        self.check_fails = 0            # consecutive failed active checks (health.py)

    def down(self, now: float) -> bool:
        """Whether passive health keeps it out at ``now`` (rule 1)."""
        return now < self.out_until

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.out_until

    def __repr__(self) -> str:
        return (f"<PeerState {self.addr} weight={self.weight}{' backup' if self.backup else ''}"
                f" active={self.active} healthy={self.healthy} fails={self.fails}>")


class Balancer:
    """Peers of one upstream and the rules of ``pick`` (module docstring)."""

    algorithm = "round_robin"

    def __init__(self, name: str, peers: Iterable[PeerState]) -> None:
        self.name = name
        peers = list(peers)
        self.primaries = [p for p in peers if not p.backup]
        self.backups = [p for p in peers if p.backup]
        self.peers: list[PeerState] = self.primaries + self.backups
        self.all_down = False           # the last pick found no peer available (logged once)

    def pick(self, now: float, tried: set[str] | frozenset[str],
             key: str | None = None) -> PeerState | None:
        """A peer not in ``tried`` (addresses), by rule 2 and the algorithm; None when all were tried."""
        # available(), inlined: this runs once per try of every proxied request
        candidates = [p for p in self.primaries
                      if p.healthy and now >= p.out_until and p.addr not in tried]
        if candidates:
            self.all_down = False
            return self.choose(self.primaries, candidates, key)
        if self.backups:
            candidates = [p for p in self.backups
                          if p.healthy and now >= p.out_until and p.addr not in tried]
            if candidates:
                self.all_down = False
                return self.choose(self.backups, candidates, key)
        for tier in (self.primaries, self.backups):
            candidates = [p for p in tier if p.addr not in tried]
            if candidates:
                if not self.all_down and not tried:
                    self.all_down = True
                    log.warning("upstream %s: no live peers; trying those marked down", self.name)
                return self.choose(tier, candidates, key)
        return None

    def choose(self, tier: list[PeerState], candidates: list[PeerState],
               key: str | None) -> PeerState:
        """The algorithm: one of ``candidates`` (non-empty, all from ``tier``)."""
        return smooth_weighted(candidates)

    def started(self, peer: PeerState) -> None:
        """A request goes to ``peer``."""
        peer.active += 1

    def finished(self, peer: PeerState, now: float, failed: bool) -> None:
        """The request to ``peer`` ended; ``failed`` counts for passive health (rule 1)."""
        if peer.active > 0:
            peer.active -= 1
        if not failed:
            if peer.fails and now >= peer.out_until:
                peer.fails = 0           # (a success while out was sent before it went out)
            return
        if peer.max_fails == 0:
            return
        if peer.fails < peer.max_fails and now - peer.failed_at >= peer.fail_timeout:
            peer.fails = 0               # the earlier failures are out of the window
        peer.fails += 1
        peer.failed_at = now
        peer.effective_weight = max(0, peer.effective_weight - peer.weight // peer.max_fails)
        if peer.fails >= peer.max_fails:
            peer.out_until = now + peer.fail_timeout
            peer.disabled += 1
            log.warning("upstream %s peer %s temporarily disabled for %gs (%d failure%s)",
                        self.name, peer.addr, peer.fail_timeout, peer.fails,
                        "" if peer.fails == 1 else "s")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {[p.addr for p in self.peers]}>"


class RoundRobin(Balancer):
    """Rule 3."""


class LeastConn(Balancer):
    """Rule 4."""

    algorithm = "least_conn"

    def choose(self, tier: list[PeerState], candidates: list[PeerState],
               key: str | None) -> PeerState:
        best = candidates[0]
        tied = [best]
        for peer in candidates[1:]:
            mine, theirs = peer.active * best.weight, best.active * peer.weight
            if mine < theirs:
                best = peer
                tied = [peer]
            elif mine == theirs:
                tied.append(peer)
        return best if len(tied) == 1 else smooth_weighted(tied)


class ConsistentHash(Balancer):
    """Rule 5."""

    algorithm = "hash"

    def __init__(self, name: str, peers: Iterable[PeerState]) -> None:
        super().__init__(name, peers)
        self.primary_ring = Ring(self.primaries)
        self.backup_ring = Ring(self.backups)

    def choose(self, tier: list[PeerState], candidates: list[PeerState],
               key: str | None) -> PeerState:
        if key is None:
            return smooth_weighted(candidates)
        ring = self.primary_ring if tier is self.primaries else self.backup_ring
        return ring.lookup(key_hash(key), candidates)


class Ring:
    """The points of one tier's peers, sorted by hash (rule 5)."""

    __slots__ = ("hashes", "owners")

    def __init__(self, peers: list[PeerState]) -> None:
        points = sorted((point_hash(f"{peer.addr}#{i}".encode()), n)
                        for n, peer in enumerate(peers)
                        for i in range(POINTS_PER_WEIGHT * peer.weight))
        self.hashes = [h for h, _ in points]
        self.owners = [peers[n] for _, n in points]

    def lookup(self, point: int, candidates: list[PeerState]) -> PeerState:
        """The first candidate at or after ``point``, walking the ring."""
        owners = self.owners
        count = len(owners)
        start = bisect.bisect_left(self.hashes, point)
        for step in range(count):
            owner = owners[(start + step) % count]
            if owner in candidates:      # identity; usually the first owner is one
                return owner
        raise ValueError("no candidate is on the ring")   # candidates come from the ring's tier


def point_hash(data: bytes) -> int:
    """A peer's point on the 32-bit ring: blake2b, evenly spread, built once per worker."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big")


def key_hash(key: str) -> int:
    """A key's point: CRC-32, as nginx's ``hash`` (fast, once per try, and the same in
    every process, unlike the salted ``hash()``). Against blake2b-placed points it
    spread sequential keys (``/user/N``, addresses, hex ids) as evenly as blake2b
    keys did (each peer within ketama's own +-20% at 160 points)."""
    return zlib.crc32(key.encode())


def smooth_weighted(candidates: list[PeerState]) -> PeerState:
    """nginx's smooth weighted round robin over ``candidates`` (rule 3)."""
    best = candidates[0]
    total = 0
    for peer in candidates:
        peer.current_weight += peer.effective_weight
        total += peer.effective_weight
        if peer.effective_weight < peer.weight:
            peer.effective_weight += 1
        if peer.current_weight > best.current_weight:
            best = peer
    best.current_weight -= total
    return best


_ALGORITHMS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin, "least_conn": LeastConn, "hash": ConsistentHash,
}


def build(upstream: Upstream) -> Balancer:
    """A fresh balancer for ``upstream``'s servers, with per-peer values filled in.

    A ``"module:function"`` balancer gets a round-robin ``Balancer`` too: its
    peers carry passive health and active-check state for the function's
    ``b`` object and for ``/metrics``.
    """
    kind = _ALGORITHMS.get(upstream.balancer, RoundRobin)
    peers = [PeerState(peer.host, peer.port, weight=peer.weight, backup=peer.backup,
                       max_fails=upstream.max_fails if peer.max_fails is None else peer.max_fails,
                       fail_timeout=upstream.fail_timeout if peer.fail_timeout is None
                       else peer.fail_timeout)
             for peer in upstream.servers]
    return kind(upstream.name, peers)


# id(config) -> (config, its balancers); a worker serves one config (a reload is a
# new generation of processes); in-process tests may hold several servers at once
_registry: dict[int, tuple[Config, dict[str, Balancer]]] = {}


def balancers(config: Config) -> dict[str, Balancer]:
    """This process's balancers for ``config``, by upstream name, built on first use.

    Every caller with the same config object gets the same ``Balancer`` (and
    ``PeerState``) objects: the proxy picks with them and the health refresh
    sets their ``healthy`` flags.
    """
    entry = _registry.get(id(config))
    if entry is not None and entry[0] is config:
        return entry[1]
    found = {up.name: build(up) for up in config.upstreams}
    _registry[id(config)] = (config, found)
    return found


def peer_stats(now: float) -> dict[str, dict[str, dict[str, int]]]:
    """``{upstream: {addr: figures}}`` of this process's balancers, for status and /metrics:
    ``healthy`` (active checks), ``check_fails`` (consecutive failed checks),
    ``down`` (passive health keeps it out now), ``disabled`` (times it did),
    ``active`` (requests in flight)."""
    return {name: {p.addr: {"healthy": int(p.healthy), "check_fails": p.check_fails,
                            "down": int(p.down(now)), "disabled": p.disabled, "active": p.active}
                   for p in balancer.peers}
            for _, found in _registry.values() for name, balancer in found.items()}
