"""What choosing a peer costs: one ``pick`` + ``started`` + ``finished`` per try.

    .venv/bin/python bench/balancer.py [--n 200000]

Figures are microseconds of CPU per try (one process, no I/O), per algorithm
and number of peers, next to nginx's whole proxied request (~9.6 µs of CPU,
measured for issue 12) for scale. Also the cost of building a consistent-hash
ring (done once per upstream per worker at start).
"""
from __future__ import annotations

import argparse
import time

from pyresty.upstream.balancer import Balancer, ConsistentHash, LeastConn, PeerState, RoundRobin

KINDS: dict[str, type[Balancer]] = {"round_robin": RoundRobin, "least_conn": LeastConn,
                                    "hash": ConsistentHash}


def peers(count: int) -> list[PeerState]:
    return [PeerState(f"10.0.{i // 250}.{i % 250}", 8080, weight=1 + i % 3) for i in range(count)]


def per_try(kind: type[Balancer], count: int, n: int) -> float:
    balancer = kind("bench", peers(count))
    keys = [f"/user/{i}" for i in range(1024)]
    tried: set[str] = set()
    start = time.process_time()
    for i in range(n):
        peer = balancer.pick(float(i), tried, keys[i & 1023])
        assert peer is not None
        balancer.started(peer)
        balancer.finished(peer, float(i), False)
    return (time.process_time() - start) / n * 1e6


def ring_build(count: int) -> float:
    made = peers(count)
    start = time.process_time()
    ConsistentHash("bench", made)
    return (time.process_time() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    counts = (3, 10, 50)
    print("µs of CPU per try (pick + started + finished)")
    print(f"{'peers':>6} " + " ".join(f"{name:>12}" for name in KINDS))
    for count in counts:
        cells = [per_try(kind, count, args.n) for kind in KINDS.values()]
        print(f"{count:>6} " + " ".join(f"{c:>12.2f}" for c in cells))
    print("ms to build a consistent-hash ring: "
          + ", ".join(f"{count} peers {ring_build(count):.1f}" for count in counts))


if __name__ == "__main__":
    main()
