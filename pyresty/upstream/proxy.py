"""``proxy_pass``: a location's content handler that forwards the request to an upstream.

Theory of operation
-------------------
``location_proxy(config, location, resolve)`` compiles a location once per
process into a ``ProxyPlan`` (the target, the request fields to add and
drop, the timeouts, the upstream's balancer and pool settings). The plan is
the route's content handler: ``await plan(r)`` runs the try loop below, then
hands the upstream's status, fields and body to the ``Request`` as if a
handler had produced them, so ``header_filter`` and ``body_filter`` run on
proxied responses as on any other. The fields go as the upstream's wire lines
(``Request.fields_wire``, http/client.py ``forward_fields``): ``Headers`` are
made of them only if something reads ``r.headers_out``.

A response whose body arrived with its head (the common small response)
is buffered and leaves in one write with its length; a longer one streams:
the head goes out, then the body as it arrives. Reading from the upstream
pauses while more than ``pool.READ_LIMIT`` bytes wait for the client, and
the client side waits in ``flush()`` while its transport is full, so a slow
client slows the upstream read and memory per request stays bounded.

The response parser lives with the upstream connection (one per pooled
connection, its sink the current ``Exchange``); ``proxy_read_timeout`` is a
deadline on the waiting exchange, checked by one ``ReadDeadlines`` timer.

Rules (SPEC §8, nginx's proxy_next_upstream)
--------------------------------------------
1. A try is: choose a peer (the balancer, or the user's ``pick(r, b)``),
   take an idle pooled connection to it or connect, send the request, wait
   for the response head.
2. A try that fails on a **reused** connection before any response byte
   arrived (the peer closed a kept-alive connection: error, not timeout) is
   sent again once per request on a **new** connection to the same peer;
   that resend is not a try. Seed 004: an upstream that closes every reused
   connection costs one resend, never a loop.
3. Other failures (``error``, ``timeout``, ``invalid_header``, and
   ``http_5xx``/``http_429``/``http_403``/``http_404`` when listed) move to
   the next try when ``proxy_next_upstream`` lists them, a try is left
   (``proxy_next_upstream_tries``, the peers not tried yet, the function
   balancer's ``set_more_tries``), ``proxy_next_upstream_timeout`` has not
   passed, and the request is idempotent or was never sent (unless
   ``non_idempotent``). So a request is sent at most tries + 1 times.
4. When no try is left: the last ``http_*`` response is passed on as it
   is; otherwise 504 after a timeout, 502 after anything else.
5. Once a byte of the response went to the client nothing is retried: an
   upstream that fails mid-body cuts the client connection (a truncated
   response, never a hang).
6. A connection returns to the pool only when its response was read to the
   end, nothing more arrived, and neither side said ``Connection: close``
   (pool.py rule 1). The request never waits for that.
7. Every failure is logged (nginx's words) and counted per upstream and peer.
8. Fields set on the response before the proxy (limit_req's ``RateLimit-*``,
   an access handler's ``r.headers_out``) stay on the proxied response, in
   place of the upstream's fields of the same name, except those that
   describe the body (``BODY_FIELDS``): those are the upstream's.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from pyresty.http.client import BodyWriter, ForwardHead, ResponseParser, UpstreamError, forward_fields
from pyresty.http.headers import Headers
from pyresty.runtime.client_tls import client_tls
from pyresty.upstream import balancer as balancers
from pyresty.upstream import pool
from pyresty.upstream.pool import READ_LIMIT, PooledSocket, PoolKey, pools

if TYPE_CHECKING:
    from pyresty.config.model import Config, Location, Upstream
    from pyresty.server.request import Request

log = logging.getLogger("pyresty.upstream")

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_STATUS_KINDS: Final = {500: "http_500", 502: "http_502", 503: "http_503", 504: "http_504",
                        403: "http_403", 404: "http_404", 429: "http_429"}
DIRECT_POOL: Final = 32        # idle connections kept for a direct proxy_pass http://host:port
TICK: Final = 0.1              # how often waiting exchanges' read deadlines are checked (s)


class Failure(Exception):
    """One try that did not produce a usable response head."""

    def __init__(self, kind: str, reason: str, sent: bool, got_bytes: bool = False) -> None:
        super().__init__(reason)
        self.kind = kind          # error | timeout | invalid_header | http_NNN
        self.reason = reason
        self.sent = sent          # the request (or part of it) reached the upstream
        self.got_bytes = got_bytes


class Counters:
    """What /metrics shows per upstream and peer (rule 7)."""

    __slots__ = ("requests", "failures", "retries", "resends")

    def __init__(self) -> None:
        self.requests = 0                 # tries sent to this peer
        self.failures: dict[str, int] = {}   # by kind
        self.retries = 0                  # tries that followed a failed one
        self.resends = 0                  # rule 2's resends on a new connection


_counters: dict[tuple[str, str], Counters] = {}


def counters(upstream: str, addr: str) -> Counters:
    found = _counters.get((upstream, addr))
    if found is None:
        found = _counters[(upstream, addr)] = Counters()
    return found


def stats() -> dict[str, dict[str, int]]:
    """Per ``"upstream peer"``: tries, failures by kind (``failed_<kind>``), retries, resends."""
    out: dict[str, dict[str, int]] = {}
    for (name, addr), c in _counters.items():
        figures = {"requests": c.requests, "retries": c.retries, "resends": c.resends}
        for kind, n in c.failures.items():
            figures["failed_" + kind] = n
        out[f"{name} {addr}"] = figures
    return out


class Exchange:
    """One request/response on one upstream connection: the socket's owner
    while the try runs (pool.py), and the sink of the response parser."""

    __slots__ = ("sock", "parser", "waiter", "status", "fields", "keep_alive", "chunks", "size",
                 "head", "ended", "error", "got_bytes", "paused", "deadline")

    def __init__(self, sock: PooledSocket, method: str) -> None:
        self.sock = sock
        # one parser per connection, its sink the exchange of the moment
        parser: ResponseParser | None = sock.parser
        if parser is None:
            parser = sock.parser = ResponseParser(self)
        else:
            parser.sink = self
        parser.expect(method)
        self.parser: ResponseParser | None = parser
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.fields: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.head = False
        self.ended = False
        self.error: Failure | None = None
        self.got_bytes = False
        self.paused = False
        self.deadline = 0.0               # of the current wait (loop time)
        sock.owner = self

    # the socket's owner interface
    def on_data(self, data: bytes) -> None:
        self.got_bytes = True
        parser = self.parser
        if parser is None:
            return
        try:
            parser.feed(data)
        except UpstreamError as exc:
            kind = "error" if self.head else "invalid_header"
            self._fail(Failure(kind, f"upstream sent an invalid response: {exc}", True, True))

    def on_eof(self) -> None:
        parser = self.parser
        try:
            if parser is not None:
                parser.eof()
        except UpstreamError:
            pass
        if not self.ended:
            where = "reading upstream" if self.head else "reading response header from upstream"
            self._fail(Failure("error", f"upstream prematurely closed connection while {where}",
                               True, self.got_bytes))

    def on_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.error is None:
            where = "reading upstream" if self.head else "reading response header from upstream"
            reason = f"{exc}" if exc else "upstream prematurely closed connection"
            self._fail(Failure("error", f"{reason} while {where}", True, self.got_bytes))

    # the response parser's sink
    def on_interim(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        pass    # 100 Continue and friends: the client gets the final response only

    def on_response(self, status: int, fields: list[tuple[bytes, bytes]],
                    keep_alive: bool) -> None:
        self.status = status
        self.fields = fields
        self.keep_alive = keep_alive
        self.head = True
        self._wake()

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > READ_LIMIT and not self.paused:
            self.paused = True
            self.sock.pause_reading()
        self._wake()

    def on_end(self) -> None:
        self.ended = True
        self._wake()

    def on_upgrade(self, fields: list[tuple[bytes, bytes]], rest: bytes) -> None:
        self._fail(Failure("invalid_header", "upstream switched protocols unasked", True, True))

    # the proxy's side
    def _fail(self, failure: Failure) -> None:
        if self.error is None:
            self.error = failure
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop, timeout: float, what: str) -> None:
        """Until the parser or the socket has news; Failure("timeout") after
        ``timeout`` (up to ``TICK`` later: ``ReadDeadlines``)."""
        waiter = self.waiter = loop.create_future()
        self.deadline = loop.time() + timeout
        deadlines = _deadlines
        deadlines.add(self, loop)
        try:
            await waiter
        except TimeoutError:
            raise Failure("timeout", f"upstream timed out (110: Connection timed out) while {what}",
                          True, self.got_bytes) from None
        finally:
            deadlines.waiting.discard(self)
            self.waiter = None

    def expire(self) -> None:
        """The read deadline passed (``ReadDeadlines``)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    # read through calls where an await came in between: mypy (and so mypyc)
    # would otherwise keep a narrowed attribute type across the await
    def failure(self) -> Failure | None:
        return self.error

    def has_head(self) -> bool:
        return self.head

    def complete(self) -> bool:
        return self.ended

    def take(self) -> list[bytes]:
        chunks = self.chunks
        self.chunks = []
        self.size = 0
        if self.paused:
            self.paused = False
            self.sock.resume_reading()
        return chunks

    def release(self) -> bool:
        """The exchange is over: True when the connection may be pooled (rule 6).
        The parser stays with the connection for its next exchange."""
        parser = self.parser
        self.parser = None
        return (self.ended and self.error is None and self.keep_alive and parser is not None
                and parser.idle and parser.reusable and not self.sock.closed)


class ReadDeadlines:
    """The read deadlines (``proxy_read_timeout``) of the exchanges waiting for
    their upstream, checked every ``TICK`` by one timer that runs only while
    one waits: a timer created and cancelled per wait cost a proxied request
    about 3k instructions, for a timeout that is seconds long and needs no
    better than a tenth of one."""

    __slots__ = ("waiting", "_ticker")

    def __init__(self) -> None:
        self.waiting: set[Exchange] = set()
        self._ticker: asyncio.TimerHandle | None = None

    def add(self, ex: Exchange, loop: asyncio.AbstractEventLoop) -> None:
        self.waiting.add(ex)
        if self._ticker is None:
            self._ticker = loop.call_later(TICK, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ticker = None
        now = loop.time()
        for due in [ex for ex in self.waiting if ex.deadline <= now]:
            self.waiting.discard(due)
            due.expire()
        if self.waiting:
            self._ticker = loop.call_later(TICK, self._tick, loop)


_deadlines = ReadDeadlines()


def _forget_after_fork() -> None:
    global _deadlines
    _deadlines = ReadDeadlines()     # a forked child's loop is not its parent's


os.register_at_fork(after_in_child=_forget_after_fork)


class BalancerCall:
    """The ``b`` of a function balancer's ``async def pick(r, b)`` (SPEC §8)."""

    __slots__ = ("tries", "last_failure", "peer", "more", "cap", "upstream")

    def __init__(self, upstream: str, cap: int) -> None:
        self.tries = 0                     # tries made before this call
        self.last_failure: tuple[str, int] | None = None   # ("failed" | "next", status)
        self.peer: tuple[str, int] | None = None
        self.more = 0
        self.cap = cap                     # proxy_next_upstream_tries (0: none)
        self.upstream = upstream

    def begin(self, tries: int) -> None:
        """A new try: no peer chosen yet."""
        self.tries = tries
        self.peer = None

    def chosen(self) -> tuple[str, int] | None:
        """The peer ``pick`` set (a method: the call in between may set it)."""
        return self.peer

    def set_current_peer(self, host: object, port: object) -> None:
        """The peer of this try. Raises ValueError for a bad host or port."""
        if not isinstance(host, str) or not host:
            raise ValueError(f"set_current_peer: invalid host {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"set_current_peer: invalid port {port!r}")
        self.peer = (host, port)

    def set_more_tries(self, n: object) -> None:
        """Allow ``n`` more tries for this request (capped by proxy_next_upstream_tries)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"set_more_tries: invalid count {n!r}")
        total = 1 + self.more + n
        if self.cap and total > self.cap:
            log.warning("upstream %s: set_more_tries(%d) would allow %d tries; capped by "
                        "proxy_next_upstream_tries = %d", self.upstream, n, total, self.cap)
            n = max(0, self.cap - 1 - self.more)
        self.more += n


class ProxyPlan:
    """One proxied location, compiled once per process (module docstring)."""

    def __init__(self, config: Config, location: Location,
                 resolve: Callable[..., Callable[..., Any]]) -> None:
        url = location.proxy_pass or ""
        scheme, _, url_rest = url.partition("://")
        authority, _, rest = url_rest.partition("/")
        # https:// upstreams: verified by default against proxy_ssl_name, nginx's
        # $proxy_host without its port (runtime/client_tls.py)
        self.tls = client_tls(location.proxy_ssl_name or _ssl_name(authority),
                              sni=location.proxy_ssl_server_name,
                              verify=location.proxy_ssl_verify,
                              trusted_certificate=location.proxy_ssl_trusted_certificate) \
            if scheme == "https" else None
        self.uri_part: str | None = "/" + rest if (rest or url.endswith("/")) else None
        self.prefix = location.pattern if location.kind in ("", "^~") else None
        self.exact = location.kind == "="
        upstream = _find_upstream(config, authority)
        named = upstream is not None
        if upstream is None:
            host, _, port = authority.rpartition(":")
            host = host.strip("[]")
            from pyresty.config.model import Peer, Upstream
            upstream = Upstream(name=authority, servers=(Peer(host, int(port)),),
                                keepalive=DIRECT_POOL, max_fails=0)
        self.upstream = upstream
        self.name = upstream.name
        # a pooled TLS connection was made for one server name and verified as its
        # location said: keep it to locations that name and verify the same way
        self.pool_name = upstream.name if self.tls is None else (
            f"{upstream.name} {self.tls.pool_tag}")
        self.pool_size = upstream.keepalive
        self.pool_timeout = upstream.keepalive_timeout
        self.pool_requests = upstream.keepalive_requests
        self.function: Callable[..., Any] | None = None
        self.balancer: balancers.Balancer | None = None
        # id(PeerState) -> its pool key, address and counters (peers live as long as the plan)
        self.peers: dict[int, tuple[PoolKey, str, Counters]] = {}
        if ":" in upstream.balancer and upstream.balancer not in ("round_robin", "least_conn", "hash"):
            self.function = resolve(upstream.balancer, phase="balancer")
        elif named:
            # the process's registry: health checks (health.py) set these peers' health
            self.balancer = balancers.balancers(config)[upstream.name]
        else:
            self.balancer = direct_balancer(upstream)
        self.hash_key = upstream.hash_key if upstream.balancer == "hash" else None
        self.host = authority.encode("latin-1")
        sets = [(name.encode("latin-1"), value.encode("latin-1"))
                for name, value in location.proxy_set_header]
        self.forward = ForwardHead(self.host, sets, location.proxy_http_version == "1.1")
        nxt = set(location.proxy_next_upstream)
        self.next_upstream = frozenset() if "off" in nxt else frozenset(nxt)
        self.non_idempotent = "non_idempotent" in nxt
        self.tries_cap = location.proxy_next_upstream_tries
        self.next_timeout = location.proxy_next_upstream_timeout
        self.connect_timeout = location.proxy_connect_timeout
        self.send_timeout = location.proxy_send_timeout
        self.read_timeout = location.proxy_read_timeout
        self.http11 = location.proxy_http_version == "1.1"
        self.buffering = location.proxy_request_buffering
        self.where = location.key
        n_peers = len(upstream.servers)
        self.max_tries = n_peers if not self.tries_cap else min(n_peers, self.tries_cap)

    async def __call__(self, r: Request) -> None:
        await proxy(self, r)

    # the request line (nginx's URI rules; the fields are ``forward``'s)
    def target(self, uri: str, path: str, query: str) -> str:
        """The upstream's request target for a request's ``uri`` (as received),
        its decoded ``path`` and its ``query``."""
        if uri[:1] != "/":                    # absolute-form: send origin-form
            uri = path + ("?" + query if query else "")
        part = self.uri_part
        if part is None:
            return uri
        query = "?" + query if query else ""
        if self.exact:
            return part + query
        prefix = self.prefix
        if prefix is None:
            return uri
        raw = uri.partition("?")[0]
        if raw.startswith(prefix):
            return part + raw[len(prefix):] + query
        return part + quote(path[len(prefix):] if path.startswith(prefix) else path) + query

    def hash_value(self, r: Request) -> str | None:
        key = self.hash_key
        if key is None:
            return None
        if key == "remote_addr":
            return str(r.client_addr)
        if key == "uri":
            return str(r.path)
        if key == "request_uri":
            return str(r.uri)
        kind, _, name = key.partition(":")
        if kind == "header":
            return str(r.headers.get(name, ""))
        if kind == "arg":
            values = r.args.get(name)
            return values[0] if values else ""
        for part in str(r.headers.get("cookie", "")).split(";"):
            cname, _, cvalue = part.strip().partition("=")
            if cname == name:
                return cvalue
        return ""


def _ssl_name(authority: str) -> str:
    """nginx's ``$proxy_host`` without its port: the upstream's name, or the host."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if ":" in authority else authority


def _find_upstream(config: Config, name: str) -> Upstream | None:
    for upstream in config.upstreams:
        if upstream.name == name:
            return upstream
    return None


_direct: dict[str, balancers.Balancer] = {}


def direct_balancer(upstream: Upstream) -> balancers.Balancer:
    """The one-peer balancer of a ``proxy_pass http://host:port`` (shared by the
    locations that name the same address)."""
    found = _direct.get(upstream.name)
    if found is None:
        found = _direct[upstream.name] = balancers.build(upstream)
    return found


def location_proxy(config: Config, location: Location,
                   resolve: Callable[..., Callable[..., Any]]) -> ProxyPlan:
    """The content handler of a ``proxy_pass`` location."""
    pool.report(stats)
    return ProxyPlan(config, location, resolve)


# --- the try loop ------------------------------------------------------------

class _Tries:
    """What one request's tries left behind (for the access log and the answer)."""

    __slots__ = ("addrs", "statuses", "times", "last_start", "last_kind", "last_status", "sent")

    def __init__(self) -> None:
        self.addrs: list[str] = []
        self.statuses: list[str] = []
        self.times: list[float] = []
        self.last_start = 0.0         # when the last try began (loop time)
        self.last_kind = ""
        self.last_status = 0
        self.sent = 0


async def proxy(plan: ProxyPlan, r: Request) -> None:
    if r.upgrade and plan.http11:
        from pyresty.upstream import tunnel
        if tunnel.wants_websocket(r):     # a WebSocket: a tunnel (tunnel.py)
            await tunnel.proxy_websocket(plan, r)
            return
    loop = r.stream.loop
    started = loop.time()
    body = b""
    streaming = False
    length: int | None = 0
    if r.header(b"content-length") is not None or r.header(b"transfer-encoding") is not None:
        if plan.buffering or not plan.http11:
            body = await r.read_body()
            length = len(body)
        else:
            streaming = True     # proxy_request_buffering = false: on as it arrives
            field = r.header(b"content-length")
            length = int(field) if field is not None and r.header(b"transfer-encoding") is None \
                else None
    head = plan.forward.build(r.method, plan.target(r.uri, r.path, r.query), r.fields,
                              r.client_addr, r.scheme, length)
    request = head + body if len(body) < 65536 else b""
    record = _Tries()
    ex = await _try_all(plan, r, loop, started, head, body, request, record,
                        r if streaming else None, length)
    r.upstream_addr = record.addrs[0] if len(record.addrs) == 1 else ", ".join(record.addrs)
    r.upstream_status = record.statuses[0] if len(record.statuses) == 1 \
        else ", ".join(record.statuses)
    if ex is None:
        r.upstream_times = record.times
        r.exit(504 if record.last_kind == "timeout" else 502)
        return
    try:
        await _respond(plan, r, ex)
    finally:
        now = loop.time()
        record.times[-1] = now - record.last_start     # the last try's, body included
        r.upstream_times = record.times
        if ex.sock.owner is ex:
            if ex.release():
                pools().put(ex.sock, plan.pool_size, plan.pool_timeout, plan.pool_requests, now)
            else:
                ex.sock.close()


async def _try_all(plan: ProxyPlan, r: Request, loop: asyncio.AbstractEventLoop, started: float,
                   head: bytes, body: bytes, request: bytes, record: _Tries,
                   source: Any, length: int | None) -> Exchange | None:
    """Rules 1-4: the exchange whose response head is to be answered, or None (502/504).
    ``source`` is the request when its body streams (it cannot be sent twice),
    ``length`` that body's (None: unknown, sent chunked)."""
    tried: set[str] = set()
    call: BalancerCall | None = None
    if plan.function is not None:
        call = BalancerCall(plan.name, plan.tries_cap)
    resent = False
    n = 0
    balancer = plan.balancer
    key = plan.hash_value(r) if plan.hash_key is not None else None
    idempotent = r.method in _IDEMPOTENT
    while True:
        peer: balancers.PeerState | None = None
        if call is not None:
            call.begin(n)
            await plan.function(r, call)   # type: ignore[misc]
            chosen = call.chosen()
            if chosen is None:
                log.error("balancer %s set no peer (call b.set_current_peer) on %s %s",
                          plan.upstream.balancer, r.method, r.uri)
                return None
            host, port = chosen
        else:
            assert balancer is not None
            peer = balancer.pick(loop.time(), tried, key)
            if peer is None:
                if n == 0:
                    log.error("no live upstreams while connecting to upstream \"%s\"", plan.name)
                return None
            tried.add(peer.addr)
        info = plan.peers.get(id(peer)) if peer is not None else None
        if info is None:
            pool_key: PoolKey = (host, port, plan.pool_name) if peer is None \
                else (peer.host, peer.port, plan.pool_name)
            addr = f"[{pool_key[0]}]:{pool_key[1]}" if ":" in pool_key[0] \
                else f"{pool_key[0]}:{pool_key[1]}"
            info = (pool_key, addr, counters(plan.name, addr))
            if peer is not None:
                plan.peers[id(peer)] = info
        pool_key, addr, count = info
        if n:
            count.retries += 1
        n += 1
        try_start = record.last_start = loop.time()
        if peer is not None and balancer is not None:
            balancer.started(peer)
        failure: Failure | None = None
        ex: Exchange | None = None
        fresh = False
        while True:
            try:
                ex = await _send(plan, pool_key, fresh, r.method, head, body, request, loop,
                                 source, length)
                record.sent += 1
                # ex.failure(), a call: the awaits in between change what it returns
                while not ex.has_head():
                    failed = ex.failure()
                    if failed is not None:
                        raise failed
                    await ex.wait(loop, plan.read_timeout, "reading response header from upstream")
                failed = ex.failure()
                if failed is not None and not ex.complete():
                    raise failed
            except Failure as exc:
                if ex is not None:
                    ex.sock.close()
                # rule 2: a kept-alive connection the peer had closed; once per request
                if exc.kind == "error" and not exc.got_bytes and ex is not None \
                        and ex.sock.reused and not resent and source is None:
                    log.info("upstream %s closed a kept-alive connection (%s); sending %s %s "
                             "again on a new connection", addr, exc.reason, r.method, r.uri)
                    resent = fresh = True
                    count.resends += 1
                    ex = None
                    continue
                failure = exc
            break
        now = loop.time()
        record.addrs.append(addr)
        record.times.append(now - try_start)
        count.requests += 1
        if failure is None and ex is not None:
            status_kind = _STATUS_KINDS.get(ex.status)
            if status_kind is None or status_kind not in plan.next_upstream:
                record.statuses.append(str(ex.status))
                if peer is not None and balancer is not None:
                    balancer.finished(peer, now, False)
                return ex
            failure = Failure(status_kind, f"upstream answered {ex.status}", True, True)
            record.last_status = ex.status
        assert failure is not None
        count.failures[failure.kind] = count.failures.get(failure.kind, 0) + 1
        if peer is not None and balancer is not None:
            balancer.finished(peer, now, failure.kind not in ("http_403", "http_404"))
        record.last_kind = failure.kind
        http_failure = failure.kind.startswith("http_")
        record.statuses.append(str(ex.status) if http_failure and ex is not None else
                               ("504" if failure.kind == "timeout" else "502"))
        if call is not None:
            call.last_failure = ("next" if http_failure else "failed",
                                 ex.status if http_failure and ex is not None else
                                 (504 if failure.kind == "timeout" else 502))
        more = _may_retry(plan, failure, idempotent, n, call, started, now, len(tried)) \
            and not (source is not None and failure.sent)
        if not http_failure or more:
            _log_failure(plan, r, addr, failure, more)
        if not more:
            if http_failure and ex is not None:
                return ex    # rule 4: the last such response goes to the client
            return None
        if ex is not None:
            ex.sock.close()


def _may_retry(plan: ProxyPlan, failure: Failure, idempotent: bool, n: int,
               call: BalancerCall | None, started: float, now: float, tried: int) -> bool:
    """Rule 3."""
    if failure.kind not in plan.next_upstream:
        return False
    if failure.sent and not idempotent and not plan.non_idempotent:
        return False
    if plan.next_timeout and now - started >= plan.next_timeout:
        return False
    if call is not None:
        return n < 1 + call.more
    return n < plan.max_tries and tried < len(plan.upstream.servers)


def _log_failure(plan: ProxyPlan, r: Request, addr: str, failure: Failure, more: bool) -> None:
    host = r.header(b"host")
    log.error('%s%s, client: %s, request: "%s %s HTTP/%s", upstream: "http://%s%s", host: "%s"',
              failure.reason, "; trying the next upstream" if more else "", r.client_addr,
              r.method, r.uri, r.http_version, addr, r.uri,
              host.decode("latin-1") if host else "")


async def _send(plan: ProxyPlan, key: PoolKey, fresh: bool, method: str, head: bytes,
                body: bytes, request: bytes, loop: asyncio.AbstractEventLoop,
                source: Any = None, length: int | None = 0) -> Exchange:
    """A connection (pooled unless ``fresh``) with the request written to it
    (the body taken from ``source`` as it arrives when it streams)."""
    all_pools = pools()
    sock = None if fresh else all_pools.take(key, loop.time())
    if sock is None:
        try:
            sock = await all_pools.connect(key, plan.connect_timeout, plan.tls)
        except TimeoutError:
            raise Failure("timeout", "upstream timed out (110: Connection timed out) while "
                          "connecting to upstream", False) from None
        except OSError as exc:
            raise Failure("error", f"connect() failed ({exc.errno}: {exc.strerror or exc}) "
                          "while connecting to upstream", False) from None
    ex = Exchange(sock, method)
    if request:
        sock.write(request)
    else:
        sock.write(head)
        sock.write(body)
    if source is not None:
        try:
            await _stream_body(plan, sock, source, BodyWriter(length))
        except BaseException:
            sock.close()        # the client failed (408, 499) or the upstream did
            raise
    elif sock.write_blocked:
        await _drain(plan, sock)
    return ex


async def _drain(plan: ProxyPlan, sock: PooledSocket) -> None:
    try:
        await asyncio.wait_for(sock.drain(), plan.send_timeout)
    except TimeoutError:
        sock.close()
        raise Failure("timeout", "upstream timed out (110: Connection timed out) while "
                      "sending request to upstream", True) from None
    except ConnectionError as exc:
        sock.close()
        raise Failure("error", f"{exc} while sending request to upstream", True) from None


async def _stream_body(plan: ProxyPlan, sock: PooledSocket, r: Request, body: BodyWriter) -> None:
    """proxy_request_buffering = false: the body goes on as the client sends it,
    framed as the head announced (chunked when the client gave no length)."""
    while True:
        data = r.take_body()
        if data:
            sock.write(body.frame(data))
            if sock.write_blocked:
                await _drain(plan, sock)
        if r.body_complete and not r.body_waiting:
            break
        await r.stream.wait_body_data(r)
    end = body.end()
    if end:
        sock.write(end)


# fields that describe the upstream's body: the upstream's own always win
BODY_FIELDS: Final = frozenset(("content-length", "content-type", "content-encoding",
                                "content-range", "transfer-encoding"))


def _keep_earlier(r: Request, earlier: Headers) -> None:
    """Rule 8: fields set before the proxy (limit_req's ``RateLimit-*``, an access
    handler's ``r.headers_out``) stay on the proxied response, in place of the
    upstream's fields of the same name (as nginx's ``add_header``, which also
    adds to proxied responses); those that describe the body stay the upstream's."""
    fields = r.out_fields()
    assert fields is not None
    for name in earlier:
        if name.lower() not in BODY_FIELDS:
            fields[name] = earlier.get_all(name)


async def _respond(plan: ProxyPlan, r: Request, ex: Exchange) -> None:
    """Rule 5: the upstream's response becomes the request's."""
    r.status = ex.status
    # the upstream's lines go on as they came (Headers only if someone reads them,
    # or fields were set before: rule 8); a body filter may change the body's
    # size: then the length is the stream's
    earlier = r.fields_out
    r.fields_out = None
    r.fields_wire = forward_fields(ex.fields, r.route.body_filter is not None)
    if earlier:
        _keep_earlier(r, earlier)
    if ex.ended:                     # the whole body came with the head: one write
        chunks = ex.take()
        if chunks:
            r._out.extend(chunks)
        return
    while True:
        chunks = ex.take()
        if chunks:
            r._out.extend(chunks)
        await r.flush()
        if ex.complete():
            # what arrived while the client drained goes with the end (finish)
            r._out.extend(ex.take())
            return
        failed = ex.failure()
        if failed is not None:
            _cut(plan, r, ex, failed.reason)
            return
        try:
            if not ex.chunks:
                await ex.wait(r.stream.loop, plan.read_timeout, "reading upstream")
        except Failure as exc:
            _cut(plan, r, ex, exc.reason)
            return


def _cut(plan: ProxyPlan, r: Request, ex: Exchange, reason: str) -> None:
    """Rule 5: the response started and the upstream failed: a truncated response."""
    addr = ex.sock.peer
    ex.sock.close()
    _log_failure(plan, r, addr, Failure("error", reason, True), False)
    r.keep_alive = False
    r.finished = True
    r.stream.reset()
