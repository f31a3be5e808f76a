"""HTTP/1.1 framing lives in ``pyresty/http/`` (issue 11's done-means), checked
from the source (AST), not by importing it.

Every string and bytes literal outside ``pyresty/http/`` (docstrings aside:
they are prose) is searched for the bytes that frame an HTTP/1.1 message: a
version in a start line, the empty line that ends a head, a chunk size line or
the last chunk, and the framing fields as they are written on the wire. A
module that needs one of them calls the HTTP/1.1 layer instead; the exceptions
below are the only ones, each with its reason, and each must still need it.
"""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pyresty"

pytestmark = pytest.mark.timeout(60)

FRAMING = {
    # a status line begins with it, a request line ends with it
    "a start line's version": re.compile(r"^HTTP/1\.\d |HTTP/1\.\d\r\n"),
    "the end of a head (or the last chunk)": re.compile(r"\r\n\r\n"),
    "a chunk size line": re.compile(r"%x\r\n|\{:x\}\r\n"),
    "a Transfer-Encoding field": re.compile(r"Transfer-Encoding"),
    "a Content-Length field line": re.compile(r"Content-Length:"),
}

EXCEPTIONS = {
    # item 7 of issue 11: the supervisor imports neither http/ nor server/, so the
    # status listener (GET /status, /metrics) reads and writes its heads itself
    "supervisor/control.py": "the status listener's one-request answers",
    # not HTTP/1.1: the 24 bytes that open an HTTP/2 connection (RFC 9113 §3.4),
    # matched to choose between the two protocols on a cleartext listener
    "server/negotiation.py": "the HTTP/2 connection preface",
}


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def _fstring_text(node: ast.JoinedStr) -> str:
    """An f-string as its literal parts with ``{:spec}`` for each value."""
    text = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            text.append(str(part.value))
        elif isinstance(part, ast.FormattedValue):
            spec = part.format_spec
            text.append("{:" + _fstring_text(spec) + "}" if isinstance(spec, ast.JoinedStr)
                        else "{}")
    return "".join(text)


def framing_in(source: str, filename: str = "<source>") -> list[tuple[int, str, str]]:
    """``(line, what, literal)`` for every literal of ``source`` that frames HTTP/1.1."""
    tree = ast.parse(source, filename)
    skip = docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(part) for part in ast.walk(node) if part is not node)
            value: object = _fstring_text(node)
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            value = node.value
        else:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            continue
        for what, pattern in FRAMING.items():
            if pattern.search(value):
                hits.append((node.lineno, what, repr(value)))
    return hits


def framing_outside_http() -> dict[str, list[tuple[int, str, str]]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name.startswith("http/"):
            continue
        hits = framing_in(path.read_text(), str(path))
        if hits:
            found[name] = hits
    return found


def test_no_http11_framing_outside_the_http_layer() -> None:
    found = framing_outside_http()
    stray = {name: hits for name, hits in found.items() if name not in EXCEPTIONS}
    assert not stray, "HTTP/1.1 framing outside pyresty/http/ (use http/client.py or " \
        "http/response.py):\n" + "\n".join(
            f"  pyresty/{name}:{line}: {what}: {literal}"
            for name, hits in stray.items() for line, what, literal in hits)


def test_every_exception_is_still_needed() -> None:
    found = framing_outside_http()
    assert set(EXCEPTIONS) <= set(found), \
        f"no longer frames HTTP/1.1, drop it from EXCEPTIONS: {sorted(set(EXCEPTIONS) - set(found))}"


@pytest.mark.parametrize("literal, what", [
    ('b"0\\r\\n\\r\\n"', "the end of a head (or the last chunk)"),
    ('b"%x\\r\\n%b\\r\\n" % (len(data), data)', "a chunk size line"),
    ('f"{len(data):x}\\r\\n"', "a chunk size line"),
    ('head[:-2] + b"Upgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n"',
     "the end of a head (or the last chunk)"),
    ('f"HTTP/1.1 {status}\\r\\n"', "a start line's version"),
    ('b" HTTP/1.0\\r\\n"', "a start line's version"),
    ('b"Transfer-Encoding: chunked\\r\\n"', "a Transfer-Encoding field"),
    ('b"Content-Length: %d\\r\\n" % n', "a Content-Length field line"),
])
def test_the_checker_sees_framing_in_literals(literal: str, what: str) -> None:
    hits = framing_in(f"x = {literal}\n")
    assert what in [found for _, found, _ in hits]


def test_the_checker_reads_past_prose_and_lookups() -> None:
    source = textwrap.dedent('''
        """Speaks HTTP/1.1 with Transfer-Encoding: chunked."""
        class C:
            """An HTTP/1.1 connection; heads end at \\r\\n\\r\\n."""
            def f(self, r):
                """Reads Content-Length: N."""
                log("a WebSocket needs an HTTP/1.1 connection: %s %s HTTP/%s", 1, 2, 3)
                return r.header(b"transfer-encoding"), r.header(b"content-length"), "1.1"
        ''')
    assert framing_in(source) == []
