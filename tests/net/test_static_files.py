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
