"""What a shared-dict operation costs, through the public async API.

    .venv/bin/python bench/shared_dict.py [--seconds 1.0] [--keys 1000]

One process, one event loop (uvloop): ``get`` (hit, cycling over ``--keys``
keys of 40 bytes), ``set`` (same keys) and ``incr`` (one key) for

- ``plain``    a Python dict behind the same ``async def`` surface: the floor,
               i.e. what the coroutine call alone costs;
- ``embedded`` the LMDB store on /dev/shm (``EmbeddedDict``);
- ``raw lmdb`` py-lmdb on that same store with no coroutine and no shared-dict
               logic (read txn + get; write txn + get + put): the ceiling, so a
               run on a busy machine still shows the ratio;
- ``redis``    a redis-server started here on a unix socket, through
               ``redis.asyncio`` with hiredis (skipped, with the reason, when
               redis-server is missing).

Then what one ``limit_req`` decision costs on the embedded store (the rule and
``EmbeddedDict.update_one`` as a limited location runs them, at a rate no request
reaches, so every decision admits and writes). Then 2 processes incrementing one key (``--incr-per-process`` each) per
backend: total ops/s and whether the final count is exact. Each figure is the
best of ``--rounds`` timed runs of ``--seconds``. Issue 5's targets: embedded
get >= 500k ops/s, incr >= 150k ops/s, and never a lost increment.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lmdb
import redis
import uvloop

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyresty.runtime.limit.rules import RequestRate  # noqa: E402
from pyresty.runtime.shared import EmbeddedDict, RedisDict  # noqa: E402

FORK = multiprocessing.get_context("fork")
VALUE = "v" * 40


class PlainDict:
    """A process-local dict with the shared-dict surface: the baseline."""

    def __init__(self) -> None:
        self._d: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self._d.get(key)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._d[key] = value

    async def incr(self, key: str, delta: int = 1, init: int | None = None,
                   init_ttl: float | None = None) -> int | None:
        n = self._d.get(key, init)
        if n is None:
            return None
        self._d[key] = n = n + delta
        return n  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        pass


# -- timing -----------------------------------------------------------------------

async def rate(op: Callable[[int], Awaitable[Any]], seconds: float, rounds: int) -> float:
    """Best ops/s over ``rounds`` runs of ``op(i)`` lasting ``seconds`` each."""
    best = 0.0
    for _ in range(rounds):
        done, i = 0, 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for i in range(done, done + 500):
                await op(i)
            done += 500
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


async def one_process(d: Any, keys: int, seconds: float, rounds: int) -> dict[str, float]:
    names = [f"key-{i}" for i in range(keys)]
    for name in names:
        await d.set(name, VALUE)
    mask = keys - 1 if keys & (keys - 1) == 0 else None

    def key(i: int) -> str:
        return names[i & mask] if mask is not None else names[i % keys]

    return {
        "get": await rate(lambda i: d.get(key(i)), seconds, rounds),
        "set": await rate(lambda i: d.set(key(i), VALUE), seconds, rounds),
        "incr": await rate(lambda i: d.incr("counter", 1, 0), seconds, rounds),
    }


def raw_lmdb(d: EmbeddedDict, keys: int, seconds: float, rounds: int) -> dict[str, float]:
    """py-lmdb alone on ``d``'s environment, for the same three operations."""
    env, db = d._env, d._data
    names = [f"key-{i}".encode() for i in range(keys)]
    counter = b"raw-counter"
    with env.begin(db, None, True) as txn:
        txn.put(counter, b"0" * 8)

    def get(i: int) -> None:
        txn = env.begin(db)
        txn.get(names[i % keys])
        txn.abort()

    def put(i: int) -> None:
        txn = env.begin(db, None, True)
        txn.get(names[i % keys])
        txn.put(names[i % keys], b"v" * 58)
        txn.commit()

    def incr(i: int) -> None:
        txn = env.begin(db, None, True)
        txn.put(counter, txn.get(counter) or b"")
        txn.commit()
    return {op: sync_rate(fn, seconds, rounds) for op, fn in
            (("get", get), ("set", put), ("incr", incr))}


def sync_rate(op: Callable[[int], None], seconds: float, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        done = 0
        start = time.perf_counter()
        while True:
            for i in range(done, done + 500):
                op(i)
            done += 500
            now = time.perf_counter()
            if now >= start + seconds:
                break
        best = max(best, done / (now - start))
    return best


# -- two processes ----------------------------------------------------------------

def _incr_child(make: Callable[[], Any], count: int, ready_fd: int, go_fd: int) -> None:
    async def main() -> None:
        d = make()
        await d.get("warm-up")                 # open connections before the start
        os.write(ready_fd, b"R")
        os.read(go_fd, 1)
        for _ in range(count):
            await d.incr("shared-counter", 1, 0)
        await d.aclose()
    uvloop.run(main())


def two_processes(make: Callable[[], Any], count: int) -> tuple[float, int]:
    """``(ops/s, final count)`` for 2 processes doing ``count`` incr each."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    procs = [FORK.Process(target=_incr_child, args=(make, count, ready_w, r)) for _ in range(2)]
    for p in procs:
        p.start()
    ready = b""
    while len(ready) < 2:                      # both have opened their store
        chunk = os.read(ready_r, 2)
        if not chunk:
            raise RuntimeError("an incr child died before it was ready")
        ready += chunk
    os.close(ready_r)
    os.close(ready_w)
    start = time.perf_counter()
    os.write(w, b"GG")
    for p in procs:
        p.join(300)
        if p.exitcode != 0:
            raise RuntimeError(f"incr child exited with {p.exitcode}")
    elapsed = time.perf_counter() - start
    os.close(r)
    os.close(w)

    async def final() -> int:
        d = make()
        n = await d.get("shared-counter")
        await d.aclose()
        return int(n or 0)
    return 2 * count / elapsed, uvloop.run(final())


# -- redis-server -------------------------------------------------------------------

@contextmanager
def redis_server(workdir: str) -> Iterator[str | None]:
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis: skipped (redis-server not installed; apt-get install redis-server)")
        yield None
        return
    sock = os.path.join(workdir, "redis.sock")
    proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(unix_socket_path=sock).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


# -- report -------------------------------------------------------------------------

def row(name: str, figures: dict[str, float]) -> str:
    return f"{name:10s}" + "".join(f"{figures[op]:>14,.0f}" for op in ("get", "set", "incr"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keys", type=int, default=1024)
    ap.add_argument("--incr-per-process", type=int, default=50_000)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="pyresty-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    store = os.path.join(workdir, "store")
    print(f"python {sys.version.split()[0]}, uvloop, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; ops/s, best of {args.rounds} x {args.seconds}s\n")
    print(f"{'backend':10s}{'get (hit)':>14s}{'set':>14s}{'incr':>14s}")
    try:
        with redis_server(workdir) as url:
            run_one(args, "plain", PlainDict)
            run_one(args, "embedded", lambda: EmbeddedDict("bench", store, 64 << 20))
            run_raw(args, store)
            if url:
                run_one(args, "redis", lambda: RedisDict("bench", url))
            run_limit(args, store)
            print(f"\n2 processes x {args.incr_per_process:,} incr on one key")
            run_two(args, "embedded", lambda: EmbeddedDict("bench", store, 64 << 20))
            if url:
                run_two(args, "redis", lambda: RedisDict("bench", url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_one(args: argparse.Namespace, name: str, make: Callable[[], Any]) -> None:
    async def go() -> dict[str, float]:
        d = make()
        try:
            seconds = args.seconds
            return await one_process(d, args.keys, seconds, args.rounds)
        finally:
            await d.aclose()
    print(row(name, uvloop.run(go())), flush=True)


def run_raw(args: argparse.Namespace, store: str) -> None:
    d = EmbeddedDict("bench", store, 64 << 20)
    try:
        print(row("raw lmdb", raw_lmdb(d, args.keys, args.seconds, args.rounds)), flush=True)
    except lmdb.Error as exc:
        print(f"raw lmdb: failed: {exc}")
    finally:
        d.close()


def run_limit(args: argparse.Namespace, store: str) -> None:
    d = EmbeddedDict("bench", store, 64 << 20)
    rule = RequestRate(1_000_000, 1000)
    key = b"limit_req:api:127.0.0.1"
    try:
        ops = sync_rate(lambda i: d.update_one(key, rule.decide), args.seconds, args.rounds)
        print(f"\nlimit_req decision, embedded (update_one): {ops:,.0f} ops/s "
              f"({1e6 / ops:.2f} µs each)", flush=True)
    finally:
        d.close()


def run_two(args: argparse.Namespace, name: str, make: Callable[[], Any]) -> None:
    count = args.incr_per_process if name == "embedded" else max(1, args.incr_per_process // 10)
    ops, final = two_processes(make, count)
    verdict = "exact" if final == 2 * count else f"LOST {2 * count - final}"
    print(f"{name:10s}{ops:>14,.0f} ops/s   final {final:,} of {2 * count:,} ({verdict})", flush=True)


if __name__ == "__main__":
    main()
