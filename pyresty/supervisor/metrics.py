"""``/metrics``: the process table's rows as Prometheus text.

Pure: rows in, bytes out. Whoever serves ``/metrics`` (the master, or the
single process) builds the rows; nothing here knows where they came from.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pyresty.supervisor.table import Row, peer_rows


class _RowsCollector:
    def __init__(self, rows: Sequence[Row], draining: bool) -> None:
        self.rows = rows
        self.draining = draining

    def collect(self) -> Iterator[Metric]:
        rows = self.rows
        workers = [r for r in rows if r.role not in ("master", "spare")]   # a spare serves nothing
        requests = CounterMetricFamily("pyresty_requests", "Requests handled", labels=["worker", "generation"])
        conns = GaugeMetricFamily("pyresty_connections", "Open client connections",
                                  labels=["worker", "generation"])
        pending = GaugeMetricFamily("pyresty_timers_pending", "Pending timers", labels=["worker", "generation"])
        running = GaugeMetricFamily("pyresty_timers_running", "Running timer callbacks",
                                    labels=["worker", "generation"])
        rss = GaugeMetricFamily("pyresty_process_resident_bytes", "Resident memory",
                                labels=["role", "worker", "generation"])
        for row in workers:
            labels = [str(row.id) if row.id is not None else "agent", str(row.generation)]
            requests.add_metric(labels, row.requests or 0)
            conns.add_metric(labels, row.connections or 0)
            pending.add_metric(labels, row.timers_pending or 0)
            running.add_metric(labels, row.timers_running or 0)
        for row in rows:
            rss.add_metric([row.role, "-" if row.id is None else str(row.id), str(row.generation)],
                           row.rss)
        per_gen = GaugeMetricFamily("pyresty_workers", "Worker processes per generation and state",
                                    labels=["generation", "state"])
        counts = Counter((str(r.generation), r.state.split(" for ")[0]) for r in workers)
        for (gen, state), n in sorted(counts.items()):
            per_gen.add_metric([gen, state], n)
        draining = GaugeMetricFamily("pyresty_draining", "1 while the server drains (pyresty drain)")
        draining.add_metric([], 1 if self.draining else 0)
        yield from (requests, conns, pending, running, rss, per_gen, draining)
        yield from _supervision(rows)
        yield from _shared(workers)
        yield from _limits(workers)
        yield from _peers(rows)
        yield from _upstreams(workers)
        yield from _websockets(workers)
        yield from _counters(workers)
        yield from _tls_and_h2(workers)


EXIT_REASONS = ("crashed", "boot_failed", "killed")
RELOAD_OUTCOMES = ("started", "refused", "abandoned")


def _supervision(rows: Sequence[Row]) -> Iterator[Metric]:
    """What the master lived through: processes that died unasked (``crashed``),
    could not boot (``boot_failed``) or were SIGKILLed past their stop deadline
    (``killed``), and reloads by outcome. Every series is present from the start
    (at 0), so an alert on its increase sees the first one."""
    master = next((r for r in rows if r.role == "master"), None)
    if master is None:
        return
    exits = CounterMetricFamily("pyresty_worker_exits", "Processes that died unasked, could "
                                "not boot, or were killed past their shutdown deadline",
                                labels=["role", "reason"])
    for role in ("worker", "agent", "spare"):
        for reason in EXIT_REASONS:
            exits.add_metric([role, reason], master.exits.get(role, {}).get(reason, 0))
    reloads = CounterMetricFamily("pyresty_reloads", "Reloads by outcome", labels=["outcome"])
    for outcome in RELOAD_OUTCOMES:
        reloads.add_metric([outcome], master.reloads.get(outcome, 0))
    yield from (exits, reloads)


def _shared(workers: Sequence[Row]) -> Iterator[Metric]:
    dicts: dict[str, dict[str, int]] = {}
    for row in workers:
        dicts.update({name: dict(figures) for name, figures in row.shared.items()})
    if not dicts:
        return
    families = {
        "capacity": GaugeMetricFamily("pyresty_shared_dict_capacity_bytes", "Configured capacity",
                                      labels=["dict"]),
        "used": GaugeMetricFamily("pyresty_shared_dict_used_bytes", "Bytes in use", labels=["dict"]),
        "keys": GaugeMetricFamily("pyresty_shared_dict_keys", "Keys stored", labels=["dict"]),
        "evictions": CounterMetricFamily("pyresty_shared_dict_evictions", "LRU evictions",
                                         labels=["dict"]),
    }
    for name, figures in sorted(dicts.items()):
        for key, family in families.items():
            if key in figures:
                family.add_metric([name], figures[key])
    yield from families.values()


def _limits(workers: Sequence[Row]) -> Iterator[Metric]:
    """limit_req/limit_conn/limit_count decisions per zone, summed over the workers."""
    totals: Counter[tuple[str, str]] = Counter()
    for row in workers:
        for zone, counts in row.limits.items():
            for result, n in counts.items():
                totals[(zone, result)] += n
    if not totals:
        return
    family = CounterMetricFamily("pyresty_limit_requests", "Requests decided by a limit zone",
                                 labels=["zone", "result"])
    for (zone, result), n in sorted(totals.items()):
        family.add_metric([zone, result], n)
    yield family


def _peers(rows: Sequence[Row]) -> Iterator[Metric]:
    """Health and load of every upstream peer (the newest generation's view)."""
    peers = peer_rows(rows)
    if not peers:
        return
    labels = ["upstream", "peer"]
    healthy = GaugeMetricFamily("pyresty_upstream_peer_healthy",
                                "1 while no worker avoids the peer for failed active health checks",
                                labels=labels)
    unhealthy = GaugeMetricFamily("pyresty_upstream_peer_unhealthy_workers",
                                  "Workers whose active-check verdict for the peer is down",
                                  labels=labels)
    failed = GaugeMetricFamily("pyresty_upstream_peer_failed_checks",
                               "Consecutive failed active health checks", labels=labels)
    down = GaugeMetricFamily("pyresty_upstream_peer_down_workers",
                             "Workers whose passive health (max_fails) keeps the peer out now",
                             labels=labels)
    disabled = CounterMetricFamily("pyresty_upstream_peer_disabled",
                                   "Times passive health took the peer out, summed over workers",
                                   labels=labels)
    active = GaugeMetricFamily("pyresty_upstream_peer_active_requests",
                               "Requests in flight to the peer", labels=labels)
    for peer in peers:
        at = [peer.upstream, peer.peer]
        healthy.add_metric(at, 1 if peer.healthy else 0)
        unhealthy.add_metric(at, peer.unhealthy)
        failed.add_metric(at, peer.check_fails)
        down.add_metric(at, peer.down)
        disabled.add_metric(at, peer.disabled)
        active.add_metric(at, peer.active)
    yield from (healthy, unhealthy, failed, down, disabled, active)
# upstream counters (upstream/pool.py stats()): name -> (family, help, label of the key)
_UPSTREAM_FAMILIES = {
    "requests": ("pyresty_upstream_requests", "Tries sent to an upstream peer"),
    "retries": ("pyresty_upstream_retries", "Tries that followed a failed one"),
    "resends": ("pyresty_upstream_resends",
                "Requests sent again on a new connection after a reused one failed"),
    "pool_hits": ("pyresty_upstream_pool_hits", "Requests that got an idle kept-alive connection"),
    "pool_misses": ("pyresty_upstream_pool_misses", "New upstream connections"),
}


def _upstreams(workers: Sequence[Row]) -> Iterator[Metric]:
    """Per upstream (or cosocket pool) and peer, summed over the workers."""
    totals: Counter[tuple[str, str, str]] = Counter()
    for row in workers:
        for key, counts in row.upstreams.items():
            name, _, peer = key.partition(" ")
            for counter, n in counts.items():
                totals[(name, peer, counter)] += n
    if not totals:
        return
    families = {counter: CounterMetricFamily(family, text, labels=["upstream", "peer"])
                for counter, (family, text) in _UPSTREAM_FAMILIES.items()}
    failures = CounterMetricFamily("pyresty_upstream_failures", "Failed tries by kind",
                                   labels=["upstream", "peer", "kind"])
    for (name, peer, counter), n in sorted(totals.items()):
        if counter.startswith("failed_"):
            failures.add_metric([name, peer, counter[len("failed_"):]], n)
        elif counter in families:
            families[counter].add_metric([name, peer], n)
    yield from families.values()
    yield failures


# table.COUNTERS: (metric name, help, counter or gauge)
COUNTERS: dict[str, tuple[str, str, bool]] = {
    "access_log_errors": ("pyresty_access_log_errors", "Access-log writes that failed (lines lost)",
                          True),
    "accept_errors": ("pyresty_accept_errors", "accept() failures for want of file descriptors "
                      "(EMFILE/ENFILE)", True),
    "worker_connections_full": ("pyresty_worker_connections_full", "Times accepting paused: "
                                "worker_connections reached and no idle connection to close", True),
    "idle_closed_for_room": ("pyresty_idle_closed_for_room", "Idle keepalive connections closed "
                             "to make room (worker_connections or descriptors)", True),
    "loop_stalls": ("pyresty_loop_stalls", "Event-loop stalls longer than loop_block_warn", True),
    "loop_stall_longest_recent": ("pyresty_loop_stall_longest_seconds",
                                  "Longest event-loop stall of the last 5 minutes", False),
    "timers_refused": ("pyresty_timers_refused", "Timers refused: max_pending_timers reached",
                       True),
    "timers_waited": ("pyresty_timers_waited", "Due timers that waited for a free slot: "
                      "max_running_timers reached", True),
}


def _counters(workers: Sequence[Row]) -> Iterator[Metric]:
    """Fault counters and gauges per process (only those some process reported)."""
    for name, (metric, help_text, is_counter) in COUNTERS.items():
        kind = CounterMetricFamily if is_counter else GaugeMetricFamily
        family = kind(metric, help_text, labels=["worker", "generation"])
        seen = False
        for row in workers:
            if name in row.counters:
                seen = True
                family.add_metric([str(row.id) if row.id is not None else "agent",
                                   str(row.generation)], row.counters[name])
        if seen:
            yield family


# the ws_* counters that have families of their own; the rest count server closes
_WS_FAMILIES = ("ws_messages_in", "ws_messages_out", "ws_bytes_in", "ws_bytes_out",
                "ws_accepted", "ws_refused", "ws_tunnel_messages_in", "ws_tunnel_messages_out",
                "ws_tunnel_bytes_in", "ws_tunnel_bytes_out")


def _websockets(workers: Sequence[Row]) -> Iterator[Metric]:
    """Open WebSockets per worker; messages, bytes, handshakes and closes summed."""
    open_ = GaugeMetricFamily("pyresty_websockets", "Open WebSockets", labels=["worker", "generation"])
    for row in workers:
        if row.websockets is not None:
            open_.add_metric([str(row.id) if row.id is not None else "agent", str(row.generation)],
                             row.websockets)
    yield open_
    totals: Counter[str] = Counter()
    for row in workers:
        totals.update(row.websocket)
    messages = CounterMetricFamily("pyresty_websocket_messages", "WebSocket messages",
                                   labels=["direction"])
    sizes = CounterMetricFamily("pyresty_websocket_bytes", "WebSocket bytes on the wire",
                                labels=["direction"])
    handshakes = CounterMetricFamily("pyresty_websocket_handshakes", "WebSocket handshakes",
                                     labels=["result"])
    closes = CounterMetricFamily("pyresty_websocket_server_closes",
                                 "WebSockets closed by the server for a reason",
                                 labels=["reason"])
    tunnel_messages = CounterMetricFamily(
        "pyresty_websocket_tunnel_messages", "Proxied WebSocket messages (in: from clients)",
        labels=["direction"])
    tunnel_sizes = CounterMetricFamily(
        "pyresty_websocket_tunnel_bytes", "Proxied WebSocket bytes on the wire (in: from clients)",
        labels=["direction"])
    for direction in ("in", "out"):
        messages.add_metric([direction], totals[f"ws_messages_{direction}"])
        sizes.add_metric([direction], totals[f"ws_bytes_{direction}"])
        tunnel_messages.add_metric([direction], totals[f"ws_tunnel_messages_{direction}"])
        tunnel_sizes.add_metric([direction], totals[f"ws_tunnel_bytes_{direction}"])
    for result in ("accepted", "refused"):
        handshakes.add_metric([result], totals[f"ws_{result}"])
    for key, n in sorted(totals.items()):
        if key not in _WS_FAMILIES:
            closes.add_metric([key[3:]], n)
    yield from (messages, sizes, tunnel_messages, tunnel_sizes, handshakes, closes)


def _tls_and_h2(workers: Sequence[Row]) -> Iterator[Metric]:
    """TLS handshakes by version and failures; HTTP/2 streams, floods, connections by protocol."""
    handshakes: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for row in workers:
        handshakes.update(row.tls)
        failed.update(row.tls_failures)
    if handshakes or failed:
        family = CounterMetricFamily("pyresty_tls_handshakes", "Completed TLS handshakes",
                                     labels=["version"])
        for version, n in sorted(handshakes.items()):
            family.add_metric([version], n)
        yield family
        failures = CounterMetricFamily("pyresty_tls_handshake_failures",
                                       "TLS handshakes that failed, by reason (OpenSSL's, or "
                                       "eof, reset, timeout)", labels=["reason"])
        for reason, n in sorted(failed.items()):
            failures.add_metric([reason], n)
        yield failures
    protocols = GaugeMetricFamily("pyresty_connections_by_protocol",
                                  "Open client connections by protocol", labels=["protocol"])
    for protocol in ("http/1.1", "h2"):
        protocols.add_metric([protocol], sum(r.protocols.get(protocol, 0) for r in workers))
    streams = CounterMetricFamily("pyresty_http2_streams", "HTTP/2 streams opened by clients")
    streams.add_metric([], sum(r.h2_streams for r in workers))
    floods = CounterMetricFamily("pyresty_http2_floods",
                                 "HTTP/2 connections closed with ENHANCE_YOUR_CALM (floods)")
    floods.add_metric([], sum(r.h2_floods for r in workers))
    yield from (protocols, streams, floods)


def render(rows: Sequence[Row], draining: bool = False) -> bytes:
    """Prometheus text exposition of ``rows``."""
    registry = CollectorRegistry()
    registry.register(_RowsCollector(rows, draining))  # type: ignore[arg-type]
    return generate_latest(registry)
