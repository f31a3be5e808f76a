"""The page ``pyresty`` serves when started without ``-c``."""
from __future__ import annotations

import pyresty.runtime.worker as worker
from pyresty.server.request import Request

_PAGE = """<!DOCTYPE html>
<html>
<head><title>Welcome to pyresty!</title></head>
<body>
<h1>Welcome to pyresty!</h1>
<p>If you see this page, pyresty is running. Start it with <code>-c pyresty.toml</code>
to serve your own handlers; see README.md for the config reference.</p>
<p>Served by worker {worker}.</p>
</body>
</html>
"""


async def page(r: Request) -> None:
    r.headers_out["Content-Type"] = "text/html"
    await r.print(_PAGE.format(worker=worker.id()))
