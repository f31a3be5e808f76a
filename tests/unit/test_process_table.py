"""The process table's rows, and /metrics rendered from rows alone (no master)."""
from __future__ import annotations

import os
import socket

import pytest

from pyresty.runtime.identity import Role
from pyresty.supervisor.channel import Stats
from pyresty.supervisor.control import format_peers, format_table
from pyresty.supervisor.metrics import render
from pyresty.supervisor.table import Child, PeerRow, Row, State, child_rows, peer_rows

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def channel():
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def _child(channel, worker_id, generation, state, **kw) -> Child:
    child = Child(os.getpid(), Role.AGENT if worker_id is None else Role.WORKER, worker_id,
                  generation, channel, 0.0, 10.0, state=state, **kw)
    return child


def test_rows_show_states_figures_and_shutdown_age(channel) -> None:
    stats = Stats(state="serving", timers_pending=2, timers_running=1,
                  server={"connections": 3, "requests": 40, "active_requests": 1},
                  shared={"cache": {"keys": 5}})
    children = [
        _child(channel, 1, 2, State.SERVING, stats=stats),
        _child(channel, 0, 2, State.STARTING),
        _child(channel, 0, 1, State.SHUTTING_DOWN, stop_started=10.0),
        _child(channel, None, 2, State.SERVING),
    ]
    rows = child_rows(children, now=12.5, draining_generation=None)
    assert [(r.role, r.id, r.generation, r.state) for r in rows] == [
        ("worker", 0, 1, "shutting down for 2.5 s"),
        ("worker", 0, 2, "starting"),
        ("agent", None, 2, "serving"),
        ("worker", 1, 2, "serving"),
    ]
    busy = rows[3]
    assert (busy.connections, busy.requests, busy.active_requests) == (3, 40, 1)
    assert (busy.timers_pending, busy.timers_running, busy.shared) == (2, 1, {"cache": {"keys": 5}})
    assert rows[1].connections == 0 and rows[1].rss > 0


def test_serving_rows_of_the_draining_generation_say_draining(channel) -> None:
    children = [_child(channel, 0, 2, State.SERVING), _child(channel, 0, 1, State.SERVING),
                _child(channel, 1, 2, State.STARTING)]
    states = [r.state for r in child_rows(children, now=0.0, draining_generation=2)]
    assert states == ["serving", "draining", "starting"]


def test_rows_survive_json_and_the_status_table() -> None:
    master = Row("master", None, 100, 1, "serving", rss=1 << 20)
    worker = Row("worker", 0, 101, 1, "serving", rss=2 << 20, connections=3, requests=2,
                 active_requests=0, websockets=1, timers_pending=3, timers_running=0,
                 protocols={"http/1.1": 1, "h2": 2})
    assert "connections" not in master.to_json()
    assert [Row.from_json(r.to_json()) for r in (master, worker)] == [master, worker]
    lines = format_table([master, worker]).splitlines()
    assert lines[0].split()[:5] == ["ROLE", "ID", "PID", "GEN", "STATE"]
    assert lines[0].split()[5:8] == ["CONNS", "WS", "H1/H2"]
    assert lines[1].split() == ["master", "-", "100", "1", "serving", "-", "-", "-", "-", "-", "1.0M",
                                "-"]
    assert lines[2].split() == ["worker", "0", "101", "1", "serving", "3", "1", "1/2", "2", "3/0",
                                "2.0M", "-"]


def test_the_status_table_shows_the_longest_recent_loop_stall() -> None:
    worker = Row("worker", 0, 101, 1, "serving", rss=2 << 20, connections=1, requests=2,
                 active_requests=0, timers_pending=0, timers_running=0,
                 counters={"loop_stalls": 2, "loop_stall_longest_recent": 5.04})
    assert Row.from_json(worker.to_json()) == worker
    assert format_table([worker]).splitlines()[1].split()[-1] == "5.0s"


def test_metrics_show_tls_handshakes_and_http2_figures() -> None:
    rows = [Row("worker", 0, 101, 1, "serving", connections=3, requests=2, active_requests=0,
                timers_pending=0, timers_running=0, protocols={"http/1.1": 1, "h2": 2},
                tls={"TLSv1.3": 5, "TLSv1.2": 1},
                tls_failures={"unknown_ca": 1, "eof": 1}, h2_streams=40, h2_floods=1),
            Row("worker", 1, 102, 1, "serving", connections=1, requests=2, active_requests=0,
                timers_pending=0, timers_running=0, protocols={"h2": 1},
                tls={"TLSv1.3": 2}, tls_failures={"eof": 2}, h2_streams=2)]
    text = render(rows).decode()
    assert 'pyresty_tls_handshakes_total{version="TLSv1.3"} 7.0' in text
    assert 'pyresty_tls_handshakes_total{version="TLSv1.2"} 1.0' in text
    assert 'pyresty_tls_handshake_failures_total{reason="eof"} 3.0' in text
    assert 'pyresty_tls_handshake_failures_total{reason="unknown_ca"} 1.0' in text
    assert 'pyresty_connections_by_protocol{protocol="h2"} 3.0' in text
    assert 'pyresty_connections_by_protocol{protocol="http/1.1"} 1.0' in text
    assert "pyresty_http2_streams_total 42.0" in text
    assert "pyresty_http2_floods_total 1.0" in text


def test_metrics_render_the_rows_they_are_given() -> None:
    rows = [
        Row("master", None, 100, 2, "draining", rss=1000),
        Row("worker", 0, 101, 2, "draining", rss=2000, connections=4, requests=9,
            active_requests=1, timers_pending=2, timers_running=1,
            shared={"cache": {"capacity": 4096, "used": 100, "keys": 3, "evictions": 1}}),
        Row("worker", 0, 99, 1, "shutting down for 1.0 s", rss=3000, connections=1, requests=5,
            active_requests=1, timers_pending=0, timers_running=0),
    ]
    text = render(rows, draining=True).decode()
    assert 'pyresty_requests_total{generation="2",worker="0"} 9.0' in text
    assert 'pyresty_connections{generation="1",worker="0"} 1.0' in text
    assert 'pyresty_workers{generation="1",state="shutting down"} 1.0' in text
    assert 'pyresty_workers{generation="2",state="draining"} 1.0' in text
    assert 'pyresty_process_resident_bytes{generation="2",role="master",worker="-"} 1000.0' in text
    assert 'pyresty_shared_dict_keys{dict="cache"} 3.0' in text
    assert "pyresty_draining 1.0" in text
    assert "pyresty_draining 0.0" in render(rows[:1]).decode()


def _peer(healthy: int, fails: int = 0, down: int = 0, active: int = 0, disabled: int = 0) -> dict:
    return {"healthy": healthy, "check_fails": fails, "down": down, "active": active,
            "disabled": disabled}


PEER_ROWS = [
    Row("master", None, 100, 2, "serving"),
    # the old generation's view is not counted: its config may list other peers
    Row("worker", 0, 99, 1, "shutting down for 1.0 s",
        peers={"backend": {"10.0.0.1:80": _peer(1), "10.0.0.9:80": _peer(1)}}),
    Row("worker", 0, 101, 2, "serving",
        peers={"backend": {"10.0.0.1:80": _peer(0, 3, active=2),
                               "10.0.0.2:80": _peer(1, down=1, disabled=2)}}),
    Row("worker", 1, 102, 2, "serving",
        peers={"backend": {"10.0.0.1:80": _peer(1, 2, active=1),   # not refreshed yet
                               "10.0.0.2:80": _peer(1, disabled=1)}}),
    Row("agent", None, 103, 2, "serving", peers={"backend": {"10.0.0.1:80": _peer(0, 3)}}),
]


def test_peer_rows_sum_the_newest_generations_workers() -> None:
    peers = peer_rows(PEER_ROWS)
    assert peers == [PeerRow("backend", "10.0.0.1:80", workers=2, unhealthy=1, check_fails=3,
                             down=0, active=3, disabled=0),
                     PeerRow("backend", "10.0.0.2:80", workers=2, unhealthy=0, check_fails=0,
                             down=1, active=0, disabled=3)]
    assert [p.healthy for p in peers] == [False, True]
    assert [PeerRow.from_json(p.to_json()) for p in peers] == peers
    assert peers[0].to_json()["healthy"] is False
    assert peer_rows(PEER_ROWS[:1]) == []
    lines = format_peers(peers).splitlines()
    assert lines[0].split() == ["UPSTREAM", "PEER", "HEALTH", "FAILED", "CHECKS", "PASSIVE",
                                "DOWN", "ACTIVE"]
    assert lines[1].split() == ["backend", "10.0.0.1:80", "down", "1/2", "3", "0/2", "3"]
    assert lines[2].split() == ["backend", "10.0.0.2:80", "up", "0", "1/2", "0"]


def test_metrics_show_each_peers_health() -> None:
    text = render(PEER_ROWS).decode()
    assert 'pyresty_upstream_peer_healthy{peer="10.0.0.1:80",upstream="backend"} 0.0' in text
    assert 'pyresty_upstream_peer_healthy{peer="10.0.0.2:80",upstream="backend"} 1.0' in text
    assert 'pyresty_upstream_peer_unhealthy_workers{peer="10.0.0.1:80",upstream="backend"} 1.0' \
        in text
    assert 'pyresty_upstream_peer_failed_checks{peer="10.0.0.1:80",upstream="backend"} 3.0' in text
    assert 'pyresty_upstream_peer_down_workers{peer="10.0.0.2:80",upstream="backend"} 1.0' in text
    assert 'pyresty_upstream_peer_disabled_total{peer="10.0.0.2:80",upstream="backend"} 3.0' in text
    assert 'pyresty_upstream_peer_active_requests{peer="10.0.0.1:80",upstream="backend"} 3.0' \
        in text
    assert "10.0.0.9:80" not in text
    assert "pyresty_upstream_peer" not in render(PEER_ROWS[:1]).decode()
