"""Location matching as a client sees it: nginx's ``=``, ``^~``, ``~``, ``~*`` and
plain prefix rules (README "[[server.location]]"), on a real server.

Each location answers with its own ``path`` value, so a case names the location
it expects. The router's own table of rules is tests/unit/test_router.py.
"""
from __future__ import annotations

import pytest

from cases import Case, Server, cases

pytestmark = pytest.mark.timeout(60)

# The example under the `location` directive in nginx's documentation (listen 1),
# and the other rules (listen 2); each location answers with its path.
NGINX_DOC = ["= /", "/", "/documents/", "^~ /images/", r"~* \.(gif|jpg|jpeg)$"]
RULES = [
    r"~ ^/first/a", r"~ ^/first/a/b",            # regexes in file order: the first wins
    "/beaten/by/a/longer/prefix/", r"~ ^/beaten",  # a regex beats a longer plain prefix
    "^~ /stop/", r"~ ^/stop",                     # ... but not a ^~ prefix
    "^~ /shadow/", "/shadow/longer/", r"~ ^/shadow/longer/x",   # a longer plain prefix shadows ^~
    "/long/", "/long/er/",                        # the longest prefix wins whatever the order
    "/doc",                                       # a prefix is not a path segment
    "= /exact", "/exact",                         # "=" is exact only and beats everything
    r"~ \.PNG$", r"~* \.txt$",                    # "~" minds case, "~*" does not
    "/Case/",                                     # prefixes mind case
    "/rewritten/",
]

APP = '''
async def which(r):
    await r.say(r.ctx.get("from", ""), LOCATION)
'''


def _locations(specs: list[str], start: int) -> str:
    return "".join(f'''
        [[server.location]]
        path = '{spec}'
        content = "loc{start + i}:which"
    ''' for i, spec in enumerate(specs))


LOCATIONS = Server(
    config='''
        workers = 0
        [[server]]
        listen = "127.0.0.1:{port}"
    ''' + _locations(NGINX_DOC, 0) + '''
        [[server]]
        listen = "127.0.0.1:{port2}"
        [[server.location]]
        path = "/old/"
        rewrite = "move:rewrite"
    ''' + _locations(RULES, len(NGINX_DOC)),
    files={
        **{f"loc{i}.py": f"LOCATION = {spec!r}\n" + APP
           for i, spec in enumerate(NGINX_DOC + RULES)},
        "move.py": '''
            async def rewrite(r):
                r.ctx["from"] = r.path + " -> "
                r.path = "/rewritten/" + r.path[len("/old/"):]
        ''',
    })


def at(path: str, location: str | None, listen: int = 1) -> Case:
    """GET ``path`` is answered by ``location`` (None: by no location, 404)."""
    if location is None:
        return Case(f"{path} matches no location", f"GET {path}", listen=listen, status=404)
    return Case(f"{path} goes to {location}", f"GET {path}", listen=listen,
                status=200, body=location + "\n")


test_location_matching = cases(LOCATIONS, [
    # nginx's documentation, cases A to E
    at("/", "= /", listen=0),
    at("/index.html", "/", listen=0),
    at("/documents/document.html", "/documents/", listen=0),
    at("/images/1.gif", "^~ /images/", listen=0),
    at("/documents/1.jpg", r"~* \.(gif|jpg|jpeg)$", listen=0),
    at("/documents/1.JPG", r"~* \.(gif|jpg|jpeg)$", listen=0),

    at("/first/a/b/c", r"~ ^/first/a"),
    at("/beaten/by/a/longer/prefix/x", r"~ ^/beaten"),
    at("/stop/x", "^~ /stop/"),
    at("/shadow/longer/x", r"~ ^/shadow/longer/x"),
    at("/shadow/other", "^~ /shadow/"),
    at("/long/er/x", "/long/er/"),
    at("/long/erx", "/long/"),
    at("/documents", "/doc"),
    at("/exact", "= /exact"),
    at("/exact/", "/exact"),
    at("/a/b.PNG", r"~ \.PNG$"),
    at("/a/b.png", None),
    at("/a/B.TXT", r"~* \.txt$"),
    at("/Case/x", "/Case/"),
    at("/case/x", None),
    at("/nowhere", None),
    # a rewrite that changes the path matches the location again
    Case("a rewritten path is matched again", "GET /old/thing", listen=1,
         status=200, body="/old/thing -> /rewritten/\n"),
])
