"""Traffic control in real pyresty servers: limit_req, limit_conn, limit_count from the
config, across workers and across servers sharing a Redis, with Redis stopped.

Load comes from client threads on keepalive connections; every wait is a
condition with a deadline.
"""
from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import Pyresty, http_get, raw_exchange, wait_for

pytestmark = pytest.mark.timeout(120)

READY = r"\[notice\] .*generation (\d+) ready"

APP = '''
import asyncio
import pyresty

async def hello(r):
    await r.say("hello")

async def slow(r):
    d = pyresty.shared["limits"]
    inside = await d.incr("inside", 1, init=0)
    await asyncio.sleep(0.3)
    await d.incr("inside", -1)
    await r.say(inside)

async def by_user(r):
    user = r.args.get("user")
    return user[0] if user else None
'''


def load(ports: list[int], path: str, seconds: float, threads: int = 8) -> Counter[int]:
    """Requests from ``threads`` keepalive clients for ``seconds`` (spread over ``ports``)."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: Counter[int] = Counter()
        try:
            while time.monotonic() < deadline:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                mine[resp.status] += 1
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        finally:
            conn.close()
            with lock:
                statuses.update(mine)

    workers = [threading.Thread(target=client, args=(ports[i % len(ports)],)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 30)
    return statuses


def metric(server: Pyresty, zone: str, result: str) -> float:
    """``pyresty_limit_requests_total`` of one zone and result (0 when absent)."""
    for line in http_get(server.ports[1], "/metrics")[2].decode().splitlines():
        if line.startswith("pyresty_limit_requests_total{") and f'zone="{zone}"' in line \
                and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- config forms, answers and log lines ----------------------------------------------------

FORMS = '''
workers = 1
[shared]
limits = "1m"
[status]
listen = "127.0.0.1:{port2}"
[limit_req.api]
dict = "limits"
key = "remote_addr"
rate = "60r/m"
[limit_req.perkey]
dict = "limits"
key = "header:X-Api-Key"
rate = "1r/s"
[limit_count.daily]
dict = "limits"
key = "arg:token"
limit = 2
window = "1d"
[limit_count.peruser]
dict = "limits"
key = "app:by_user"
limit = 1
window = "1h"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /burst"
content = "app:hello"
limit_req = {{ zone = "api", burst = 2, nodelay = true }}
[[server.location]]
path = "= /header"
content = "app:hello"
limit_req = {{ zone = "perkey" }}
limit_status = 503
limit_headers = false
[[server.location]]
path = "= /quota"
content = "app:hello"
limit_count = {{ zone = "daily" }}
[[server.location]]
path = "= /user"
content = "app:hello"
limit_count = [{{ zone = "peruser" }}]
limit_log_level = "error"
'''


def test_limit_req_burst_nodelay_headers_and_log(make_server):
    server = make_server(FORMS, {"app.py": APP}, ready=READY)
    got = [http_get(server.port, "/burst") for _ in range(4)]
    assert [g[0] for g in got] == [200, 200, 200, 429]
    assert [g[1]["ratelimit-remaining"] for g in got] == ["2", "1", "0", "0"]
    assert all(g[1]["ratelimit-limit"] == "3" for g in got)
    assert got[0][1]["ratelimit-reset"] == "1" and got[2][1]["ratelimit-reset"] == "3"
    assert got[3][1]["retry-after"] == "1"
    assert b"429" in got[3][2]
    line = server.wait_log(r'\[warn\] .*limiting requests, excess: 2\.9\d{2} by zone "api", '
                           r'client: 127\.0\.0\.1, server: , request: "GET /burst HTTP/1\.1", '
                           r'host: "127\.0\.0\.1:\d+"')
    assert line
    wait_for(lambda: metric(server, "api", "rejected") == 1, 5, "the rejection in /metrics")
    assert metric(server, "api", "passed") == 3


def test_header_arg_and_function_keys(make_server):
    server = make_server(FORMS, {"app.py": APP}, ready=READY)
    # no X-Api-Key: not limited (nginx: an empty key is not accounted)
    assert [http_get(server.port, "/header")[0] for _ in range(3)] == [200] * 3
    key = {"X-Api-Key": "k1"}
    first = http_get(server.port, "/header", headers=key)
    assert first[0] == 200 and "ratelimit-limit" not in first[1]       # limit_headers = false
    assert http_get(server.port, "/header", headers=key)[0] == 503     # limit_status
    assert http_get(server.port, "/header", headers={"X-Api-Key": "k2"})[0] == 200
    # arg:token, a clock-aligned daily window
    got = [http_get(server.port, "/quota?token=t") for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    to_midnight = 86400 - time.time() % 86400
    assert abs(int(got[0][1]["ratelimit-reset"]) - to_midnight) <= 2
    assert abs(int(got[2][1]["retry-after"]) - to_midnight) <= 2
    assert http_get(server.port, "/quota")[0] == 200                   # no token
    # a key function
    assert [http_get(server.port, "/user?user=ann")[0] for _ in range(2)] == [200, 429]
    assert http_get(server.port, "/user?user=bob")[0] == 200
    assert http_get(server.port, "/user")[0] == 200 and http_get(server.port, "/user")[0] == 200
    server.wait_log(r'\[error\] .*limiting requests, quota of 1 per 3600s used up by zone "peruser"')


SEEN = '''
workers = 1
[shared]
limits = "1m"
[limit_req.api]
dict = "limits"
key = "remote_addr"
rate = "60r/m"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /seen"
content = "app:seen"
header_filter = "app:drop_limit"
limit_req = {{ zone = "api", burst = 5, nodelay = true }}
'''

SEEN_APP = APP + '''
async def seen(r):
    remaining = r.headers_out["RateLimit-Remaining"]
    r.headers_out["RateLimit-Reset"] = "77"
    r.headers_out["X-Seen"] = remaining
    await r.say(remaining)

def drop_limit(r):
    del r.headers_out["ratelimit-limit"]
'''


def test_handlers_see_and_change_the_rate_limit_fields(make_server):
    """The RateLimit-* fields are ordinary response fields for the phases after
    the limit: what a handler or filter reads, changes or deletes is what goes
    out, each field once (the limiter hands them over already encoded)."""
    server = make_server(SEEN, {"app.py": SEEN_APP}, ready=READY)
    raw = raw_exchange(server.port, b"GET /seen HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b"5\n"
    fields = [line.split(b": ", 1)[0].lower() for line in lines[1:]]
    assert fields.count(b"ratelimit-remaining") == 1 and fields.count(b"ratelimit-reset") == 1
    assert b"ratelimit-limit" not in fields
    assert b"RateLimit-Remaining: 5" in lines and b"RateLimit-Reset: 77" in lines
    assert b"X-Seen: 5" in lines


def test_rejection_log_lines_are_throttled(make_server):
    server = make_server(FORMS, {"app.py": APP}, ready=READY)
    started = time.monotonic()
    statuses = load([server.port], "/burst", 1.5, threads=4)
    elapsed = time.monotonic() - started
    assert statuses[429] > 100
    lines = [line for line in server.log_text().splitlines() if "limiting requests" in line]
    assert len(lines) <= 10 * (elapsed + 2)
    # the next line logged in a later second says how many were left out
    wait_for(lambda: http_get(server.port, "/burst")[0] == 429
             and "similar lines left out" in server.log_text(), 5, "the count of left-out lines")


def test_bad_limit_config_is_refused_naming_the_key(make_server):
    broken = FORMS.replace('zone = "daily"', 'zone = "dialy"').replace('rate = "1r/s"', 'rate = "1r/x"')
    server = make_server(broken, {"app.py": APP}, start=False)
    done = server.cli("-t")
    assert done.returncode == 1
    assert 'limit_req.perkey.rate: invalid value "1r/x" (expected a rate like "10r/s" or "600r/m")' \
        in done.stdout + done.stderr
    assert ('server[0].location[2].limit_count.zone: unknown limit_count zone "dialy" '
            '(known: daily, peruser)') in done.stdout + done.stderr
    missing = FORMS.replace('key = "app:by_user"', 'key = "app:nobody"')
    server2 = make_server(missing, {"app.py": APP}, start=False)
    done = server2.cli("-t")
    assert done.returncode == 1 and "limit_count.peruser.key" in done.stdout + done.stderr


# -- exact across workers and servers ---------------------------------------------------------

RATE = '''
workers = {workers}
[shared]
limits = {dict}
[status]
listen = "127.0.0.1:{{port2}}"
[limit_req.{zone}]
dict = "limits"
key = "remote_addr"
rate = "100r/s"
[[server]]
listen = "127.0.0.1:{{port}}"
[[server.location]]
path = "/"
content = "app:hello"
limit_req = {{{{ zone = "{zone}", burst = 20, nodelay = true }}}}
'''

BURST = 20


def test_two_workers_admit_100_per_second_exactly(make_server):
    config = RATE.format(workers=2, dict='"1m"', zone="rate")
    server = make_server(config, {"app.py": APP}, ready=READY)
    statuses = load([server.port], "/", 5.0, threads=8)
    assert statuses[429] > 0, statuses
    assert 500 <= statuses[200] <= 505 + BURST, statuses
    wait_for(lambda: (metric(server, "rate", "passed"), metric(server, "rate", "rejected"))
             == (statuses[200], statuses[429]), 5, "/metrics to agree with the clients")


def test_two_servers_sharing_redis_admit_100_per_second_exactly(tmp_path, redis_url):
    zone = "z" + uuid.uuid4().hex[:8]
    config = RATE.format(workers=1, dict=f'{{{{ backend = "{redis_url}" }}}}', zone=zone)
    servers = []
    try:
        for tag in ("A", "B"):
            prefix = tmp_path / tag
            prefix.mkdir()
            servers.append(Pyresty(prefix, config, {"app.py": APP}).start(ready=READY))
        statuses = load([s.port for s in servers], "/", 5.0, threads=8)
        assert statuses[429] > 0, statuses
        assert 500 <= statuses[200] <= 505 + BURST, statuses
    finally:
        for server in servers:
            server.stop()


# -- limit_conn, delays, all or nothing -------------------------------------------------------

CONN = '''
workers = 2
[shared]
limits = "1m"
[limit_conn.perip]
dict = "limits"
key = "remote_addr"
[limit_req.slow]
dict = "limits"
key = "remote_addr"
rate = "10r/s"
[limit_req.queued]
dict = "limits"
key = "remote_addr"
rate = "10r/s"
[limit_count.two]
dict = "limits"
key = "remote_addr"
limit = 2
window = "1h"
[limit_req.wide]
dict = "limits"
key = "remote_addr"
rate = "1r/m"
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "= /conn"
content = "app:slow"
limit_conn = {{ zone = "perip", max = 10 }}
[[server.location]]
path = "= /delayed"
content = "app:hello"
limit_req = {{ zone = "slow", burst = 5 }}
[[server.location]]
path = "= /partly"
content = "app:hello"
limit_req = {{ zone = "queued", burst = 5, delay = 2 }}
[[server.location]]
path = "= /both"
content = "app:hello"
limit_req = {{ zone = "wide", burst = 10, nodelay = true }}
limit_count = {{ zone = "two" }}
[[server.location]]
path = "= /wide"
content = "app:hello"
limit_req = {{ zone = "wide", burst = 10, nodelay = true }}
'''


def test_limit_conn_never_admits_more_than_max_under_200_clients(make_server):
    server = make_server(CONN, {"app.py": APP}, ready=READY)
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda _: http_get(server.port, "/conn", timeout=30), range(400)))
    admitted = [int(body) for status, _, body in results if status == 200]
    refused = [status for status, _, _ in results if status != 200]
    assert admitted and refused and set(refused) == {429}
    assert max(admitted) <= 10
    # every slot came back
    assert http_get(server.port, "/conn")[0] == 200


def test_without_nodelay_excess_requests_are_delayed_not_rejected(make_server):
    server = make_server(CONN, {"app.py": APP}, ready=READY)

    def timed(path: str, since: float = 0.0) -> tuple[int, float, float]:
        """Status, seconds from this request's own start to its answer, and
        seconds from ``since`` (a start common to the batch) to the answer.
        Measured from the common start, a thread that got the CPU late cannot
        make the limiter's spacing look shorter than it is: the k-th excess
        request is served k x 100 ms after the first arrival, and the first
        arrives after the common start."""
        start = time.monotonic()
        status = http_get(server.port, path)[0]
        end = time.monotonic()
        return status, end - start, end - (since or start)

    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        got = sorted(pool.map(lambda _: timed("/delayed", t0), range(6)), key=lambda g: g[2])
    assert [g[0] for g in got] == [200] * 6                 # 1 + burst 5: none refused
    assert min(g[1] for g in got) < 0.09                    # the first is served at once
    assert got[-1][2] >= 0.45                               # the 6th waited 5 x 100 ms
    assert got[3][2] >= 0.25
    server.wait_log(r'\[notice\] .*delaying request, excess: \d\.\d{3}, by zone "slow"')
    # beyond the burst: refused
    with ThreadPoolExecutor(10) as pool:
        statuses = Counter(pool.map(lambda _: timed("/delayed")[0], range(10)))
    assert statuses[429] >= 3
    # delay = 2: the first two excess requests go at once, the rest wait
    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        got = sorted(pool.map(lambda _: timed("/partly", t0), range(6)), key=lambda g: g[2])
    assert [g[0] for g in got] == [200] * 6
    assert sorted(g[1] for g in got)[2] < 0.09 and got[-1][2] >= 0.25


def test_a_location_decides_all_or_nothing(make_server):
    server = make_server(CONN, {"app.py": APP}, ready=READY)
    got = [http_get(server.port, "/both") for _ in range(5)]
    assert [g[0] for g in got] == [200, 200, 429, 429, 429]
    # limit_count refused three: limit_req spent tokens on the two admitted only
    after = http_get(server.port, "/wide")
    assert after[0] == 200 and after[1]["ratelimit-remaining"] == "8"   # burst 10 - 2 before it


# -- Redis stopped -------------------------------------------------------------------------

FAIL = '''
workers = 1
[shared]
limits = {{{{ backend = "{redis}" }}}}
[status]
listen = "127.0.0.1:{{port2}}"
[limit_req.open]
dict = "limits"
key = "remote_addr"
rate = "1000r/s"
[limit_req.closed]
dict = "limits"
key = "remote_addr"
rate = "1000r/s"
[[server]]
listen = "127.0.0.1:{{port}}"
[[server.location]]
path = "= /open"
content = "app:hello"
limit_req = {{{{ zone = "open" }}}}
[[server.location]]
path = "= /closed"
content = "app:hello"
limit_req = {{{{ zone = "closed" }}}}
limit_fail = "closed"
'''


def test_fail_open_and_closed_with_redis_stopped(make_server, tmp_path: Path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    sock = str(tmp_path / "own.sock")
    redis = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(sock), 10, "redis-server's socket")
        server = make_server(FAIL.format(redis=f"unix://{sock}"), {"app.py": APP}, ready=READY)
        assert http_get(server.port, "/open")[0] == 200
        assert http_get(server.port, "/closed")[0] == 200
        redis.kill()
        redis.wait(10)
        assert [http_get(server.port, "/open")[0] for _ in range(5)] == [200] * 5
        closed = [http_get(server.port, "/closed") for _ in range(5)]
        assert [c[0] for c in closed] == [429] * 5 and closed[0][1]["retry-after"] == "1"
        server.wait_log(r'\[warn\] .*limit_fail open: shared dict "limits" failed')
        server.wait_log(r'\[warn\] .*limit_fail closed: shared dict "limits" failed')
        # one warning per 10 s per dict and mode, not one per request
        assert server.log_text().count("limit_fail") == 2
        wait_for(lambda: metric(server, "open", "failed_open") == 5, 5, "failed_open in /metrics")
        assert metric(server, "closed", "failed_closed") == 5
    finally:
        redis.kill()
        redis.wait(10)
