"""Static files under a location's ``root``, served the way nginx serves them.

Theory of operation: ``serve`` is a content handler. Everything it decides is
in plain functions below so it can be tested without a socket:

- ``normalize_path`` / ``open_file``: request path -> an open regular file
  under ``root``, or the status that refuses it;
- ``make_etag``, ``content_type``: response header values.

The HTTP semantics are not here but in ``pyresty.http``, where proxied and
handler responses can use them too: ``dates`` (Last-Modified),
``conditional`` (If-Match, If-None-Match, If-Modified-Since,
If-Unmodified-Since -> proceed, 304 or 412, RFC 9110 §13.2.2) and ``ranges``
(Range and If-Range -> 200, 206 with one span or ``multipart/byteranges``,
or 416 with ``Content-Range: bytes */<size>``, RFC 9110 §14).

Rules:

- ``root`` maps the whole path, as nginx's ``root`` does: location ``/static/``
  with root ``/srv/public`` serves ``/static/a.css`` from
  ``/srv/public/static/a.css``.
- The path arrives percent-decoded once. It is normalised here like nginx's
  URI parser does: empty and ``.`` segments dropped, ``..`` removes the segment
  before it, and a ``..`` that would climb above the root is a 400 (nginx
  answers 400 for ``/../x``). A NUL byte is a 400 too. ``%252e%252e`` arrives as
  the literal segment ``%2e%2e`` and stays a (missing) file name.
- Symlinks are followed, but the file's real path must lie inside the real
  root, else 403. The real path is then opened with ``O_NOFOLLOW`` and the
  *opened descriptor* is checked (``fstat``) to be a regular file or a
  directory, so a file swapped after the check cannot be served as something
  else. (A directory *inside the path* swapped for a symlink between the
  check and ``open`` is not caught; only someone who can write under the root
  can try that.)
- ``O_NONBLOCK`` on open: opening a FIFO someone left under the root must not
  block the worker; FIFOs, sockets and devices are then refused with 404, as
  nginx does ("is not a regular file").
"""
from __future__ import annotations

import errno
import mimetypes
import os
import secrets
import stat
import time
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

from pyresty.config.model import Location
from pyresty.http.conditional import Precondition, evaluate_preconditions
from pyresty.http.dates import format_http_date
from pyresty.http.ranges import (
    ByteRange, evaluate_range, multipart_byteranges, unsatisfied_range,
)

__all__ = ["NotServed", "content_type", "make_etag", "normalize_path", "open_file", "serve"]


class StaticRequest(Protocol):
    """What ``serve`` needs from the server's ``Request``."""

    method: str
    path: str
    uri: str
    status: int

    @property
    def headers(self) -> Any: ...          # case-insensitive .get(name)

    @property
    def headers_out(self) -> Any: ...      # case-insensitive, settable

    def exit(self, status: int) -> NoReturn: ...

    def redirect(self, url: str, status: int = ...) -> Any: ...

    async def print(self, *parts: Any) -> None: ...

    async def flush(self) -> None: ...

    async def send_file(self, file: Any, offset: int, count: int) -> None: ...


class NotServed(Exception):
    """The path cannot be served; ``status`` says why.

    400 bad path (NUL, ``..`` above root), 403 forbidden (outside the root,
    permission denied, directory without index), 404 missing, and 301: the
    path names a directory and lacks its trailing slash.
    """

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# --- paths -------------------------------------------------------------------

def normalize_path(path: str) -> str:
    """Collapse ``//``, ``.`` and ``..`` in a decoded absolute path.

    A trailing slash is kept (also the one ``/.`` and ``/..`` imply), because it
    selects the directory index. Raises ``NotServed(400)`` for a NUL byte, a
    path not starting with ``/``, or a ``..`` that climbs above ``/``.
    """
    if "\0" in path or not path.startswith("/"):
        raise NotServed(400)
    if "/." not in path and "//" not in path:
        return path
    raw = path.split("/")
    segments: list[str] = []
    for segment in raw[1:]:
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if not segments:
                raise NotServed(400)
            segments.pop()
        else:
            segments.append(segment)
    if not segments:
        return "/"
    slash = "/" if raw[-1] in ("", ".", "..") else ""
    return "/" + "/".join(segments) + slash


_real_roots: dict[str, str] = {}


def _real_root(root: str) -> str:
    """The root's real path with a trailing slash, resolved once per process."""
    real = _real_roots.get(root)
    if real is None:
        real = os.path.realpath(root)
        real = _real_roots[root] = real if real.endswith("/") else real + "/"
    return real


# nginx's ngx_http_static_handler: these are "not found", these "forbidden";
# anything else is a server error (the OSError propagates: 500 and a traceback).
_NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG})
_FORBIDDEN_ERRNOS = frozenset({errno.EPERM, errno.EACCES, errno.EMLINK, errno.ELOOP})

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_inside(real_root: str, fs_path: str) -> tuple[int, os.stat_result]:
    """Open ``fs_path`` if its real path lies inside ``real_root``."""
    real = os.path.realpath(fs_path)
    if not (real + "/").startswith(real_root):
        raise NotServed(403)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise _refusal(exc) from exc
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise NotServed(404)
    return fd, st


def _refusal(exc: OSError) -> Exception:
    if exc.errno in _NOT_FOUND_ERRNOS:
        return NotServed(404)
    if exc.errno in _FORBIDDEN_ERRNOS:
        return NotServed(403)
    return exc


def open_file(root: str, path: str,
              index: Sequence[str] = ("index.html",)) -> tuple[int, os.stat_result, str]:
    """Open the regular file ``path`` names under ``root``.

    Returns ``(fd, stat, name)``; ``name`` is the file's name (the index file's
    for a directory), for its Content-Type; the caller closes ``fd``. A path
    ending in ``/`` is a directory: its first existing ``index`` file, else 403
    (404 when the directory itself is missing), as nginx without ``autoindex``.

    Raises ``NotServed`` (see its statuses) or ``OSError`` for unexpected errors.
    """
    norm = normalize_path(path)
    real_root = _real_root(root)
    base = root.rstrip("/") + norm
    if norm.endswith("/"):
        return _open_index(real_root, base, index)
    fd, st = _open_inside(real_root, base)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise NotServed(301)
    return fd, st, norm.rpartition("/")[2]


def _open_index(real_root: str, directory: str,
                index: Sequence[str]) -> tuple[int, os.stat_result, str]:
    for name in index:
        try:
            fd, st = _open_inside(real_root, directory + name)
        except NotServed as refusal:
            if refusal.status == 404:
                continue
            raise
        if stat.S_ISREG(st.st_mode):
            return fd, st, name
        os.close(fd)  # an index name that is a directory: try the next one
    fd, st = _open_inside(real_root, directory)  # 404 if missing, 403 if outside
    os.close(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise NotServed(404)
    raise NotServed(403)


# --- response header values --------------------------------------------------

def make_etag(mtime: int, size: int) -> str:
    """nginx's strong ETag: ``"<mtime hex>-<size hex>"``."""
    return f'"{mtime:x}-{size:x}"'


# Types Python's table lacks or spells differently from nginx's mime.types.
MODERN_TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".webmanifest": "application/manifest+json",
    ".md": "text/markdown",
}
DEFAULT_TYPE = "application/octet-stream"

# Python's built-in table only (MimeTypes() ignores /etc/mime.types), so the
# answer is the same on every machine.
_TYPES = {ext.lower(): t for ext, t in mimetypes.MimeTypes().types_map[True].items()}
_TYPES.update(MODERN_TYPES)


def content_type(name: str) -> str:
    """Content-Type by (case-insensitive) extension; no charset, as nginx."""
    dot = name.rfind(".")
    if dot <= 0:  # no extension, or a dot file such as ".htaccess"
        return DEFAULT_TYPE
    return _TYPES.get(name[dot:].lower(), DEFAULT_TYPE)


# --- the handler -------------------------------------------------------------

async def serve(r: StaticRequest, location: Location) -> None:
    """Answer ``r`` from ``location.root``: 200, 206, 301, 304, 4xx.

    Every refusal goes through ``r.exit(status)`` (which does not return),
    with any header it needs (Allow, Content-Range, ETag) already set in
    ``r.headers_out``. Raises ``ValueError`` when the location has no root
    and ``OSError`` for file errors other than "missing"/"forbidden".
    """
    if r.method != "GET" and r.method != "HEAD":
        r.headers_out["allow"] = "GET, HEAD"
        r.exit(405)
    if not location.root:
        raise ValueError(f"{location.key}: static files need a root")
    try:
        fd, st, name = open_file(location.root, r.path, location.index)
    except NotServed as refusal:
        if refusal.status != 301:
            r.exit(refusal.status)
        r.redirect(_with_slash(r), 301)
        return
    with os.fdopen(fd, "rb", buffering=0) as file:  # closed whatever happens below
        await _respond(r, file, st, name)


async def _respond(r: StaticRequest, file: Any, st: os.stat_result, name: str) -> None:
    size = st.st_size
    mtime = int(st.st_mtime)
    etag = make_etag(mtime, size)
    out = r.headers_out
    out["last-modified"] = format_http_date(mtime)
    out["etag"] = etag
    headers = r.headers
    now = time.time()   # HTTP dates are wall-clock time
    status = evaluate_preconditions(
        r.method, etag=etag, last_modified=mtime, now=now,
        if_match=headers.get("if-match"), if_none_match=headers.get("if-none-match"),
        if_modified_since=headers.get("if-modified-since"),
        if_unmodified_since=headers.get("if-unmodified-since"))
    if status is not Precondition.PROCEED:
        r.exit(int(status))
    ctype = content_type(name)
    out["content-type"] = ctype
    out["accept-ranges"] = "bytes"
    ranges = evaluate_range(r.method, headers.get("range"), headers.get("if-range"),
                            size=size, etag=etag, last_modified=mtime, now=now)
    if ranges.status == 416:
        out["content-range"] = unsatisfied_range(size)
        r.exit(416)
    if ranges.multipart:
        await _send_multipart(r, file, ranges.spans, size, ctype)
    elif ranges.spans:
        span = ranges.spans[0]
        r.status = 206
        out["content-range"] = span.content_range(size)
        await r.send_file(file, span.first, span.length)
    else:
        r.status = 200
        await r.send_file(file, 0, size)


async def _send_multipart(r: StaticRequest, file: Any, spans: Sequence[ByteRange], size: int,
                          ctype: str) -> None:
    """206 ``multipart/byteranges``: each part's head, then its bytes by sendfile."""
    body = multipart_byteranges(spans, size, ctype, secrets.token_hex(10))
    r.status = 206
    out = r.headers_out
    out["content-type"] = body.content_type
    out["content-length"] = str(body.length)
    for head, span in body.parts:
        await r.print(head)
        await r.flush()   # the head goes out before the file's bytes
        await r.send_file(file, span.first, span.length)
    await r.print(body.closing)


def _with_slash(r: StaticRequest) -> str:
    """The directory's URL with its trailing slash, keeping the query string."""
    path = quote(normalize_path(r.path), safe="/!$&'()*+,;=:@") + "/"
    _, question, query = r.uri.partition("?")
    return path + question + query
