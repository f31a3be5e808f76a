"""Static files over real sockets: sendfile, conditionals, ranges, no escape from root."""
from __future__ import annotations

import os

import pytest

from harness import Pyresty, http_get, raw_exchange

pytestmark = pytest.mark.timeout(60)

CONFIG = '''
workers = 0
[[server]]
listen = "127.0.0.1:{port}"
[[server.location]]
path = "/static/"
root = "public"
'''

BIG = bytes(range(256)) * 4096   # 1 MiB, every byte value


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("static")
    (prefix / "public" / "static" / "dir").mkdir(parents=True)
    (prefix / "public" / "static" / "hello.txt").write_text("hello file\n")
    (prefix / "public" / "static" / "big.bin").write_bytes(BIG)
    (prefix / "public" / "static" / "dir" / "index.html").write_text("<p>index</p>")
    (prefix / "secret.txt").write_text("top secret\n")
    os.symlink(prefix / "secret.txt", prefix / "public" / "static" / "leak.txt")
    srv = Pyresty(prefix, CONFIG)
    srv.start()
    yield srv
    srv.stop()


def test_file_with_type_length_and_validators(server):
    status, headers, body = http_get(server.port, "/static/hello.txt")
    assert status == 200 and body == b"hello file\n"
    assert headers["content-type"].startswith("text/plain")
    assert headers["content-length"] == "11"
    assert "last-modified" in headers and headers["etag"].startswith('"')
    assert headers["accept-ranges"] == "bytes"


def test_big_file_is_sent_whole(server):
    status, headers, body = http_get(server.port, "/static/big.bin")
    assert status == 200 and body == BIG


def test_conditional_get_gives_304(server):
    _, headers, _ = http_get(server.port, "/static/hello.txt")
    status, _, body = http_get(server.port, "/static/hello.txt",
                               headers={"If-Modified-Since": headers["last-modified"]})
    assert status == 304 and body == b""
    status, _, _ = http_get(server.port, "/static/hello.txt",
                            headers={"If-None-Match": headers["etag"]})
    assert status == 304


def test_range_206_and_416(server):
    status, headers, body = http_get(server.port, "/static/big.bin",
                                     headers={"Range": "bytes=1000-1999"})
    assert status == 206 and body == BIG[1000:2000]
    assert headers["content-range"] == f"bytes 1000-1999/{len(BIG)}"
    status, _, body = http_get(server.port, "/static/big.bin", headers={"Range": "bytes=-10"})
    assert status == 206 and body == BIG[-10:]
    status, headers, _ = http_get(server.port, "/static/big.bin",
                                  headers={"Range": f"bytes={len(BIG)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(BIG)}"


def test_directory_index_and_redirect(server):
    status, _, body = http_get(server.port, "/static/dir/")
    assert status == 200 and body == b"<p>index</p>"
    status, headers, _ = http_get(server.port, "/static/dir?x=1")
    assert status == 301 and headers["location"].endswith("/static/dir/?x=1")


@pytest.mark.parametrize("target", [
    b"/static/../secret.txt",
    b"/static/../../secret.txt",
    b"/static/%2e%2e/%2e%2e/secret.txt",
    b"/static/%2E%2E%2Fsecret.txt",
    b"/static/..%2f..%2fsecret.txt",
    b"/static/leak.txt",
    b"/static/hello.txt%00.png",
])
def test_no_escape_from_root(server, target):
    reply = raw_exchange(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 403, 404), reply[:200]
    assert b"top secret" not in reply


def test_head_and_post(server):
    status, headers, body = http_get(server.port, "/static/hello.txt", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "11"
    status, headers, _ = http_get(server.port, "/static/hello.txt", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_if_modified_since_in_the_future_is_ignored(server):
    """Issue 16 item 12: a date later than the server's clock gives the file, not 304.

    nginx 1.22 answers 200 (its default ``if_modified_since exact``)."""
    status, _, body = http_get(server.port, "/static/hello.txt",
                               headers={"If-Modified-Since": "Tue, 01 Dec 2099 00:00:00 GMT"})
    assert status == 200 and body == b"hello file\n"


def test_no_satisfiable_range_is_416(server):
    """Issue 16 item 12: nginx 1.22 answers 416 with ``Content-Range: bytes */<len>``."""
    size = len(BIG)
    status, headers, _ = http_get(server.port, "/static/big.bin",
                                  headers={"Range": f"bytes={size}-{size + 10},{size + 20}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"


def test_several_ranges_are_multipart_byteranges(server):
    """nginx 1.22 answers several ranges with 206 multipart/byteranges, parts in order."""
    size = len(BIG)
    status, headers, body = http_get(server.port, "/static/big.bin",
                                     headers={"Range": "bytes=1000-1999,-300000,5-5"})
    assert status == 206 and "content-range" not in headers
    kind, _, boundary = headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges" and boundary
    assert headers["content-length"] == str(len(body))
    expected = b""
    for first, last in ((1000, 1999), (size - 300000, size - 1), (5, 5)):
        expected += (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n").encode()
        expected += BIG[first:last + 1]
    expected += f"\r\n--{boundary}--\r\n".encode()
    assert body == expected
    # the connection stays usable: the next answer on it is framed right
    reply = raw_exchange(server.port, b"GET /static/hello.txt HTTP/1.1\r\nHost: x\r\n"
                         b"Range: bytes=0-1,3-4\r\n\r\n"
                         b"GET /static/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 206 ") == 1 and reply.count(b"HTTP/1.1 200 ") == 1
    assert reply.endswith(b"\r\n\r\nhello file\n")


def test_overlapping_ranges_get_the_whole_file(server):
    """nginx 1.22 answers 200 when the ranges add up to more than the file."""
    status, headers, body = http_get(server.port, "/static/hello.txt",
                                     headers={"Range": "bytes=0-8,2-10"})
    assert status == 200 and body == b"hello file\n" and "content-range" not in headers
