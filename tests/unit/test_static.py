"""Static files: path safety, header values, and the handler with its conditionals and
ranges (the RFC 9110 rules themselves: test_dates, test_conditional, test_ranges)."""
from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from pyresty.config.model import Location
from pyresty.http.headers import Headers
from pyresty.server import static
from pyresty.http.dates import format_http_date
from pyresty.server.static import NotServed, content_type, make_etag, normalize_path, open_file

# --- normalize_path ------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("/", "/"),
    ("/a/b.txt", "/a/b.txt"),
    ("//etc/passwd", "/etc/passwd"),
    ("/a//b///c", "/a/b/c"),
    ("/a/./b", "/a/b"),
    ("/a/b/../c", "/a/c"),
    ("/a/..", "/"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/a/b/", "/a/b/"),
    ("/./", "/"),
    ("/.hidden", "/.hidden"),
    ("/a/...", "/a/..."),
    ("/a/..b/c", "/a/..b/c"),
    ("/%2e%2e/x", "/%2e%2e/x"),          # double-encoded: decoded once, stays literal
])
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize("path", [
    "/../etc/passwd",
    "/..",
    "/a/../../x",
    "/a/./../../x",
    "//../x",
    "/a\0.txt",
    "a/b",
    "",
])
def test_normalize_path_refuses(path: str) -> None:
    with pytest.raises(NotServed) as info:
        normalize_path(path)
    assert info.value.status == 400


# --- open_file -------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A root with files, directories and symlinks, and a secret beside it."""
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "index.html").write_text("outside index")
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("hello world")
    (root / "index.html").write_text("root index")
    (root / "dir").mkdir()
    (root / "dir" / "index.html").write_text("dir index")
    (root / "empty").mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "app.js").write_text("js")
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "secret.txt").write_text("literal")
    (root / "etc").mkdir()
    (root / "out_link").symlink_to(tmp_path / "secret.txt")
    (root / "out_rel_link").symlink_to("../secret.txt")
    (root / "out_dir").symlink_to(tmp_path / "outside")
    (root / "in_link").symlink_to("a.txt")
    (root / "in_dir").symlink_to("dir")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("nowhere")
    return root


def opened(root: Path, path: str, index: tuple[str, ...] = ("index.html",)) -> tuple[str, str]:
    fd, st, name = open_file(str(root), path, index)
    try:
        assert stat.S_ISREG(st.st_mode)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read().decode(), name
    finally:
        os.close(fd)


def refused(root: Path, path: str, index: tuple[str, ...] = ("index.html",)) -> int:
    with pytest.raises(NotServed) as info:
        open_file(str(root), path, index)
    return info.value.status


@pytest.mark.parametrize("path, body, name", [
    ("/a.txt", "hello world", "a.txt"),
    ("/", "root index", "index.html"),
    ("/dir/", "dir index", "index.html"),
    ("/sub/app.js", "js", "app.js"),
    ("/sub/../a.txt", "hello world", "a.txt"),
    ("//a.txt", "hello world", "a.txt"),
    ("/in_link", "hello world", "in_link"),          # symlink staying inside: ok
    ("/in_dir/", "dir index", "index.html"),
    ("/in_dir/index.html", "dir index", "index.html"),
    ("/%2e%2e/secret.txt", "literal", "secret.txt"),  # %252e%252e: a real dir named "%2e%2e"
])
def test_open_file_serves(tree: Path, path: str, body: str, name: str) -> None:
    assert opened(tree, path) == (body, name)


@pytest.mark.parametrize("path, status", [
    ("/../secret.txt", 400),            # climbing above root, as nginx
    ("/../etc/passwd", 400),
    ("/a/../../secret.txt", 400),
    ("/sub/../../secret.txt", 400),
    ("/a.txt\0.html", 400),             # NUL byte
    ("//etc/passwd", 404),              # merged to root/etc/passwd, which is missing
    ("/out_link", 403),                 # symlink inside root pointing outside
    ("/out_rel_link", 403),
    ("/out_dir/index.html", 403),       # through a symlinked directory
    ("/out_dir/", 403),
    ("/loop", 403),                     # ELOOP
    ("/dangling", 404),
    ("/missing.txt", 404),
    ("/missing/", 404),
    ("/a.txt/", 404),                   # a file is not a directory
    ("/a.txt/x", 404),                  # ENOTDIR
    ("/empty/", 403),                   # directory without index, no autoindex
    ("/etc/", 403),
    ("/dir", 301),                      # directory without its slash
    ("/in_dir", 301),
    ("/" + "x" * 300, 404),             # ENAMETOOLONG
])
def test_open_file_refuses(tree: Path, path: str, status: int) -> None:
    assert refused(tree, path) == status


def test_root_given_through_a_symlink_and_with_trailing_slash(tree: Path) -> None:
    link = tree.parent / "root_link"
    link.symlink_to(tree)
    assert opened(link, "/a.txt")[0] == "hello world"
    fd, _, _ = open_file(str(tree) + "/", "/a.txt")
    os.close(fd)
    assert refused(link, "/out_link") == 403


def test_root_prefix_sibling_is_outside(tree: Path) -> None:
    """root "/x/root" must not accept "/x/rootish/..." by string prefix."""
    sibling = tree.parent / "rootish"
    sibling.mkdir()
    (sibling / "f.txt").write_text("no")
    (tree / "sib_link").symlink_to(sibling / "f.txt")
    assert refused(tree, "/sib_link") == 403


def test_index_order_and_index_that_is_a_directory(tree: Path) -> None:
    (tree / "dir" / "index.htm").mkdir()
    (tree / "dir" / "default.txt").write_text("default")
    assert opened(tree, "/dir/", ("index.htm", "default.txt", "index.html")) == (
        "default", "default.txt")
    assert opened(tree, "/dir/", ("nope.html", "index.html")) == ("dir index", "index.html")
    assert refused(tree, "/dir/", ("nope.html",)) == 403


def test_fifo_is_refused_without_blocking(tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    assert refused(tree, "/fifo") == 404


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_permission_denied_is_403(tree: Path) -> None:
    (tree / "private.txt").write_text("x")
    (tree / "private.txt").chmod(0)
    (tree / "closed").mkdir()
    (tree / "closed" / "f.txt").write_text("x")
    (tree / "closed").chmod(0)
    try:
        assert refused(tree, "/private.txt") == 403
        assert refused(tree, "/closed/f.txt") == 403
    finally:
        (tree / "closed").chmod(0o755)


@pytest.mark.parametrize("err, status", [
    (errno.ENOENT, 404), (errno.ENOTDIR, 404), (errno.ENAMETOOLONG, 404),
    (errno.EACCES, 403), (errno.EPERM, 403), (errno.ELOOP, 403), (errno.EMLINK, 403),
])
def test_open_errors_map_like_nginx(err: int, status: int) -> None:
    refusal = static._refusal(OSError(err, os.strerror(err)))
    assert isinstance(refusal, NotServed) and refusal.status == status


def test_other_open_errors_propagate() -> None:
    exc = OSError(errno.EIO, "I/O error")
    assert static._refusal(exc) is exc


# --- header values ------------------------------------------------------------------

def test_make_etag_is_nginx_style() -> None:
    assert make_etag(0x5f5e1000, 0x1a2b) == '"5f5e1000-1a2b"'
    assert make_etag(1, 0) == '"1-0"'


@pytest.mark.parametrize("name, expected", [
    ("index.html", "text/html"),
    ("STYLE.CSS", "text/css"),
    ("app.js", "application/javascript"),
    ("mod.mjs", "application/javascript"),
    ("data.json", "application/json"),
    ("module.wasm", "application/wasm"),
    ("logo.svg", "image/svg+xml"),
    ("font.woff2", "font/woff2"),
    ("photo.JPG", "image/jpeg"),
    ("a.png", "image/png"),
    ("notes.txt", "text/plain"),
    ("archive.tar.gz", "application/octet-stream"),
    ("README", "application/octet-stream"),
    (".htaccess", "application/octet-stream"),
    ("weird.zzzz", "application/octet-stream"),
])
def test_content_type(name: str, expected: str) -> None:
    assert content_type(name) == expected


# --- serve() with a stand-in Request (the server's tests cover it over sockets) ---

class Exited(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class FakeRequest:
    """Just the Request surface static.serve uses."""

    def __init__(self, path: str, method: str = "GET", uri: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.method = method
        self.path = path
        self.uri = uri if uri is not None else path
        self.headers = Headers(list((headers or {}).items()))
        self.headers_out = Headers()
        self.status = 200
        self.body: bytes | None = None     # None until the response starts
        self.buffered = b""
        self.redirected: tuple[str, int] | None = None

    def exit(self, status: int) -> Any:
        raise Exited(status)

    def redirect(self, url: str, status: int = 302) -> None:
        self.redirected = (url, status)

    async def print(self, *parts: Any) -> None:
        self.buffered += b"".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)

    async def flush(self) -> None:
        self._write(self.buffered)
        self.buffered = b""

    def _write(self, data: bytes) -> None:
        self.body = (self.body or b"") + (b"" if self.method == "HEAD" else data)

    async def send_file(self, file: Any, offset: int, count: int) -> None:
        if self.body is None:
            self.headers_out.setdefault("content-length", str(count))
        file.seek(offset)
        self._write(file.read(count))

    def finish(self) -> None:
        """What the server does after the handler returns: send what is buffered."""
        self._write(self.buffered)
        self.buffered = b""


def run(root: Path, request: FakeRequest) -> FakeRequest | int:
    """The request after serve(), or the status it exited with."""
    location = Location(kind="", pattern="/", root=str(root))
    try:
        asyncio.run(static.serve(request, location))
    except Exited as exited:
        return exited.status
    request.finish()
    return request


def test_serve_whole_file(tree: Path) -> None:
    r = run(tree, FakeRequest("/a.txt"))
    assert isinstance(r, FakeRequest)
    st = (tree / "a.txt").stat()
    assert (r.status, r.body) == (200, b"hello world")
    assert r.headers_out["content-type"] == "text/plain"
    assert r.headers_out["content-length"] == "11"
    assert r.headers_out["accept-ranges"] == "bytes"
    assert r.headers_out["etag"] == make_etag(int(st.st_mtime), 11)
    assert r.headers_out["last-modified"] == format_http_date(int(st.st_mtime))


def test_serve_head_and_range(tree: Path) -> None:
    r = run(tree, FakeRequest("/a.txt", method="HEAD", headers={"Range": "bytes=0-1"}))
    assert isinstance(r, FakeRequest)
    assert (r.status, r.body, r.headers_out["content-length"]) == (200, b"", "11")
    r = run(tree, FakeRequest("/a.txt", headers={"Range": "bytes=-5"}))
    assert isinstance(r, FakeRequest)
    assert (r.status, r.body) == (206, b"world")
    assert r.headers_out["content-range"] == "bytes 6-10/11"


def test_serve_unsatisfiable_range(tree: Path) -> None:
    r = FakeRequest("/a.txt", headers={"Range": "bytes=11-"})
    assert run(tree, r) == 416
    assert r.headers_out["content-range"] == "bytes */11"


def test_serve_not_modified_keeps_validators(tree: Path) -> None:
    first = run(tree, FakeRequest("/a.txt"))
    assert isinstance(first, FakeRequest)
    etag = first.headers_out["etag"]
    again = FakeRequest("/a.txt", headers={"If-None-Match": etag})
    assert run(tree, again) == 304
    assert again.headers_out["etag"] == etag
    since = FakeRequest("/a.txt", headers={"If-Modified-Since": first.headers_out["last-modified"]})
    assert run(tree, since) == 304


def test_serve_directory_redirect_keeps_query(tree: Path) -> None:
    r = run(tree, FakeRequest("/dir", uri="/dir?x=1&y=%20"))
    assert isinstance(r, FakeRequest)
    assert r.redirected == ("/dir/?x=1&y=%20", 301)
    (tree / "with space").mkdir()
    r = run(tree, FakeRequest("/with space", uri="/with%20space"))
    assert isinstance(r, FakeRequest)
    assert r.redirected == ("/with%20space/", 301)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_serve_other_methods_405(tree: Path, method: str) -> None:
    r = FakeRequest("/a.txt", method=method)
    assert run(tree, r) == 405
    assert r.headers_out["allow"] == "GET, HEAD"


@pytest.mark.parametrize("path, status", [
    ("/../secret.txt", 400), ("/out_link", 403), ("/missing", 404), ("/empty/", 403),
])
def test_serve_refusals(tree: Path, path: str, status: int) -> None:
    assert run(tree, FakeRequest(path)) == status


def test_serve_index(tree: Path) -> None:
    r = run(tree, FakeRequest("/dir/"))
    assert isinstance(r, FakeRequest)
    assert (r.body, r.headers_out["content-type"]) == (b"dir index", "text/html")


def test_serve_closes_the_file(tree: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for headers in ({}, {"Range": "bytes=50-"}, {"If-None-Match": "*"}):
        run(tree, FakeRequest("/a.txt", headers=headers))
    assert len(os.listdir("/proc/self/fd")) == before


def test_serve_ignores_if_modified_since_in_the_future(tree: Path) -> None:
    """Issue 16 item 12: no 304 for a date later than now (nginx 1.22: 200)."""
    future = format_http_date(time.time() + 86400)
    r = run(tree, FakeRequest("/a.txt", headers={"If-Modified-Since": future}))
    assert isinstance(r, FakeRequest)
    assert (r.status, r.body) == (200, b"hello world")
    r = run(tree, FakeRequest("/a.txt", headers={"If-Modified-Since": format_http_date(time.time())}))
    assert r == 304


def test_serve_no_range_satisfiable_is_416(tree: Path) -> None:
    """Issue 16 item 12: nginx 1.22 answers 416 with ``Content-Range: bytes */11``."""
    for value in ("bytes=20-30,40-50", "bytes=11-,-0"):
        r = FakeRequest("/a.txt", headers={"Range": value})
        assert run(tree, r) == 416
        assert r.headers_out["content-range"] == "bytes */11"


def test_serve_multipart_byteranges(tree: Path) -> None:
    """nginx 1.22 answers several ranges with 206 multipart/byteranges."""
    r = run(tree, FakeRequest("/a.txt", headers={"Range": "bytes=0-4,-5"}))
    assert isinstance(r, FakeRequest)
    assert r.status == 206
    ctype = r.headers_out["content-type"]
    boundary = ctype.removeprefix("multipart/byteranges; boundary=")
    assert boundary != ctype and len(boundary) == 20
    assert "content-range" not in r.headers_out
    assert r.body == (f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n"
                      f"Content-Range: bytes 0-4/11\r\n\r\nhello"
                      f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n"
                      f"Content-Range: bytes 6-10/11\r\n\r\nworld"
                      f"\r\n--{boundary}--\r\n").encode()
    assert r.headers_out["content-length"] == str(len(r.body))
    other = run(tree, FakeRequest("/a.txt", headers={"Range": "bytes=0-4,-5"}))
    assert isinstance(other, FakeRequest)
    assert other.headers_out["content-type"] != ctype        # a fresh boundary each time


@pytest.mark.parametrize("headers, status, body", [
    ({"Range": "bytes=0-4,20-"}, 206, b"hello"),              # one satisfiable: single part
    ({"Range": "bytes=0-9,0-9"}, 200, b"hello world"),        # overlapping past the size
    ({"Range": "bytes=0-4,6-"}, 206, None),                   # several: multipart
    ({"Range": "bytes=5-2"}, 200, b"hello world"),            # invalid: ignored (nginx 416)
    ({"Range": "bytes=0-1", "If-Range": '"stale"'}, 200, b"hello world"),
])
def test_serve_range_decisions(tree: Path, headers: dict[str, str], status: int,
                               body: bytes | None) -> None:
    r = run(tree, FakeRequest("/a.txt", headers=headers))
    assert isinstance(r, FakeRequest)
    assert r.status == status
    if body is not None:
        assert r.body == body
        assert r.headers_out["content-length"] == str(len(body))


def test_serve_if_range_with_the_current_validators(tree: Path) -> None:
    first = run(tree, FakeRequest("/a.txt"))
    assert isinstance(first, FakeRequest)
    for validator in (first.headers_out["etag"], first.headers_out["last-modified"]):
        r = run(tree, FakeRequest("/a.txt", headers={"Range": "bytes=6-", "If-Range": validator}))
        assert isinstance(r, FakeRequest)
        assert (r.status, r.body) == (206, b"world")


def test_serve_precondition_failed(tree: Path) -> None:
    r = FakeRequest("/a.txt", headers={"If-Match": '"stale"', "Range": "bytes=0-1"})
    assert run(tree, r) == 412
    r = FakeRequest("/a.txt", headers={"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert run(tree, r) == 412
