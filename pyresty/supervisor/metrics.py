"""``/metrics``: Prometheus text built from the figures workers report."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from pyresty.supervisor.master import Master


class _MasterCollector:
    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self):  # type: ignore[no-untyped-def]
        rows = self.master.snapshot()
        workers = [r for r in rows if r["role"] != "master"]
        requests = CounterMetricFamily("pyresty_requests", "Requests handled", labels=["worker", "generation"])
        conns = GaugeMetricFamily("pyresty_connections", "Open client connections",
                                  labels=["worker", "generation"])
        pending = GaugeMetricFamily("pyresty_timers_pending", "Pending timers", labels=["worker", "generation"])
        running = GaugeMetricFamily("pyresty_timers_running", "Running timer callbacks",
                                    labels=["worker", "generation"])
        rss = GaugeMetricFamily("pyresty_process_resident_bytes", "Resident memory",
                                labels=["role", "worker", "generation"])
        for row in workers:
            labels = [str(row["id"]) if row["id"] is not None else "agent", str(row["generation"])]
            requests.add_metric(labels, row.get("requests", 0))
            conns.add_metric(labels, row.get("connections", 0))
            pending.add_metric(labels, row.get("timers_pending", 0))
            running.add_metric(labels, row.get("timers_running", 0))
        for row in rows:
            rss.add_metric([row["role"], "-" if row["id"] is None else str(row["id"]),
                            str(row["generation"])], row["rss"])
        per_gen = GaugeMetricFamily("pyresty_workers", "Worker processes per generation and state",
                                    labels=["generation", "state"])
        counts = Counter((str(r["generation"]), r["state"].split(" for ")[0]) for r in workers)
        for (gen, state), n in sorted(counts.items()):
            per_gen.add_metric([gen, state], n)
        yield from (requests, conns, pending, running, rss, per_gen)
        yield from self._shared(workers)

    def _shared(self, workers):  # type: ignore[no-untyped-def]
        dicts = {}
        for row in workers:
            dicts.update(self.master.children_stats(row["pid"]).get("shared", {}))
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


def render(master: Master) -> bytes:
    registry = CollectorRegistry()
    registry.register(_MasterCollector(master))  # type: ignore[arg-type]
    return generate_latest(registry)
