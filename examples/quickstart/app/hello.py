"""Content handlers of the quickstart."""
import pyresty


async def index(r: pyresty.Request) -> None:
    r.headers_out["Content-Type"] = "text/plain"
    await r.say("pyresty quickstart: try /hello, /count, /api/anything, /static/hello.txt, "
                "and http://127.0.0.1:9145/status")


async def hello(r: pyresty.Request) -> None:
    r.headers_out["Content-Type"] = "text/plain"
    await r.say("hello from worker ", pyresty.worker.id())


async def count(r: pyresty.Request) -> None:
    hits = await pyresty.shared["counters"].incr("hits", 1, init=0)
    beats = await pyresty.shared["counters"].get("heartbeats") or 0
    r.headers_out["Content-Type"] = "text/plain"
    await r.say("hits: ", hits, " (worker ", pyresty.worker.id(), "), heartbeats: ", beats)


async def backend(r: pyresty.Request) -> None:
    """The upstream of /api/: shows what a proxied request looks like."""
    r.headers_out["Content-Type"] = "text/plain"
    await r.say("backend got ", r.method, " ", r.uri, " via ", r.headers.get("X-Via"),
                " for ", r.headers.get("X-Forwarded-For"))
