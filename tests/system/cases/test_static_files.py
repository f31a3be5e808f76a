"""Static files: sendfile, validators, conditionals, ranges, no escape from the root.

nginx's ``root`` semantics (README "Static files"); the RFC 9110 rules themselves
are unit-tested in tests/unit/test_conditional.py, test_ranges.py, test_dates.py.
"""
from __future__ import annotations

import pytest

from cases import Case, File, Req, Run, Server, Symlink, cases, like

pytestmark = pytest.mark.timeout(60)

BIG = bytes(range(256)) * 4096   # 1 MiB, every byte value
SIZE = len(BIG)
MTIME = 1700000000               # so Last-Modified and ETag are known
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
ETAG = '"6553f100-b"'            # nginx's "<mtime hex>-<size hex>" of hello.txt

STATIC = Server(
    config='''
        workers = 0
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "/static/"
        root = "public"
    ''',
    files={
        "public/static/hello.txt": File("hello file\n", MTIME),
        "public/static/big.bin": BIG,
        "public/static/dir/index.html": "<p>index</p>",
        "secret.txt": "top secret\n",
        "public/static/leak.txt": Symlink("secret.txt"),
    })


def multipart_byteranges_in_the_order_asked(run: Run) -> None:
    """nginx 1.22 answers several ranges with 206 multipart/byteranges, parts in order."""
    resp = run.response
    kind, _, boundary = resp.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges" and boundary
    assert resp.headers["content-length"] == str(len(resp.body))
    expected = b""
    for first, last in ((1000, 1999), (SIZE - 300000, SIZE - 1), (5, 5)):
        expected += (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Range: bytes {first}-{last}/{SIZE}\r\n\r\n").encode()
        expected += BIG[first:last + 1]
    expected += f"\r\n--{boundary}--\r\n".encode()
    assert resp.body == expected


def escape_attempt(target: bytes) -> Case:
    return Case(f"no escape from the root: {target.decode()}",
                b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                reply_like=rb"\AHTTP/1\.1 (400|403|404) ", reply_unlike=b"top secret")


test_static_files = cases(STATIC, [
    Case("a file with its type, length and validators", "GET /static/hello.txt",
         status=200, body="hello file\n",
         headers={"Content-Type": like(r"\Atext/plain"), "Content-Length": "11",
                  "Last-Modified": LAST_MODIFIED, "ETag": ETAG, "Accept-Ranges": "bytes"}),
    Case("a big file is sent whole", "GET /static/big.bin", status=200, body=BIG),

    # conditionals (RFC 9110 §13)
    Case("If-Modified-Since equal to Last-Modified is 304", "GET /static/hello.txt",
         more_headers={"If-Modified-Since": LAST_MODIFIED}, status=304, body=b""),
    Case("If-None-Match with the ETag is 304", "GET /static/hello.txt",
         more_headers={"If-None-Match": ETAG}, status=304),
    # Issue 16 item 12: nginx 1.22 answers 200 (its default ``if_modified_since exact``)
    Case("If-Modified-Since in the future is ignored", "GET /static/hello.txt",
         more_headers={"If-Modified-Since": "Tue, 01 Dec 2099 00:00:00 GMT"},
         status=200, body="hello file\n"),

    # ranges (RFC 9110 §14)
    Case("one range is 206 with Content-Range", "GET /static/big.bin",
         more_headers={"Range": "bytes=1000-1999"}, status=206, body=BIG[1000:2000],
         headers={"Content-Range": f"bytes 1000-1999/{SIZE}"}),
    Case("a suffix range is 206", "GET /static/big.bin", more_headers={"Range": "bytes=-10"},
         status=206, body=BIG[-10:]),
    Case("a range past the end is 416", "GET /static/big.bin",
         more_headers={"Range": f"bytes={SIZE}-"}, status=416,
         headers={"Content-Range": f"bytes */{SIZE}"}),
    # Issue 16 item 12: nginx 1.22 answers 416 with ``Content-Range: bytes */<len>``
    Case("no satisfiable range is 416", "GET /static/big.bin",
         more_headers={"Range": f"bytes={SIZE}-{SIZE + 10},{SIZE + 20}-"}, status=416,
         headers={"Content-Range": f"bytes */{SIZE}"}),
    Case("several ranges are multipart/byteranges in the order asked", "GET /static/big.bin",
         more_headers={"Range": "bytes=1000-1999,-300000,5-5"}, status=206,
         headers={"Content-Range": None}, check=multipart_byteranges_in_the_order_asked),
    # the connection stays usable: the next answer on it is framed right
    Case("after a multipart answer the next one is framed right",
         b"GET /static/hello.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,3-4\r\n\r\n"
         b"GET /static/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
         status=[206, 200], body=[None, "hello file\n"],
         reply_like=rb"\r\n\r\nhello file\n\Z"),
    # nginx 1.22 answers 200 when the ranges add up to more than the file
    Case("overlapping ranges get the whole file", "GET /static/hello.txt",
         more_headers={"Range": "bytes=0-8,2-10"}, status=200, body="hello file\n",
         headers={"Content-Range": None}),

    # directories, methods
    Case("a directory's index.html", "GET /static/dir/", status=200, body="<p>index</p>"),
    Case("a directory without its slash is a 301 that keeps the query", "GET /static/dir?x=1",
         status=301, headers={"Location": like(r"/static/dir/\?x=1\Z")}),
    Case("HEAD has the length and no body", "HEAD /static/hello.txt",
         status=200, body=b"", headers={"Content-Length": "11"}),
    Case("POST is 405 with Allow", Req("POST", "/static/hello.txt", body=b""),
         status=405, headers={"Allow": "GET, HEAD"}),

    # no escape from the root through .., encoded dots or slashes, symlinks, NUL
    *(escape_attempt(t) for t in (
        b"/static/../secret.txt",
        b"/static/../../secret.txt",
        b"/static/%2e%2e/%2e%2e/secret.txt",
        b"/static/%2E%2E%2Fsecret.txt",
        b"/static/..%2f..%2fsecret.txt",
        b"/static/leak.txt",
        b"/static/hello.txt%00.png",
    )),
])
