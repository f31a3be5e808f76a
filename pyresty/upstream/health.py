"""Active health checks: one process probes the peers, every process reads the verdicts.

Rules
-----
1. Who checks. For every upstream with ``health_check``, each process calls
   ``timer.every(interval, ..., once=True)``: the checks run in one process of
   the server (the privileged agent if there is one, else worker 0) and never
   in two at once across a reload (timer rule 8: the runner holds an flock,
   released by the old process's premature run at exit). Each upstream's job
   has a name of its own (``pyresty.upstream.health:check.<upstream>``), so
   each holds its own lock.
2. A check is ``GET <path> HTTP/1.1`` with ``Host: <peer address>`` (or the
   check's ``host``) on a new connection, written and read with the sans-IO
   client role (``pyresty/http/client.py``). It passes when a response head
   arrives within ``timeout`` with a status in ``valid_statuses``, or any 2xx
   or 3xx without them (nginx's ``health_check`` default ``match``;
   lua-resty-upstream-healthcheck names the list ``valid_statuses``);
   anything else fails with a reason: ``connection refused``,
   ``timed out``, ``status 503``, ``invalid response: ...``. The peers of an
   upstream are checked concurrently; the connection is closed after the head.
   An upstream that a location proxies to over ``https://`` is checked over
   TLS as that location connects (``proxy_ssl_name``, ``proxy_ssl_server_name``,
   ``proxy_ssl_verify``, ``proxy_ssl_trusted_certificate``; nginx's
   ``health_check`` sits in the location and uses its settings too): plain
   HTTP to a TLS port would mark every peer down.
3. Verdicts. ``healthy`` consecutive passes mark a down peer up; ``unhealthy``
   consecutive failures mark an up peer down. A peer no check has judged is
   up. Each change is logged (``[warn]`` down, ``[notice]`` up) with the count
   and the last reason.
4. Publication. Verdicts and counters live in the internal shared dict
   ``HEALTH_DICT`` (``pyresty.health``, embedded; the config loader adds it
   when an upstream has a health_check), one record per peer keyed
   ``<upstream>/<address>``: by address, not by position, so a verdict
   survives reloads, peers added or reordered, and a new checker process
   goes on counting where the old one stopped.
5. Refresh. Every process reads the records of its upstreams into its
   balancers' ``PeerState.healthy`` at start (before it serves, so a reload
   keeps a down peer down) and then every ``interval``: a verdict reaches
   every worker within one interval of being written.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pyresty.config.model import HEALTH_DICT, Config, HealthCheck, Upstream
from pyresty.config.schema import proxy_upstream
from pyresty.errorlog import NOTICE
from pyresty.http.client import ResponseParser, UpstreamError, request_head
from pyresty.runtime import timer
from pyresty.runtime.client_tls import ClientTls, client_tls
from pyresty.runtime.shared import SharedDict, shared
from pyresty.upstream.balancer import Balancer, PeerState, balancers

__all__ = ["CheckFailed", "Record", "check_peer", "check_upstream", "judge", "key_of", "refresh",
           "start", "tls_of"]

log = logging.getLogger("pyresty.upstream")

READ_SIZE = 16384


class CheckFailed(Exception):
    """A check that did not pass; the message is the reason logged."""


@dataclass(slots=True)
class Record:
    """What the shared dict holds for one peer (rule 4)."""

    up: bool = True
    passes: int = 0           # consecutive passed checks
    fails: int = 0            # consecutive failed checks
    reason: str = ""          # why the last check failed

    def dumps(self) -> str:
        return json.dumps({"up": self.up, "passes": self.passes, "fails": self.fails,
                           "reason": self.reason}, separators=(",", ":"))

    @classmethod
    def loads(cls, text: Any) -> Record:
        """A record from the dict; anything unreadable is a fresh (up) record."""
        try:
            obj = json.loads(text)
            return cls(up=bool(obj["up"]), passes=int(obj["passes"]), fails=int(obj["fails"]),
                       reason=str(obj["reason"]))
        except (TypeError, ValueError, KeyError):
            return cls()


def key_of(upstream: str, peer: PeerState) -> str:
    return f"{upstream}/{peer.addr}"


# --- one check (rule 2) -------------------------------------------------------------

class _Head:
    """A ResponseSink that keeps the status of the first final response."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    def on_interim(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        pass

    def on_response(self, status: int, fields: list[tuple[bytes, bytes]],
                    keep_alive: bool) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        pass

    def on_end(self) -> None:
        pass

    def on_upgrade(self, fields: list[tuple[bytes, bytes]], rest: bytes) -> None:
        pass


async def check_peer(host: str, port: int, path: str, timeout: float, *,
                     valid: tuple[int, ...] = (), host_header: str | None = None,
                     tls: ClientTls | None = None) -> int:
    """GET ``path`` from ``host:port`` (over TLS with ``tls``); the status of a valid
    answer within ``timeout`` (one of ``valid``, or any 2xx/3xx when it is empty).
    ``Host`` is ``host_header``, else the peer's address.

    Raises CheckFailed with the reason otherwise.
    """
    try:
        async with asyncio.timeout(timeout):
            status = await _probe(host, port, path, host_header, tls)
    except TimeoutError:
        raise CheckFailed("timed out") from None
    passed = status in valid if valid else 200 <= status < 400
    if not passed:
        raise CheckFailed(f"status {status}")
    return status


async def _probe(host: str, port: int, path: str, host_header: str | None,
                 tls: ClientTls | None) -> int:
    try:
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls.context, server_hostname=tls.server_hostname)
            try:
                tls.check(writer.transport)
            except OSError:
                writer.close()
                raise
    except ConnectionRefusedError:
        raise CheckFailed("connection refused") from None
    except OSError as exc:
        raise CheckFailed(f"cannot connect: {exc.strerror or exc}") from None
    sink = _Head()
    parser = ResponseParser(sink)
    authority = host_header or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        head, _ = request_head("GET", path, authority, None, None)
        parser.expect("GET")
        writer.write(head)
        while not sink.status:
            data = await reader.read(READ_SIZE)
            if not data:
                parser.eof()
                raise CheckFailed("connection closed before a response")
            parser.feed(data)
    except UpstreamError as exc:
        raise CheckFailed(f"invalid response: {exc}") from None
    except OSError as exc:
        raise CheckFailed(f"connection error: {exc.strerror or exc}") from None
    finally:
        writer.close()
    return sink.status


# --- verdicts (rules 3 and 4) ---------------------------------------------------------

def judge(record: Record, passed: bool, reason: str, healthy: int, unhealthy: int) -> bool:
    """Count one check into ``record``; True when it flipped the verdict."""
    if passed:
        record.passes, record.fails, record.reason = record.passes + 1, 0, ""
        if not record.up and record.passes >= healthy:
            record.up = True
            return True
    else:
        record.passes, record.fails, record.reason = 0, record.fails + 1, reason
        if record.up and record.fails >= unhealthy:
            record.up = False
            return True
    return False


async def check_upstream(upstream: Upstream, balancer: Balancer,
                         tls: ClientTls | None = None) -> None:
    """One round of checks of every peer of ``upstream`` (over TLS with ``tls``);
    publishes and applies the verdicts."""
    hc = upstream.health_check
    assert hc is not None
    store = _store()
    outcomes = await asyncio.gather(*(_outcome(peer, hc, tls) for peer in balancer.peers))
    for peer, (passed, reason) in zip(balancer.peers, outcomes):
        key = key_of(upstream.name, peer)
        record = Record.loads(await store.get(key))
        if judge(record, passed, reason, hc.healthy, hc.unhealthy):
            if record.up:
                log.log(NOTICE, "upstream %s peer %s is up (%d passed checks)",
                        upstream.name, peer.addr, record.passes)
            else:
                log.warning("upstream %s peer %s is down (%d failed checks: %s)",
                            upstream.name, peer.addr, record.fails, record.reason)
        await store.set(key, record.dumps())
        apply(peer, record)


async def _outcome(peer: PeerState, hc: HealthCheck,
                   tls: ClientTls | None) -> tuple[bool, str]:
    try:
        await check_peer(peer.host, peer.port, hc.path, hc.timeout, valid=hc.valid_statuses,
                         host_header=hc.host, tls=tls)
    except CheckFailed as exc:
        return False, str(exc)
    return True, ""


def apply(peer: PeerState, record: Record) -> None:
    peer.healthy = record.up
    peer.check_fails = record.fails


async def refresh(upstream: Upstream, balancer: Balancer) -> None:
    """Read the published verdicts of ``upstream``'s peers into ``balancer`` (rule 5)."""
    store = _store()
    for peer in balancer.peers:
        text = await store.get(key_of(upstream.name, peer))
        apply(peer, Record.loads(text) if text is not None else Record())


def _store() -> SharedDict:
    return shared[HEALTH_DICT]       # opened after fork, with the other dicts


# --- wiring (rules 1 and 5) ---------------------------------------------------------

async def start(config: Config) -> None:
    """Start health checking in this process (a worker, the agent, or a single process).

    Reads the current verdicts first, so the process serves with them; then
    arms the checks (run here only if this is the designated process) and
    the refresh. Raises what the shared dict raises.
    """
    found = balancers(config)
    for upstream in config.upstreams:
        hc = upstream.health_check
        if hc is None:
            continue
        balancer = found[upstream.name]
        await refresh(upstream, balancer)
        check = functools.partial(check_upstream, tls=tls_of(config, upstream))
        timer.every(hc.interval, _job("check", upstream, balancer, check), once=True)
        timer.every(hc.interval, _job("refresh", upstream, balancer, refresh))


def tls_of(config: Config, upstream: Upstream) -> ClientTls | None:
    """How the checks of ``upstream`` speak TLS: as the first location that proxies
    to it over ``https://`` (rule 2), or not at all."""
    for server in config.servers:
        for location in server.locations:
            url = location.proxy_pass or ""
            if url.startswith("https://") and proxy_upstream(url) == upstream.name:
                return client_tls(location.proxy_ssl_name or upstream.name,
                                  sni=location.proxy_ssl_server_name,
                                  verify=location.proxy_ssl_verify,
                                  trusted_certificate=location.proxy_ssl_trusted_certificate)
    return None


Step = Callable[..., Coroutine[Any, Any, None]]


def _job(kind: str, upstream: Upstream, balancer: Balancer,
         step: Step) -> Callable[[bool], Coroutine[Any, Any, None]]:
    """A timer callback for one upstream, named for it (its once-lock is its own: rule 1)."""
    async def job(premature: bool) -> None:
        if not premature:
            await step(upstream, balancer)
    job.__qualname__ = f"{kind}.{upstream.name}"
    return job
