"""Handlers are ordinary asyncio code (SPEC §5): a Task and a Context per request,
the asyncio ecosystem in every phase. (``exit()`` in each phase, handler logging
and returned values are data-driven cases in tests/system/cases/test_phases.py.)

Every test starts a real pyresty; the asyncio-ecosystem test also starts a real
HTTP server (a thread in this process) and uses the test redis-server.
"""
from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from client import Connection
from harness import http_get

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
    conn = Connection(server.port, timeout=10)
    try:
        for path, want in (("/cv?user=alice", b"nobody|alice\n"),   # access -> content
                           ("/cv", b"nobody|nobody\n"),             # next request, same connection
                           ("/cv?user=bob", b"nobody|bob\n")):
            resp = conn.request("GET", path)
            assert resp.body == want
        # another connection, while the first stays open
        assert http_get(server.port, "/cv")[2] == b"nobody|nobody\n"
    finally:
        conn.close()
    server.wait_log(r"log phase of /cv\?user=alice sees alice")
    server.wait_log(r"log phase of /cv\?user=bob sees bob")
    server.wait_log(r"log phase of /cv sees nobody", count=2)   # the log phase runs after the answer
    # a timer created by a request runs in a fresh context, not the request's
    assert http_get(server.port, "/timer")[2] == b"nobody\n"

