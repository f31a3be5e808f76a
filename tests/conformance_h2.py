"""HTTP/2 against the reference tools (``make conformance-h2``; slow, so not in ``make test``).

    .venv/bin/python tests/conformance_h2.py

Starts a real pyresty (2 workers, an ``ssl`` address with ``http2 = true``
and a plain ``http2`` address, a trustme certificate) and runs, each of
which must come out clean:

- ``nghttp -v`` over TLS (ALPN h2) and h2c (prior knowledge): exit 0, the
  answer's DATA, no GOAWAY with an error code, no RST_STREAM;
- ``nghttp -d`` uploading 1 MiB (the client's flow control against ours);
- ``h2load`` over TLS and h2c (``-c 20 -m 20``, 20,000 requests) and
  ``h2load --h1`` over TLS: every request succeeded, none errored;
- the framing cases of tests/system/test_http2.py (bad preface, DATA on a
  closed stream, an oversized frame, bad HPACK, CONTINUATION and PING
  floods) run by pytest.

Prints one Markdown table (and exits 1 if a row failed).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from certs import Certs  # noqa: E402
from harness import Pyresty  # noqa: E402

CONFIG = """
workers = 2
[[server]]
listen = ["127.0.0.1:{port} ssl", "127.0.0.1:{port2} http2"]
ssl_certificate = "certs/a.test.pem"
ssl_certificate_key = "certs/a.test.key"
http2 = true
client_max_body_size = "4m"
[[server.location]]
path = "/"
content = "app:hello"
[[server.location]]
path = "= /echo"
content = "app:echo"
"""

APP = """
async def hello(r):
    await r.say("hello ", r.http_version)

async def echo(r):
    body = await r.read_body()
    await r.print(len(body))
"""


def run(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def nghttp_clean(code: int, out: str, expect: str) -> str:
    if code != 0:
        return f"exit {code}"
    if re.search(r"GOAWAY.*\n.*error_code=(?!NO_ERROR)", out) or "RST_STREAM" in out:
        return "error frame: " + out[-300:]
    return "ok" if expect in out else f"no {expect!r} in the output"


def h2load_clean(out: str, total: int) -> str:
    found = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored", out)
    if found is None:
        return "no summary: " + out[-300:]
    done, ok, failed, errored = (int(found.group(i)) for i in (2, 3, 4, 5))
    return "ok" if ok == total and not failed and not errored else found.group(0)


def main() -> int:
    for tool in ("nghttp", "h2load"):
        if shutil.which(tool) is None:
            print(f"conformance_h2: {tool} is not installed (apt-get install nghttp2-client)")
            return 1
    prefix = Path(tempfile.mkdtemp(prefix="pyresty-h2-"))
    certs = Certs(prefix / "certs-src", ("a.test",))
    files = {"app.py": APP, "certs/a.test.pem": Path(certs.cert("a.test")).read_text(),
             "certs/a.test.key": Path(certs.key("a.test")).read_text(),
             "upload.bin": "u" * (1024 * 1024)}
    srv = Pyresty(prefix, CONFIG, files)
    rows: list[tuple[str, str]] = []
    try:
        srv.start()
        tls, h2c = f"https://127.0.0.1:{srv.port}", f"http://127.0.0.1:{srv.ports[1]}"
        code, out = run(["nghttp", "-v", f"{tls}/"])
        rows.append(("nghttp -v, TLS (ALPN h2)", nghttp_clean(code, out, "hello 2.0")))
        code, out = run(["nghttp", "-v", f"{h2c}/"])
        rows.append(("nghttp -v, h2c prior knowledge", nghttp_clean(code, out, "hello 2.0")))
        code, out = run(["nghttp", "-v", "-d", str(prefix / "upload.bin"), f"{tls}/echo"])
        rows.append(("nghttp -d (1 MiB upload), TLS", nghttp_clean(code, out, "1048576")))
        for label, url, extra in (("h2load -c20 -m20, TLS", tls, []),
                                  ("h2load -c20 -m20, h2c", h2c, []),
                                  ("h2load --h1 -c20, TLS", tls, ["--h1"])):
            _, out = run(["h2load", "-n", "20000", "-c", "20", "-m", "20", *extra, f"{url}/"])
            rows.append((f"{label}, 20,000 requests", h2load_clean(out, 20000)))
        code, out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                         str(HERE / "system" / "test_http2.py"), "-k", "framing"])
        rows.append(("framing errors (test_http2.py -k framing)", "ok" if code == 0 else out[-500:]))
    finally:
        srv.stop()
        shutil.rmtree(prefix, ignore_errors=True)
    print("| check | result |\n|---|---|")
    for label, result in rows:
        print(f"| {label} | {result} |")
    return 0 if all(result == "ok" for _, result in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
