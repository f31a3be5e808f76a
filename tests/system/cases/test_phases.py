"""Request phases: rewrite, access, content, header_filter, body_filter, log.

What each phase can do to the answer (SPEC §5, README "Python API"): a rewrite
that re-matches the location, an access check that ends the request, content
handlers that suspend, raise, exit or return values, filters that change or end
the response, a log phase that runs after it. Every case runs on the request
path as installed (compiled) and on its Python source (interpreted).
"""
from __future__ import annotations

import pytest

from cases import BOTH, Case, Run, Server, cases, like
from client import request

pytestmark = pytest.mark.timeout(60)


def still_serving(run: Run) -> None:
    """The process that served the case answers the next request on a new connection."""
    resp = request(run.server.port, "GET", "/hello", timeout=10)
    assert (resp.status, resp.body) == (200, b"hello\n"), resp


def no_repeated_fields(run: Run) -> None:
    for resp in run.responses:
        names = [name.lower() for name, _ in resp.headers]
        assert len(names) == len(set(names)), f"a repeated field in {resp.raw!r}"


# -- one process (workers = 0): the phase pipeline and content handlers ----------

PIPELINE_APP = '''
import asyncio
import logging

async def hello(r):
    r.headers_out["Content-Type"] = "text/plain"
    await r.say("hello")

async def boom(r):
    raise RuntimeError("handler exploded")

async def boom_late(r):
    await r.say("partial")
    await r.flush()
    raise RuntimeError("exploded after the head")

async def teapot(r):
    await r.say("discarded")
    r.exit(418)

async def exit200(r):
    await r.say("kept")
    r.exit(200)

async def go(r):
    r.redirect("/hello", 301)

async def sized_exit(r):
    r.headers_out["Content-Length"] = "2"
    await r.print("ok")
    r.exit(404)

async def rewrite(r):
    if r.path.startswith("/old/"):
        r.path = "/new/" + r.path[len("/old/"):]
    r.ctx["rewritten"] = True

async def loop_rewrite(r):
    r.path = r.path + "x"

async def deny(r):
    if r.headers.get("x-token") != "secret":
        r.exit(403)
    r.ctx["user"] = "alice"

async def new(r):
    await r.say("new ", r.path, " ", r.ctx.get("rewritten"), " ", r.ctx.get("user"))

def add_header(r):
    r.headers_out["X-Filtered"] = "yes"

def upper(r, chunk):
    return chunk.upper()

async def log_phase(r):
    logging.getLogger("pyresty.app").warning("log phase saw %s %s", r.path, r.status)

# content handlers stepped by the request path: suspending, raising, exiting, returning

async def sleep0(r):
    await asyncio.sleep(0)           # a bare None yield on the first step
    await r.say("after sleep0")

async def sleep0_raise(r):
    await asyncio.sleep(0)
    raise RuntimeError("late boom")

async def sleep_exit(r):
    await r.say("discarded")
    await asyncio.sleep(0.01)
    r.exit(404)

async def sleep0_exit204(r):
    await asyncio.sleep(0)
    r.exit(204)

async def future(r):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "from future")
    await r.say(await fut)

async def returns_value(r):
    await r.say("returned")
    return 42

async def returns_value_late(r):
    await asyncio.sleep(0)
    await r.say("returned late")
    return "x"

async def swallow_then_say(r):
    try:
        await asyncio.sleep(0)
        raise KeyError("k")
    except KeyError:
        pass
    await asyncio.sleep(0.001)
    await r.say("recovered")

class Callable:
    async def __call__(self, r):
        await asyncio.sleep(0)
        await r.say("callable object")

callable_obj = Callable()

async def access_sleep(r):
    await asyncio.sleep(0)

async def phased(r):
    await asyncio.sleep(0)
    await r.say("phased")
'''

CONTENT_ONLY = ("hello", "boom", "boom_late", "teapot", "exit200", "go", "sized_exit",
                "sleep0", "sleep0_raise", "sleep_exit", "sleep0_exit204", "future",
                "returns_value", "returns_value_late", "swallow_then_say", "callable_obj")

PIPELINE = Server(
    config='''
        workers = 0
        [[server]]
        listen = "127.0.0.1:{port}"
        keepalive_timeout = "5s"
        keepalive_requests = 5
    ''' + "".join(f'''
        [[server.location]]
        path = "= /{name}"
        content = "app:{name}"
    ''' for name in CONTENT_ONLY) + '''
        [[server.location]]
        path = "/old/"
        rewrite = "app:rewrite"
        [[server.location]]
        path = "/loop/"
        rewrite = "app:loop_rewrite"
        [[server.location]]
        path = "/new/"
        access = "app:deny"
        content = "app:new"
        header_filter = "app:add_header"
        body_filter = "app:upper"
        log = "app:log_phase"
        [[server.location]]
        path = "= /phased"
        access = "app:access_sleep"
        content = "app:phased"
    ''',
    files={"app.py": PIPELINE_APP},
    modes=BOTH)


def stepped(path: str, status: int, body: str | None, error_log: tuple[str, ...] = ()) -> Case:
    """A content handler stepped by the request path: twice on one connection (the
    first answer must leave the connection usable), then /hello on it."""
    return Case(f"content handler {path} answers {status} and keeps the connection",
                [f"GET {path}", f"GET {path}", "GET /hello"],
                status=[status, status, 200], body=[body, body, "hello\n"],
                headers=[{"Connection": "keep-alive"}, {"Connection": "keep-alive"}, {}],
                error_log=error_log, check=no_repeated_fields)


test_phase_pipeline = cases(PIPELINE, [
    # rewrite -> access -> content -> header_filter -> body_filter -> log
    Case("access ends the request without the token", "GET /old/thing", status=403),
    Case("rewrite re-matches, access passes, filters change the answer, log runs after",
         "GET /old/thing", more_headers={"X-Token": "secret"},
         status=200, body="NEW /NEW/THING TRUE ALICE\n", headers={"X-Filtered": "yes"},
         error_log=[r"log phase saw /new/thing 200"]),
    Case("a rewrite cycle is a 500", "GET /loop/x", status=500,
         error_log=[r"rewrite or internal redirection cycle"]),

    # content: errors
    Case("a handler exception is a 500 and the worker keeps serving", "GET /boom",
         status=500, body=like("500 Internal Server Error"),
         error_log=[r"\[error\] .*handler failed on GET /boom", "RuntimeError: handler exploded"],
         check=still_serving),
    Case("an exception after the head cuts the connection",
         b"GET /boom_late HTTP/1.1\r\nHost: x\r\n\r\n",
         reply_like=[rb"\AHTTP/1\.1 200", b"partial"],
         reply_unlike=rb"0\r\n\r\n\Z",      # no clean end: the client sees the failure
         check=still_serving),

    # content: exit() and redirect()
    Case("exit() discards the output and sends the status page", "GET /teapot",
         status=418, body_unlike="discarded"),
    Case("exit(200) keeps the output", "GET /exit200", status=200, body="kept\n"),
    Case("redirect()", "GET /go", status=301, headers={"Location": "/hello"}),
    # exit()/redirect() replace the body with an error page but kept a
    # Content-Length the handler had already set: the head announced 2 bytes and
    # ~150 followed, so a keepalive client read the rest as the next response
    # (RFC 9112 §6.3: the framing must match the body sent).
    Case("the error page of exit() drops the handler's Content-Length",
         b"GET /sized_exit HTTP/1.1\r\nHost: x\r\n\r\n"
         b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
         status=[404, 200], body=[like("404 Not Found"), "hello\n"]),

    # content handlers that suspend or return values, stepped with __await__
    stepped("/sleep0", 200, "after sleep0\n"),
    stepped("/sleep0_raise", 500, None, error_log=(
        r"\[error\] .*handler failed on GET /sleep0_raise", "RuntimeError: late boom")),
    stepped("/sleep_exit", 404, None),
    stepped("/sleep0_exit204", 204, ""),
    stepped("/future", 200, "from future\n"),
    stepped("/returns_value", 200, "returned\n"),
    stepped("/returns_value_late", 200, "returned late\n"),
    stepped("/swallow_then_say", 200, "recovered\n"),
    stepped("/callable_obj", 200, "callable object\n"),
    stepped("/phased", 200, "phased\n"),
])


# -- a master and one worker: exit() in every phase, logging, returned values ------

EXITS_APP = '''
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

LOGGING_APP = '''
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

EXITS = Server(
    config='''
        workers = 1
        error_log_level = "info"
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
        [[server.location]]
        path = "= /speak"
        content = "logs:speak"
        [[server.location]]
        path = "= /guarded"
        access = "logs:deny"
        content = "logs:ok"
    ''',
    files={"app.py": EXITS_APP, "logs.py": LOGGING_APP},
    modes=BOTH)


def one_attempt_line(run: Run) -> None:
    assert run.log.count("attempt to set status") == 1, run.log


def warned_once(run: Run) -> None:
    assert run.log.count("returned 403") == 1, run.log


def header_exit(path: str) -> Case:
    return Case(f"exit() in header_filter replaces the response ({path})", f"GET {path}",
                status=403, body=like("403"), body_unlike="one|two",
                headers={"X-Filtered": None, "Content-Type": "text/html"},
                no_error_log=[r"\[error\]"])


test_exit_and_logging = cases(EXITS, [
    Case("exit() is not swallowed by except Exception", "GET /swallowed",
         status=403, body_unlike="swallowed", headers={"Content-Type": "text/html"}),
    Case("exit() inside a TaskGroup ends the request", "GET /taskgroup",
         status=401, body_unlike="went on"),
    header_exit("/header-exit"),
    header_exit("/header-exit-buffered"),
    Case("exit() in body_filter ends the body and keeps the connection",
         b"GET /body-exit HTTP/1.1\r\nHost: a\r\n\r\n"
         b"GET /body-exit-buffered HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
         status=[200, 200], headers=[{"Transfer-Encoding": "chunked"}, {}],
         reply_like=[rb"\r\n\r\n4\r\none\n\r\n0\r\n\r\nHTTP/1\.1 200 ",   # "two", "three" dropped
                     rb"Content-Length: 0\r\nConnection: close\r\n\r\n\Z"],
         no_error_log=[r"\[error\]"]),
    Case("exit() after the response started is logged once with its place", "GET /late?status=500",
         status=200, body="partial\n",
         error_log=[r"\[error\] .*attempt to set status 500 via r\.exit\(\) after "
                    r"sending out the response status 200 at \S+app\.py:\d+.*/late\?status=500"],
         check=one_attempt_line),
    Case("exit(200) after the response started is an ending, not an error",
         "GET /late?status=200", body="partial\n", no_error_log=["attempt to set status"]),
    Case("an expired asyncio timeout is a 500, not a 408", "GET /timeout", status=500,
         error_log=[r"\[error\] .*handler failed on GET /timeout"]),
    Case("exit() in the log phase is an error line", "GET /log-exit", status=200,
         error_log=[r"\[error\] .*r\.exit\(500\) in the log phase does nothing"]),
    Case("exits on one keepalive connection are answered in order",
         b"GET /swallowed HTTP/1.1\r\nHost: a\r\n\r\n"
         b"GET /taskgroup HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
         status=[403, 401]),
    Case("handler logging reaches the error log in nginx's format", "GET /speak",
         body="spoke\n",
         error_log=[rf"\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d \[{level}\] \d+#0: .*{text}"
                    for level, text in (("info", "an info line"), ("warn", "a warning line"),
                                        ("error", "an error line"), ("notice", "a printed line"),
                                        ("warn", "a python warning"))],
         no_error_log=["a debug line"]),
    Case("a returned status is ignored and warned once", ["GET /guarded"] * 3,
         status=200, body="ok\n",
         error_log=[r"\[warn\] .*access handler logs:deny returned 403; use r\.exit\(403\)"],
         check=warned_once),
])

