"""Data-driven system cases, after OpenResty's Test::Nginx.

Much of a server's behaviour is "this config, this request, this answer, these
log lines". A ``Case`` says exactly that; a ``Server`` is the config and files
a group of cases shares. ``cases(server, [...])`` makes one pytest test whose
items are the cases (one item per case and mode, named after the case). ONE
real ``pyresty`` serves the whole group in each mode (see ``case_server`` in
tests/conftest.py): it is started before the group's first case and stopped,
and checked for survivors and unexpected ``[alert]``/``[crit]`` lines, after
its last one.

A case runs like this:

1. note where the error log ends (only lines written from here on are "this
   case's" lines);
2. send the request(s): ``"GET /path"`` strings and ``Req`` objects go on one
   kept-alive connection, one response read after each (``pipelined=True``:
   all sent at once, then read in order); raw ``bytes`` go on a new connection
   and everything is read until the server closes (bounded by ``timeout``),
   then split into responses as far as they are complete;
3. compare: ``status``, ``headers`` and ``body`` (a single value applies to
   every response, a list gives one per response, ``None`` in it: not checked), ``reply_like`` /
   ``reply_unlike`` on the raw bytes received; then wait (bounded) for every
   ``error_log`` pattern among this case's log lines and check that no
   ``no_error_log`` pattern is among them; ``check`` runs last, for what a table
   cannot say;
4. a case with ``shutdown_log`` gets a server of its own, stopped after the
   case; those patterns must be among the lines written while it stopped.

Every mismatch is collected, and a failing case reports its name, the
requests, what came back and its error-log lines.

Header expectations: a string is equal to the (first) value, a list to all
values in order, ``None`` means absent, ``like(regex)`` searches the value,
``ANY`` only asks for presence. Body expectations: ``str``/``bytes`` equal,
``like(regex)`` searched (``body_unlike`` must not match).
"""
from __future__ import annotations

import contextlib
import os
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pytest

from client import Connection, Response, describe, encode_request, parse_responses
from harness import Pyresty, wait_for

COMPILED = "compiled"
INTERPRETED = "interpreted"
BOTH = (COMPILED, INTERPRETED)     # the request path as installed, and its .py source


@dataclass(frozen=True)
class Like:
    """A regular expression an expected value must match (``re.search``)."""
    pattern: str | bytes

    def matches(self, value: str | bytes) -> bool:
        pattern = self.pattern
        if isinstance(value, bytes) and isinstance(pattern, str):
            pattern = pattern.encode()
        return re.search(pattern, value, re.S) is not None  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"like({self.pattern!r})"


def like(pattern: str | bytes) -> Like:
    return Like(pattern)


ANY = Like("")                  # a header that must be present, whatever its value


@dataclass(frozen=True)
class Symlink:
    """A file of a Server that is a symlink to ``target`` (a path in the prefix)."""
    target: str


@dataclass(frozen=True)
class File:
    """A file of a Server with a fixed modification time (so its Last-Modified
    and ETag are known in advance)."""
    content: str | bytes
    mtime: float


@dataclass(frozen=True)
class Server:
    """What a group of cases shares: the config (``{port}``, ``{port2}``,
    ``{port3}``, ``{prefix}`` are filled in), the files of the prefix (handler
    modules as text, dedented; static files as text or bytes; ``Symlink``),
    the modes it runs in, and the ``[alert]``/``[crit]`` lines it may write."""
    config: str
    files: Mapping[str, str | bytes | File | Symlink] = field(default_factory=dict)
    modes: tuple[str, ...] = (COMPILED,)
    expect_log: tuple[str, ...] = ()

    def build(self, prefix: Path) -> Pyresty:
        srv = Pyresty(prefix, self.config, None, self.expect_log)
        for name, content in self.files.items():
            path = prefix / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Symlink):
                path.symlink_to(prefix / content.target)
            elif isinstance(content, File):
                data = content.content
                path.write_bytes(data.encode() if isinstance(data, str) else data)
                os.utime(path, (content.mtime, content.mtime))
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(textwrap.dedent(content))
        return srv

    def start(self, prefix: Path, mode: str) -> Pyresty:
        srv = self.build(prefix)
        interpreted = mode == INTERPRETED
        try:
            srv.start(env={"PYRESTY_PURE_PYTHON": "1" if interpreted else ""})
            if interpreted:
                srv.wait_log(r"\[notice\] .*: request path interpreted")
        except BaseException:
            with contextlib.suppress(AssertionError):   # the start's failure is the one to see
                srv.stop()
            raise
        return srv


@dataclass(frozen=True)
class Req:
    """One request: sent as ``encode_request`` writes it (``Host: 127.0.0.1:<port>``
    added unless given, and Content-Length for a body)."""
    method: str = "GET"
    target: str = "/"
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    body: bytes | str | None = None
    version: str = "1.1"

    @classmethod
    def parse(cls, line: str, headers: Mapping[str, str]) -> Req:
        """``"GET /path"`` or ``"GET /path HTTP/1.0"``."""
        method, target, *rest = line.split()
        version = rest[0].removeprefix("HTTP/") if rest else "1.1"
        return cls(method, target, dict(headers), None, version)

    def encode(self, host: str) -> bytes:
        return encode_request(self.method, self.target, self.headers, self.body, self.version,
                              host)


HeaderValue = Union[str, None, Like, Sequence[str]]
Body = Union[str, bytes, Like]


@dataclass(frozen=True)
class Case:
    name: str
    request: str | Req | bytes | Sequence[str | Req]
    more_headers: Mapping[str, str] = field(default_factory=dict)  # on each "GET /x" request
    pipelined: bool = False
    listen: int = 0                                   # 0: {port}, 1: {port2}, 2: {port3}
    status: int | Sequence[int] | None = None
    headers: Mapping[str, HeaderValue] | Sequence[Mapping[str, HeaderValue]] = field(
        default_factory=dict)
    body: Body | Sequence[Body] | None = None
    body_unlike: str | bytes | None = None
    reply_like: str | bytes | Sequence[str | bytes] = ()   # searched in every byte received
    reply_unlike: str | bytes | Sequence[str | bytes] = ()
    error_log: Sequence[str] = ()
    no_error_log: Sequence[str] = ()
    shutdown_log: Sequence[str] = ()
    check: Callable[[Run], None] | None = None
    timeout: float = 10.0

    @property
    def id(self) -> str:
        """The pytest id: the name with its spaces (and brackets) turned into dashes."""
        return re.sub(r"[\s\[\]]+", "-", self.name).strip("-")

    def requests(self) -> list[Req] | bytes:
        if isinstance(self.request, bytes):
            return self.request
        items = [self.request] if isinstance(self.request, (str, Req)) else list(self.request)
        return [Req.parse(r, self.more_headers) if isinstance(r, str) else r for r in items]


@dataclass
class Run:
    """What one case sent and got: given to ``Case.check`` and to the report."""
    case: Case
    server: Pyresty
    sent: bytes = b""
    reply: bytes = b""
    responses: list[Response] = field(default_factory=list)
    log_from: int = 0

    @property
    def response(self) -> Response:
        return self.responses[0]

    @property
    def log(self) -> str:
        """The error-log lines written since this case began."""
        return self.server.log_text()[self.log_from:]


# -- running ------------------------------------------------------------------

def _each(expected: Any, count: int, what: str, problems: list[str]) -> list[Any] | None:
    """One expectation per response: a list gives them in order, one value is for all."""
    if isinstance(expected, (list, tuple)):
        if len(expected) != count:
            problems.append(f"{what}: {len(expected)} expected, {count} responses came back")
            return None
        return list(expected)
    return [expected] * count


def _compare_headers(i: int, resp: Response, wanted: Mapping[str, HeaderValue],
                     problems: list[str]) -> None:
    for name, want in wanted.items():
        got = resp.headers.get_all(name)
        where = f"response {i + 1} header {name}"
        if want is None:
            if got:
                problems.append(f"{where}: expected absent, got {got}")
        elif isinstance(want, Like):
            if not got or not want.matches(got[0]):
                problems.append(f"{where}: expected {want}, got {got or 'none'}")
        elif isinstance(want, str):
            if not got or got[0] != want:
                problems.append(f"{where}: expected {want!r}, got {got or 'none'}")
        elif got != list(want):
            problems.append(f"{where}: expected {list(want)}, got {got}")


def _compare_body(i: int, resp: Response, want: Body, problems: list[str]) -> None:
    if isinstance(want, Like):
        if not want.matches(resp.body):
            problems.append(f"response {i + 1} body: expected {want}, got {describe(resp.body)}")
        return
    data = want.encode() if isinstance(want, str) else want
    if resp.body != data:
        problems.append(f"response {i + 1} body: expected {describe(data)}, "
                        f"got {describe(resp.body)}")


def _exchange(run: Run, port: int) -> None:
    case = run.case
    requests = case.requests()
    if isinstance(requests, bytes):
        run.sent = requests
        with Connection(port, timeout=case.timeout) as conn:
            conn.sock.sendall(requests)
            run.reply = conn.read_until_close(case.timeout)
        run.responses = parse_responses(run.reply, ["HEAD"] if requests.startswith(b"HEAD ") else [])
        return
    host = f"127.0.0.1:{port}"          # what http.client (and curl) would send
    with Connection(port, timeout=case.timeout) as conn:
        try:
            if case.pipelined:
                run.sent = b"".join(r.encode(host) for r in requests)
                conn.sock.sendall(run.sent)
                for r in requests:
                    run.responses.append(conn.read_response(r.method))
            else:
                for r in requests:
                    data = r.encode(host)
                    run.sent += data
                    conn.sock.sendall(data)
                    run.responses.append(conn.read_response(r.method))
        finally:
            run.reply = bytes(conn.log)


def _patterns(value: str | bytes | Sequence[str | bytes]) -> list[str | bytes]:
    return [value] if isinstance(value, (str, bytes)) else list(value)


def _compare(run: Run, problems: list[str]) -> None:
    case, responses = run.case, run.responses
    n = len(responses)
    if case.status is not None and (wanted := _each(case.status, n, "status", problems)):
        for i, (resp, want) in enumerate(zip(responses, wanted)):
            if resp.status != want:
                problems.append(f"response {i + 1} status: expected {want}, got {resp.status}")
    if case.headers and (hwanted := _each(case.headers, n, "headers", problems)):
        for i, (resp, want) in enumerate(zip(responses, hwanted)):
            if want is not None:
                _compare_headers(i, resp, want, problems)
    if case.body is not None and (bwanted := _each(case.body, n, "body", problems)):
        for i, (resp, want) in enumerate(zip(responses, bwanted)):
            if want is not None:
                _compare_body(i, resp, want, problems)
    if case.body_unlike is not None:
        for i, resp in enumerate(responses):
            if Like(case.body_unlike).matches(resp.body):
                problems.append(f"response {i + 1} body: matches {case.body_unlike!r}, "
                                f"which it must not")
    for pattern in _patterns(case.reply_like):
        if not Like(pattern).matches(run.reply):
            problems.append(f"reply: expected to match {pattern!r}")
    for pattern in _patterns(case.reply_unlike):
        if Like(pattern).matches(run.reply):
            problems.append(f"reply: matches {pattern!r}, which it must not")
    if (case.status is not None or case.headers or case.body is not None) and not responses:
        problems.append("no complete response came back")


def _check_log(run: Run, problems: list[str]) -> None:
    """Required lines may come after the answer (the log phase): wait for them,
    bounded; forbidden ones are checked once the required ones are in."""
    for pattern in run.case.error_log:
        try:
            wait_for(lambda: re.search(pattern, run.log), run.case.timeout,
                     f"error-log line {pattern!r}")
        except AssertionError:
            problems.append(f"error log: no line matches {pattern!r}")
    for pattern in run.case.no_error_log:
        for line in run.log.splitlines():
            if re.search(pattern, line):
                problems.append(f"error log: a forbidden line matches {pattern!r}: {line}")


def report(run: Run, mode: str, problems: list[str]) -> str:
    out = [f"case {run.case.name!r} ({mode}) failed:"]
    out += [f"  - {p}" for p in problems]
    out.append(f"sent to port {run.server.ports[run.case.listen]}:")
    out.append("  " + describe(run.sent, 2000))
    if run.responses:
        for i, resp in enumerate(run.responses):
            out.append(f"response {i + 1}: {describe(resp.raw, 1500)}")
    if not run.responses or isinstance(run.case.request, bytes):
        out.append(f"received ({len(run.reply)} bytes): {describe(run.reply, 2000)}")
    lines = run.log.splitlines()
    out.append(f"error log of this case ({len(lines)} lines):")
    out += [f"  {line}" for line in lines[-60:]]
    return "\n".join(out)


def run_case(case: Case, server: Pyresty, mode: str, private: Callable[[], Pyresty] | None = None
             ) -> Run:
    """Run one case against ``server`` (or, with ``shutdown_log``, a server of
    its own from ``private``); fail with the report when anything differs."""
    if case.shutdown_log:
        assert private is not None
        server = private()
    run = Run(case, server, log_from=len(server.log_text()))
    problems: list[str] = []
    stopped = not case.shutdown_log
    try:
        try:
            _exchange(run, server.ports[case.listen])
        except (OSError, AssertionError) as exc:
            problems.append(f"the exchange failed: {type(exc).__name__}: {exc}")
        else:
            _compare(run, problems)
        _check_log(run, problems)
        if case.check is not None and not problems:
            try:
                case.check(run)
            except AssertionError as exc:
                problems.append(f"check {case.check.__name__}: {exc}")
        if not stopped:
            stopped_from = len(server.log_text())
            stopped = True
            server.stop()
            shutdown = server.log_text()[stopped_from:]
            for pattern in case.shutdown_log:
                if not re.search(pattern, shutdown):
                    problems.append(f"shutdown log: no line matches {pattern!r}")
    finally:
        if not stopped:
            server.stop()
    if problems:
        pytest.fail(report(run, mode, problems), pytrace=False)
    return run


def cases(server: Server, items: Sequence[Case]) -> Callable[..., None]:
    """A pytest test of the ``items``, one item per case and mode, all served by
    one pyresty per mode (the ``case_server`` fixture of tests/conftest.py)."""
    ids = [case.id for case in items]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"two cases with the same name: {duplicates}"

    @pytest.mark.parametrize("case", items, ids=ids)
    @pytest.mark.parametrize("case_server", [(server, mode) for mode in server.modes],
                             ids=list(server.modes), indirect=True, scope="module")
    def test(case: Case, case_server: tuple[Pyresty, str], request: pytest.FixtureRequest) -> None:
        srv, mode = case_server

        def private() -> Pyresty:
            tmp = request.getfixturevalue("tmp_path")
            return server.start(tmp, mode)

        run_case(case, srv, mode, private)

    return test
