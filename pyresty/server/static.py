"""Static files under a location's ``root``, served the way nginx serves them.

Theory of operation: ``serve`` is a content handler. Everything it decides is
in plain functions below so it can be tested without a socket:

- ``normalize_path`` / ``open_file``: request path -> an open regular file
  under ``root``, or the status that refuses it;
- ``check_preconditions``: ``If-Match``, ``If-Unmodified-Since``,
  ``If-None-Match``, ``If-Modified-Since`` -> 200, 304 or 412 (RFC 9110 §13.2.2);
- ``select_range`` / ``parse_range``: ``Range`` and ``If-Range`` -> a byte
  span, "whole file", or 416 (RFC 9110 §14);
- ``make_etag``, ``http_date``, ``content_type``: response header values.

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

import datetime
import errno
import mimetypes
import os
import re
import stat
from collections.abc import Sequence
from email.utils import formatdate
from enum import Enum
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

from pyresty.config.model import Location

__all__ = [
    "NoRange", "NotServed", "check_preconditions", "content_type", "http_date",
    "if_range_holds", "make_etag", "normalize_path", "open_file", "parse_http_date",
    "parse_range", "select_range", "serve",
]


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


def http_date(timestamp: float) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7): ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return formatdate(timestamp, usegmt=True)


_DAYS = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAYS = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
_DATE_FORMATS = (
    # IMF-fixdate, then the two obsolete forms recipients must accept (RFC 9110 §5.6.7)
    re.compile(rf"{_DAYS}, (?P<day>\d\d) {_MONTH} (?P<year>\d{{4}}) {_TIME} GMT", re.ASCII),
    re.compile(rf"{_LONG_DAYS}, (?P<day>\d\d)-{_MONTH}-(?P<year>\d\d) {_TIME} GMT", re.ASCII),
    re.compile(rf"{_DAYS} {_MONTH} (?P<day>[ \d]\d) {_TIME} (?P<year>\d{{4}})", re.ASCII),
)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch for an HTTP-date, or ``None`` if it is not one.

    Strict about the three forms of RFC 9110 §5.6.7 (a recipient must ignore
    an invalid date rather than guess). A two-digit rfc850 year more than 50
    years ahead is taken as the past century's, as §5.6.7 requires.
    """
    value = value.strip()
    for form in _DATE_FORMATS:
        m = form.fullmatch(value)
        if m is not None:
            return _timestamp(m)
    return None


def _timestamp(m: re.Match[str]) -> int | None:
    year = int(m["year"])
    if len(m["year"]) == 2:
        this_year = datetime.datetime.now(datetime.timezone.utc).year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    try:
        moment = datetime.datetime(year, _MONTHS.index(m["month"]) + 1, int(m["day"]),
                                   int(m["hour"]), int(m["minute"]), int(m["second"]),
                                   tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return int(moment.timestamp())


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


# --- conditional requests ----------------------------------------------------

_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')


def _etag_listed(field: str, etag: str, *, weak: bool) -> bool:
    """Whether ``etag`` is in an If-Match/If-None-Match list (RFC 9110 §8.8.3.2)."""
    if field.strip() == "*":
        return True
    for tag in _ENTITY_TAG.findall(field):
        if tag.startswith("W/"):
            if weak and tag[2:] == etag:
                return True
        elif tag == etag:
            return True
    return False


def check_preconditions(headers: Any, etag: str, mtime: int) -> int:
    """200 to go on, 304 or 412, for a GET or HEAD (RFC 9110 §13.2.2).

    ``headers`` needs only ``.get(lowercase name)``. If-Match (strong
    comparison) else If-Unmodified-Since can give 412; then If-None-Match
    (weak comparison) else If-Modified-Since can give 304 — If-Modified-Since
    is ignored when If-None-Match is present.

    If-Modified-Since answers 304 when the file's mtime is *at or before* the
    given date (RFC 9110 §13.1.3, nginx's ``if_modified_since before``), not
    only on an exact match (nginx's default ``exact``): a cache that stored the
    Date of its copy instead of Last-Modified still gets its 304. Dates that do
    not parse are ignored, as §13.1.3 requires.
    """
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _etag_listed(if_match, etag, weak=False):
            return 412
    else:
        since = _date_field(headers, "if-unmodified-since")
        if since is not None and mtime > since:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return 304 if _etag_listed(if_none_match, etag, weak=True) else 200
    since = _date_field(headers, "if-modified-since")
    if since is not None and mtime <= since:
        return 304
    return 200


def _date_field(headers: Any, name: str) -> int | None:
    value = headers.get(name)
    return None if value is None else parse_http_date(value)


# --- ranges ------------------------------------------------------------------

class NoRange(Enum):
    """What to do when ``select_range`` gives no byte span."""

    IGNORE = "ignore"                # send the whole file with 200
    UNSATISFIABLE = "unsatisfiable"  # 416 with Content-Range: bytes */size


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
# Larger than any file; keeps int() away from 4300-digit strings (ValueError).
_HUGE = 10 ** 18


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def parse_range(value: str, size: int) -> tuple[int, int] | NoRange:
    """One ``Range: bytes=...`` against a file of ``size`` bytes (RFC 9110 §14.1.2).

    Returns ``(first, last)`` inclusive, clamped to the file. ``bytes=a-b``,
    ``bytes=a-`` and ``bytes=-n`` (the last n bytes) are understood.
    ``NoRange.IGNORE`` — send the whole file with 200 — for another unit, a
    malformed or invalid spec (``b < a``), and for *several* ranges: a
    multipart/byteranges answer is not implemented, and ignoring Range is
    always allowed (§14.2). ``NoRange.UNSATISFIABLE`` (416) when the first
    position is at or past the end, for ``-0``, and for any range of an empty
    file.
    """
    unit, eq, specs = value.partition("=")
    if not eq or unit.lower() != "bytes":
        return NoRange.IGNORE
    parts = [part.strip() for part in specs.split(",")]
    parts = [part for part in parts if part]  # the list rule allows empty elements
    if len(parts) != 1:
        return NoRange.IGNORE
    m = _RANGE_SPEC.fullmatch(parts[0])
    if m is None:
        return NoRange.IGNORE
    first, last = m.groups()
    if not first:
        if not last:
            return NoRange.IGNORE
        length = _number(last)
        if length == 0 or size == 0:
            return NoRange.UNSATISFIABLE
        return max(0, size - length), size - 1
    start = _number(first)
    end = _number(last) if last else _HUGE
    if end < start:
        return NoRange.IGNORE
    if start >= size:
        return NoRange.UNSATISFIABLE
    return start, min(end, size - 1)


def if_range_holds(value: str, etag: str, mtime: int) -> bool:
    """Whether ``If-Range`` lets Range apply (RFC 9110 §13.1.5).

    An entity tag must equal the current one by strong comparison (a weak tag
    never does); a date must equal Last-Modified exactly.
    """
    value = value.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    return parse_http_date(value) == mtime


def select_range(range_field: str | None, if_range_field: str | None,
                 etag: str, mtime: int, size: int) -> tuple[int, int] | NoRange:
    """The span a GET should answer, from its Range and If-Range fields."""
    if range_field is None:
        return NoRange.IGNORE
    if if_range_field is not None and not if_range_holds(if_range_field, etag, mtime):
        return NoRange.IGNORE
    return parse_range(range_field, size)


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
    out["last-modified"] = http_date(mtime)
    out["etag"] = etag
    headers = r.headers
    status = check_preconditions(headers, etag, mtime)
    if status != 200:
        r.exit(status)
    out["content-type"] = content_type(name)
    out["accept-ranges"] = "bytes"
    span: tuple[int, int] | NoRange = NoRange.IGNORE
    if r.method == "GET":  # GET is the only method range handling is defined for (§14.2)
        span = select_range(headers.get("range"), headers.get("if-range"), etag, mtime, size)
    if span is NoRange.UNSATISFIABLE:
        out["content-range"] = f"bytes */{size}"
        r.exit(416)
    if isinstance(span, tuple):
        start, end = span
        r.status = 206
        out["content-range"] = f"bytes {start}-{end}/{size}"
        await r.send_file(file, start, end - start + 1)
    else:
        r.status = 200
        await r.send_file(file, 0, size)


def _with_slash(r: StaticRequest) -> str:
    """The directory's URL with its trailing slash, keeping the query string."""
    path = quote(normalize_path(r.path), safe="/!$&'()*+,;=:@") + "/"
    _, question, query = r.uri.partition("?")
    return path + question + query
