"""Run wrk and read its report.

wrk prints, among others (``--latency``)::

      Latency Distribution
         50%  180.00us
         99%    1.20ms
      523456 requests in 10.00s, 60.00MB read
      Socket errors: connect 0, read 50, write 0, timeout 0
      Non-2xx or 3xx responses: 3
    Requests/sec:  52345.60

Missing "Socket errors" / "Non-2xx" lines mean zero.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from servers import Process

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
ERRORS = ("connect", "read", "write", "timeout")


@dataclass
class Result:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    latency_ms: dict[int, float] = field(default_factory=dict)   # percentile -> ms
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERRORS, 0))
    non2xx: int = 0
    output: str = ""

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.values())


def duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match[1]) * UNITS[match[2]]


def parse(output: str) -> Result:
    result = Result(output=output)
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    if match is None:
        raise RuntimeError(f"no request count in wrk output:\n{output}")
    result.requests = int(match[1])
    result.seconds = float(match[2]) * UNITS[match[3]] / 1e3
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result.rps = float(match[1]) if match else 0.0
    for pct, value in re.findall(r"^\s+(\d+)%\s+(\S+)$", output, re.M):
        result.latency_ms[int(pct)] = duration_ms(value)
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      output)
    if match:
        result.errors = {kind: int(n) for kind, n in zip(ERRORS, match.groups())}
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result.non2xx = int(match[1]) if match else 0
    return result


def argv(url: str, seconds: float, threads: int, connections: int,
         cpus: str | None) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--latency", url]
    return ["taskset", "-c", cpus, *cmd] if cpus is not None else cmd


class Load:
    """wrk running in the background (its own process group)."""

    def __init__(self, url: str, seconds: float, log: Path, threads: int = 1,
                 connections: int = 50, cpus: str | None = None) -> None:
        self.seconds = seconds
        self.process = Process(argv(url, seconds, threads, connections, cpus), log)

    def wait(self) -> Result:
        try:
            self.process.popen.wait(self.seconds + 30)
        except subprocess.TimeoutExpired:
            raise RuntimeError("wrk did not finish in time") from None
        finally:
            self.process.stop()
        output = self.process.log.read_text(errors="replace")
        if self.process.popen.returncode != 0:
            raise RuntimeError(f"wrk failed ({self.process.popen.returncode}):\n{output}")
        return parse(output)


def run(url: str, seconds: float, log: Path, threads: int = 1, connections: int = 50,
        cpus: str | None = None) -> Result:
    return Load(url, seconds, log, threads, connections, cpus).wait()
