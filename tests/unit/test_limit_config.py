"""Traffic control in the config: zones, location limits, and every error with its key path;
the log throttle of location limits."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pyresty.config import LimitUse, LimitZone, load
from pyresty.errors import ConfigError
from pyresty.server.limits import _Throttle

pytestmark = pytest.mark.timeout(30)

BASE = """\
[shared]
limits = "10m"
remote = { backend = "redis://127.0.0.1:6379/0" }

[limit_req.api]
dict = "limits"
key = "remote_addr"
rate = "10r/s"

[limit_req.slow]
dict = "remote"
key = "arg:token"
rate = "600r/m"

[limit_conn.perip]
dict = "limits"
key = "remote_addr"

[limit_count.hourly]
dict = "limits"
key = "header:X-Api-Key"
limit = 1000
window = "1h"

[limit_count.custom]
dict = "limits"
key = "app.keys:tenant"
limit = 5
window = 60

[[server]]
listen = "127.0.0.1:8080"

[[server.location]]
path = "/api/"
limit_req = { zone = "api", burst = 20, nodelay = true }
limit_conn = { zone = "perip", max = 10 }
limit_count = { zone = "hourly" }
limit_status = 503
limit_headers = false
limit_log_level = "notice"
limit_fail = "closed"

[[server.location]]
path = "/two/"
limit_req = [{ zone = "api", burst = 5, delay = 2 }, { zone = "slow" }]
limit_count = [{ zone = "custom" }]

[[server.location]]
path = "/free/"
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "pyresty.toml"
    path.write_text(textwrap.dedent(text))
    return load(str(path))


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return [line.split(": ", 1)[1] for line in info.value.problems]


def test_every_form_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE)
    assert config.limit_zone("req", "api") == LimitZone("req", "api", "limits", "remote_addr", rate=10.0)
    assert config.limit_zone("req", "slow").rate == 10.0                 # 600r/m
    assert config.limit_zone("count", "hourly") == LimitZone(
        "count", "hourly", "limits", "header:X-Api-Key", limit=1000, window=3600.0)
    api, two, free = config.servers[0].locations
    assert api.limit_req == (LimitUse("api", burst=20, nodelay=True),)
    assert api.limit_conn == (LimitUse("perip", max=10),)
    assert api.limit_count == (LimitUse("hourly"),)
    assert (api.limit_status, api.limit_headers, api.limit_log_level, api.limit_fail) == \
        (503, False, "notice", "closed")
    assert two.limit_req == (LimitUse("api", burst=5, delay=2), LimitUse("slow"))
    assert (two.limit_status, two.limit_headers, two.limit_log_level, two.limit_fail) == \
        (429, True, "warn", "open")
    assert api.limited and two.limited and not free.limited
    # the key function is imported by `pyresty -t` like every handler
    assert ("limit_count.custom.key", "app.keys:tenant") in config.handler_strings()
    with pytest.raises(KeyError):
        config.limit_zone("req", "perip")


@pytest.mark.parametrize("change, problem", [
    (('rate = "10r/s"', 'rate = "10r/h"'),
     'limit_req.api.rate: invalid value "10r/h" (expected a rate like "10r/s" or "600r/m")'),
    (('rate = "10r/s"', 'rate = "0r/s"'),
     'limit_req.api.rate: invalid value "0r/s" (expected a rate like "10r/s" or "600r/m" above 0)'),
    (('rate = "10r/s"', "rate = 10"),
     'limit_req.api.rate: invalid value 10 (expected a rate like "10r/s" or "600r/m")'),
    (('dict = "remote"', 'dict = "remot"'),
     'limit_req.slow.dict: unknown shared dict "remot" (known: limits, remote)'),
    (('key = "arg:token"', 'key = "cookie"'),
     'limit_req.slow.key: invalid value "cookie" (expected remote_addr, "header:NAME", '
     '"arg:NAME" or "module:function")'),
    (('key = "header:X-Api-Key"', 'key = "header:X Api"'),
     'limit_count.hourly.key: invalid value "header:X Api" (expected remote_addr, "header:NAME", '
     '"arg:NAME" or "module:function" (NAME: a header field name))'),
    (("limit = 1000", "limit = 0"), "limit_count.hourly.limit: invalid value 0 (expected an integer >= 1)"),
    (('window = "1h"', 'window = "0s"'), 'limit_count.hourly.window: invalid value "0s" (expected a duration > 0)'),
    (("limit = 1000\n", ""), 'limit_count.hourly: missing required key "limit"'),
    (('zone = "hourly" }', 'zone = "hourlY" }'),
     'server[0].location[0].limit_count.zone: unknown limit_count zone "hourlY" (known: custom, hourly)'),
    (('zone = "perip", max = 10', 'zone = "perip"'),
     'server[0].location[0].limit_conn: missing required key "max"'),
    (('zone = "perip", max = 10', 'zone = "perip", max = 0'),
     "server[0].location[0].limit_conn.max: invalid value 0 (expected an integer >= 1)"),
    (("burst = 5, delay = 2", "burst = 5, delay = 2, nodelay = true"),
     "server[0].location[1].limit_req[0].delay: delay and nodelay exclude each other"),
    (('{ zone = "slow" }', '{ zone = "slow", brust = 1 }'),
     'server[0].location[1].limit_req[1].brust: unknown key (did you mean "burst"?)'),
    (('limit_count = [{ zone = "custom" }]', 'limit_count = "custom"'),
     'server[0].location[1].limit_count: invalid value "custom" '
     '(expected { zone = "NAME", ... } or an array of them)'),
    (("limit_status = 503", "limit_status = 200"),
     "server[0].location[0].limit_status: invalid value 200 (expected a status code 400..599)"),
    (('limit_fail = "closed"', 'limit_fail = "shut"'),
     'server[0].location[0].limit_fail: invalid value "shut" (expected one of open, closed)'),
    (('limit_log_level = "notice"', 'limit_log_level = "crit"'),
     'server[0].location[0].limit_log_level: invalid value "crit" (expected one of info, notice, warn, error)'),
    (("[limit_conn.perip]", "[limit_conn.api]"),
     'limit_conn.api: zone name "api" is also used by [limit_req.api]'),
])
def test_errors_name_the_key(tmp_path: Path, change: tuple[str, str], problem: str) -> None:
    assert problem in _problems(tmp_path, BASE.replace(*change))


def test_zones_need_a_shared_dict(tmp_path: Path) -> None:
    text = BASE.replace('[shared]\nlimits = "10m"\nremote = { backend = "redis://127.0.0.1:6379/0" }\n', "")
    problems = _problems(tmp_path, text)
    assert 'limit_req.api.dict: unknown shared dict "limits" (known: none; add one under [shared])' \
        in problems


def test_the_log_throttle_counts_what_it_leaves_out() -> None:
    throttle = _Throttle(3)
    assert [throttle.allow(100.1) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert throttle.allow(100.9) == (False, 0)
    assert throttle.allow(101.0) == (True, 3)         # a new second: 3 were left out
    assert throttle.allow(101.5) == (True, 0)
