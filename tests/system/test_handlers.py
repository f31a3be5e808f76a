"""Handlers are ordinary asyncio code (SPEC §5): a Task and a Context per request,
``exit()`` that cannot be swallowed, logging that arrives in the error log.

Every test starts a real pyresty; the asyncio-ecosystem test also starts a real
HTTP server (a thread in this process) and uses the test redis-server.
"""
from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from harness import http_get, raw_exchange

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["compiled", "interpreted"])
def serve(request, make_server):
    """make_server on the compiled request path and on its source (PYRESTY_PURE_PYTHON)."""
    env = {"PYRESTY_PURE_PYTHON": "1" if request.param == "interpreted" else ""}
    return lambda config, files: make_server(config, files, env=env)


# -- a real local HTTP server for httpx and aiohttp to call -------------------------

class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"upstream says " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- 1. the asyncio ecosystem in every phase, a timer and init_worker ---------------

ECOSYSTEM = '''
import asyncio, json, logging
import aiohttp, anyio, httpx, redis.asyncio
import pyresty

UPSTREAM = "http://127.0.0.1:UPSTREAM_PORT"
REDIS = "REDIS_URL"
log = logging.getLogger("contract")


async def check(tag):
    """Everything a handler author would reach for; returns what each one gave."""
    async with asyncio.timeout(10):
        task = asyncio.current_task()
        assert task is not None, "no current task"
        with anyio.fail_after(10):
            await anyio.sleep(0)
        async with asyncio.TaskGroup() as tg:
            via_httpx = tg.create_task(_httpx(tag))
            via_aiohttp = tg.create_task(_aiohttp(tag))
        client = redis.asyncio.Redis.from_url(REDIS)
        try:
            await client.set("contract:" + tag, tag)
            from_redis = (await client.get("contract:" + tag)).decode()
        finally:
            await client.aclose()
        shell = await pyresty.shell.run(["echo", tag])
        waited = await asyncio.wait_for(asyncio.sleep(0, "slept"), 5)
        return {"httpx": via_httpx.result(), "aiohttp": via_aiohttp.result(),
                "redis": from_redis, "shell": shell.stdout.decode().strip(), "wait_for": waited}


async def _httpx(tag):
    async with httpx.AsyncClient() as client:
        return (await client.get(UPSTREAM + "/httpx/" + tag)).text


async def _aiohttp(tag):
    async with aiohttp.ClientSession() as session:
        async with session.get(UPSTREAM + "/aiohttp/" + tag) as resp:
            return await resp.text()


async def rewrite(r):
    async with asyncio.timeout(10):
        r.ctx["rewrite"] = await check("rewrite")


async def access(r):
    async with asyncio.timeout(10):
        r.ctx["access"] = await check("access")


async def content(r):
    async with asyncio.timeout(10):
        r.ctx["content"] = await check("content")
        r.headers_out["content-type"] = "application/json"
        await r.say(json.dumps({k: r.ctx[k] for k in ("rewrite", "access", "content")}))


async def log_phase(r):
    async with asyncio.timeout(10):
        log.info("log phase: %s", json.dumps(await check("log")))


async def on_timer(premature):
    async with asyncio.timeout(10):
        log.info("timer: %s", json.dumps(await check("timer")))


async def init():
    async with asyncio.timeout(10):
        log.info("init_worker: %s", json.dumps(await check("init")))
    pyresty.timer.at(0, on_timer)
'''


def _expected(tag: str) -> dict[str, str]:
    return {"httpx": f"upstream says /httpx/{tag}", "aiohttp": f"upstream says /aiohttp/{tag}",
            "redis": tag, "shell": tag, "wait_for": "slept"}


def _logged(server, what: str) -> dict[str, str]:
    line = server.wait_log(rf"\[info\] \d+#0: {what}: (\{{.*\}})", timeout=20)
    return json.loads(line)


def test_asyncio_libraries_work_in_every_phase_timer_and_hook(serve, upstream, redis_url):
    app = ECOSYSTEM.replace("UPSTREAM_PORT", str(upstream)).replace("REDIS_URL", redis_url)
    server = serve('''
        workers = 1
        [hooks]
        init_worker = "app:init"
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "= /eco"
        rewrite = "app:rewrite"
        access = "app:access"
        content = "app:content"
        log = "app:log_phase"
    ''', {"app.py": app})
    assert _logged(server, "init_worker") == _expected("init")
    assert _logged(server, "timer") == _expected("timer")
    status, _, body = http_get(server.port, "/eco", timeout=30)
    assert status == 200, body
    assert json.loads(body) == {tag: _expected(tag) for tag in ("rewrite", "access", "content")}
    assert _logged(server, "log phase") == _expected("log")
    assert "Timeout should be used inside a task" not in server.log_text()


# -- 2. one Context per request -------------------------------------------------------

CONTEXTVARS = '''
import contextvars, logging
import pyresty

user = contextvars.ContextVar("user", default="nobody")
log = logging.getLogger("contract")

async def access(r):
    r.ctx["before"] = user.get()
    if "user" in r.args:
        user.set(r.args["user"][0])

async def content(r):
    await r.say(r.ctx["before"], "|", user.get())

def log_phase(r):
    log.info("log phase of %s sees %s", r.uri, user.get())

async def timer_sees(r):
    seen = []
    async def cb(premature):
        seen.append(user.get())
    user.set("content-only")
    pyresty.timer.at(0, cb)
    while not seen:
        await asyncio_sleep()
    await r.say(seen[0])

async def asyncio_sleep():
    import asyncio
    await asyncio.sleep(0.01)
'''


def test_a_contextvar_is_shared_by_one_requests_phases_and_seen_by_no_other(serve):
    server = serve('''
        workers = 1
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "/cv"
        access = "app:access"
        content = "app:content"
        log = "app:log_phase"
        [[server.location]]
        path = "= /timer"
        content = "app:timer_sees"
    ''', {"app.py": CONTEXTVARS})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for path, want in (("/cv?user=alice", b"nobody|alice\n"),   # access -> content
                           ("/cv", b"nobody|nobody\n"),             # next request, same connection
                           ("/cv?user=bob", b"nobody|bob\n")):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.read() == want
        # another connection, while the first stays open
        assert http_get(server.port, "/cv")[2] == b"nobody|nobody\n"
    finally:
        conn.close()
    server.wait_log(r"log phase of /cv\?user=alice sees alice")
    server.wait_log(r"log phase of /cv\?user=bob sees bob")
    server.wait_log(r"log phase of /cv sees nobody", count=2)   # the log phase runs after the answer
    # a timer created by a request runs in a fresh context, not the request's
    assert http_get(server.port, "/timer")[2] == b"nobody\n"


# -- 3. exit() ------------------------------------------------------------------------

EXITS = '''
import asyncio
import pyresty

async def swallowed(r):
    try:
        r.exit(403)
    except Exception:
        await r.say("the exit was swallowed")

async def in_task_group(r):
    async def child():
        r.exit(401)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(child())
    await r.say("went on")

async def body(r):
    await r.say("one")
    await r.flush()
    await r.say("two")
    await r.flush()
    await r.say("three")

async def buffered(r):
    await r.say("two")

async def streamed_then_exit(r):
    await r.say("partial")
    await r.flush()
    r.exit(int(r.args["status"][0]))

async def timeout_expires(r):
    async with asyncio.timeout(0.01):
        await asyncio.sleep(5)

def deny_header(r):
    r.headers_out["X-Filtered"] = "yes"
    r.exit(403)

def cut_body(r, chunk):
    if b"two" in chunk:
        r.exit(200)
    return chunk

def exit_in_log(r):
    r.exit(500)
'''

EXIT_CONFIG = '''
    workers = 1
    [[server]]
    listen = "127.0.0.1:{port}"
    [[server.location]]
    path = "= /swallowed"
    content = "app:swallowed"
    [[server.location]]
    path = "= /taskgroup"
    content = "app:in_task_group"
    [[server.location]]
    path = "= /header-exit"
    content = "app:body"
    header_filter = "app:deny_header"
    [[server.location]]
    path = "= /header-exit-buffered"
    content = "app:buffered"
    header_filter = "app:deny_header"
    [[server.location]]
    path = "= /body-exit"
    content = "app:body"
    body_filter = "app:cut_body"
    [[server.location]]
    path = "= /body-exit-buffered"
    content = "app:buffered"
    body_filter = "app:cut_body"
    [[server.location]]
    path = "= /late"
    content = "app:streamed_then_exit"
    [[server.location]]
    path = "= /timeout"
    content = "app:timeout_expires"
    [[server.location]]
    path = "= /log-exit"
    content = "app:buffered"
    log = "app:exit_in_log"
'''


@pytest.fixture
def exits(serve):
    return serve(EXIT_CONFIG, {"app.py": EXITS})


def test_exit_is_not_swallowed_by_except_exception(exits):
    status, headers, body = http_get(exits.port, "/swallowed")
    assert status == 403 and b"swallowed" not in body and headers["content-type"] == "text/html"


def test_exit_inside_a_task_group_ends_the_request(exits):
    status, _, body = http_get(exits.port, "/taskgroup")
    assert status == 401 and b"went on" not in body


def test_exit_in_header_filter_replaces_the_response(exits):
    for path in ("/header-exit", "/header-exit-buffered"):
        status, headers, body = http_get(exits.port, path)
        assert status == 403, path
        assert b"403" in body and b"one" not in body and b"two" not in body
        assert "x-filtered" not in headers and headers["content-type"] == "text/html"
    assert "[error]" not in exits.log_text()


def test_exit_in_body_filter_ends_the_body_and_keeps_the_connection(exits):
    reply = raw_exchange(exits.port, b"GET /body-exit HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"GET /body-exit-buffered HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and b"Transfer-Encoding: chunked" in first
    assert first.endswith(b"\r\n\r\n4\r\none\n\r\n0\r\n\r\n")      # "two", "three" dropped
    assert second.startswith(b"200 ") and second.endswith(b"Content-Length: 0\r\n"
                                                          b"Connection: close\r\n\r\n")
    assert "[error]" not in exits.log_text()


def test_exit_after_the_response_started_is_logged_once_with_its_place(exits):
    status, _, body = http_get(exits.port, "/late?status=500")
    assert status == 200 and body == b"partial\n"
    line = exits.wait_log(r"\[error\] .*attempt to set status 500 via r\.exit\(\) after "
                          r"sending out the response status 200 at \S+app\.py:\d+.*")
    assert "/late?status=500" in line
    assert http_get(exits.port, "/late?status=200")[2] == b"partial\n"   # ending: not an error
    assert exits.log_text().count("attempt to set status") == 1


def test_an_expired_asyncio_timeout_is_a_500_not_a_408(exits):
    assert http_get(exits.port, "/timeout")[0] == 500
    exits.wait_log(r"\[error\] .*handler failed on GET /timeout")


def test_exit_in_the_log_phase_is_an_error_line(exits):
    assert http_get(exits.port, "/log-exit")[0] == 200
    exits.wait_log(r"\[error\] .*r\.exit\(500\) in the log phase does nothing")


# -- 4. logging and returned values ---------------------------------------------------

LOGGING = '''
import logging, warnings

mine = logging.getLogger("myapp.views")

async def speak(r):
    mine.debug("a debug line")
    mine.info("an info line")
    mine.warning("a warning line")
    mine.error("an error line")
    print("a printed", "line")
    warnings.warn("a python warning")
    await r.say("spoke")

async def deny(r):
    return 403

async def ok(r):
    await r.say("ok")
'''


def test_handler_logging_reaches_the_error_log_in_nginx_format(serve):
    server = serve('''
        workers = 1
        error_log_level = "info"
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "= /speak"
        content = "app:speak"
    ''', {"app.py": LOGGING})
    assert http_get(server.port, "/speak")[2] == b"spoke\n"
    for level, text in (("info", "an info line"), ("warn", "a warning line"),
                        ("error", "an error line"), ("notice", "a printed line"),
                        ("warn", "a python warning")):
        server.wait_log(rf"\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d \[{level}\] \d+#0: .*{text}")
    assert "a debug line" not in server.log_text()


def test_a_returned_status_is_ignored_and_warned_once(serve):
    server = serve('''
        workers = 1
        [[server]]
        listen = "127.0.0.1:{port}"
        [[server.location]]
        path = "= /guarded"
        access = "app:deny"
        content = "app:ok"
    ''', {"app.py": LOGGING})
    for _ in range(3):
        assert http_get(server.port, "/guarded")[:3:2] == (200, b"ok\n")
    server.wait_log(r"\[warn\] .*access handler app:deny returned 403; use r\.exit\(403\)")
    assert server.log_text().count("returned 403") == 1


def test_exits_on_one_keepalive_connection_are_answered_in_order(exits):
    reply = raw_exchange(exits.port, b"GET /swallowed HTTP/1.1\r\nHost: a\r\n\r\n"
                                     b"GET /taskgroup HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 40") == 2
