"""Where limiter state lives: one atomic read-decide-write per decision.

Rules
-----
- A decision over any number of limiters on ONE shared dict is one atomic
  operation: an LMDB write transaction (``EmbeddedDict.update``) on the
  embedded store, one Lua script (``EVALSHA``) on a ``redis://`` dict. So N
  workers, or N servers sharing one Redis, admit exactly what one would.
- The clock is read inside that operation: ``CLOCK_MONOTONIC`` on the embedded
  store (one clock for every process of the machine), Redis's ``TIME`` on
  Redis (one clock for every server sharing it, whatever their own clocks say).
- Limiter state is stored as ordinary entries of the dict, under keys the
  caller builds (``limit_req:<zone>:<key>``...), with the dict's own value
  encoding, so ``shared["limits"].get(...)`` shows it and capacity, eviction and
  ``flush_all`` apply to it as to anything else.
- An embedded decision never suspends; ``decide_now``/``undo_now`` run it
  synchronously. A Redis decision is bounded by ``REDIS_TIMEOUT``. Either
  failure is raised as ``SharedDictError``.

The Lua below is ``rules.py`` again, line for line; the system tests compare
both stores with the same rules, and the unit tests compare ``rules.py`` with a
leaky bucket.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from redis.exceptions import RedisError

from pyresty.errors import SharedDictError
from pyresty.runtime.limit.rules import UNCHANGED, Decision, Rule, decide_all
from pyresty.runtime.shared.contract import SharedDict
from pyresty.runtime.shared.embedded import EmbeddedDict
from pyresty.runtime.shared.redis_backend import RedisDict

__all__ = ["REDIS_TIMEOUT", "decide", "decide_now", "undo", "undo_now"]

# A limiter that waits longer than this for Redis has failed (limit_fail decides):
# a gateway must not hang its requests on a stuck limiter.
REDIS_TIMEOUT: Final = 1.0
# Redis's clock is Unix seconds; doubles near 1.7e9 resolve only 0.24 us, so
# the request-rate state counts from this epoch instead (resolution ~2 ns).
REDIS_EPOCH: Final = 1_600_000_000

_LUA: Final = """
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local now = (sec - %(epoch)d) + usec / 1e6
local wall = sec + usec / 1e6
local EPS = 1e-6
local mode = ARGV[1]
local function load(raw)
  if not raw then return nil end
  local c = string.sub(raw, 1, 1)
  if c == 'f' then return tonumber(string.sub(raw, 2)) end
  if c == 's' then return string.sub(raw, 2) end
  if (c >= '0' and c <= '9') or c == '-' then return tonumber(raw) end
  return nil
end
local function num(x) return string.format('%%.17g', x) end
local out, news, ttls, all = {}, {}, {}, true
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
  local kind, p1, p2, p3 = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local state = load(redis.call('GET', KEYS[i]))
  local ok, delay, rem, reset, retry, new, ttl = 1, 0, 0, 0, 0, nil, nil
  if kind == 'req' then
    local T, tau = p1, p2
    if type(state) ~= 'number' then state = nil end
    if mode == 'u' then
      if state and state > now then
        if state - T > now then new = 'f' .. num(state - T); ttl = state - T - now else new = false end
      end
    else
      local tat = now
      if state and state > now then tat = state end
      local ahead = tat - now
      if ahead > tau + EPS then
        ok, reset, retry = 0, ahead, ahead - tau
      else
        local nt = tat + T
        local left = (tau - ahead) / T
        if left > 0 then rem = math.floor(left + EPS) end
        delay, reset, new, ttl = ahead, nt - now, 'f' .. num(nt), nt - now
      end
    end
  elseif kind == 'count' then
    local limit, win = p1, p2
    local index = math.floor(wall / win)
    local tag = string.format('%%d', index)
    local used = 0
    if type(state) == 'string' then
      local w, c = string.match(state, '^(-?%%d+):(%%d+)$')
      if w == tag then used = tonumber(c) end
    end
    reset = (index + 1) * win - wall
    if mode == 'u' then
      if used > 1 then new = 's' .. tag .. ':' .. (used - 1); ttl = reset
      elseif used == 1 then new = false end
    elseif used + 1 > limit then
      ok, retry = 0, reset
    else
      used = used + 1
      rem, new, ttl = limit - used, 's' .. tag .. ':' .. used, reset
    end
  else
    local max, burst, step = p1, p2, p3
    local held = 0
    if type(state) == 'number' and state > 0 then held = state end
    if mode == 'u' then
      if held > 1 then new = string.format('%%d', held - 1) elseif held == 1 then new = false end
    else
      local n = held + 1
      if n > max + burst then
        ok, retry = 0, 1
      else
        if n > max then delay = step * math.floor((n - 1) / max) end
        rem, new = max + burst - n, string.format('%%d', n)
      end
    end
  end
  if ok == 0 then all = false end
  news[i], ttls[i] = new, ttl
  out[#out + 1] = tostring(ok)
  out[#out + 1] = num(delay)
  out[#out + 1] = tostring(rem)
  out[#out + 1] = num(reset)
  out[#out + 1] = num(retry)
end
if mode == 'u' or (mode == 'c' and all) then
  for i = 1, #KEYS do
    local new = news[i]
    if new == false then
      redis.call('DEL', KEYS[i])
    elseif new then
      if ttls[i] then
        redis.call('SET', KEYS[i], new, 'PX', math.ceil(ttls[i] * 1000) + 1000)
      else
        redis.call('SET', KEYS[i], new, 'KEEPTTL')
      end
    end
  end
end
return out
""" % {"epoch": REDIS_EPOCH}

_scripts: dict[int, Any] = {}


def _script(d: RedisDict) -> Any:
    client = d.client
    script = _scripts.get(id(client))
    if script is None or script.registered_client is not client:
        script = _scripts[id(client)] = client.register_script(_LUA)
    return script


def decide_now(d: EmbeddedDict, rules: Sequence[Rule], keys: list[bytes],
               commit: bool) -> list[Decision]:
    """One decision on an embedded dict, synchronously (it never waits on I/O)."""
    if len(rules) == 1 and len(keys) == 1:
        if commit:
            return [d.update_one(keys[0], rules[0].decide)]
        return [d.update_one(keys[0], _peek(rules[0]))]
    rule_list = list(rules)

    def step(values: list[Any], now: float, wall: float) -> tuple[list[Any], list[Any], list[Decision]]:
        decisions, news, ttls = decide_all(rule_list, values, now, wall, commit)
        return news, ttls, decisions

    return d.update(keys, step)


def _peek(rule: Rule) -> Any:
    def step(value: Any, now: float, wall: float) -> tuple[Decision, Any, None]:
        return rule.decide(value, now, wall)[0], UNCHANGED, None
    return step


def undo_now(d: EmbeddedDict, rules: Sequence[Rule], keys: list[bytes]) -> None:
    """Take one admission back for each rule (``uncommit``, ``leaving``), synchronously."""
    rule_list = list(rules)

    def step(values: list[Any], now: float, wall: float) -> tuple[list[Any], list[Any], None]:
        news = [rule.undo(v, now, wall) for rule, v in zip(rule_list, values)]
        ttls = [_undo_ttl(new, now) for new in news]
        return news, ttls, None

    d.update(keys, step)


def _undo_ttl(new: Any, now: float) -> Any:
    # a request-rate state is a TAT in seconds: it must live until then
    return new - now if type(new) is float else None


async def decide(d: SharedDict, rules: Sequence[Rule], keys: list[bytes],
                 commit: bool) -> list[Decision]:
    """One atomic decision over ``rules`` (state at ``keys``, full dict keys) on ``d``.

    Raises SharedDictError when the store fails (Redis unreachable or slower
    than REDIS_TIMEOUT), TypeError for a dict that is neither backend.
    """
    if isinstance(d, EmbeddedDict):
        return decide_now(d, rules, keys, commit)
    reply = await _run_script(d, "c" if commit else "p", rules, keys)
    return [Decision(reply[i] == b"1", float(reply[i + 1]), int(reply[i + 2]),
                     float(reply[i + 3]), float(reply[i + 4]))
            for i in range(0, len(reply), 5)]


async def undo(d: SharedDict, rules: Sequence[Rule], keys: list[bytes]) -> None:
    """Take one admission back for each rule. Raises as ``decide`` does."""
    if isinstance(d, EmbeddedDict):
        undo_now(d, rules, keys)
        return
    await _run_script(d, "u", rules, keys)


async def _run_script(d: SharedDict, mode: str, rules: Sequence[Rule], keys: list[bytes]) -> Any:
    if not isinstance(d, RedisDict):
        raise TypeError(f"shared dict {d.name!r}: limits need the embedded or a redis:// backend")
    args: list[str] = [mode]
    for rule in rules:
        params = rule.params()
        args += [rule.kind, *params, *("0",) * (3 - len(params))]
    names = [d.value_key(key) for key in keys]
    try:
        # wait_for, not asyncio.timeout: a limiter may be called from code that
        # runs outside a Task (a plain coroutine stepped by hand)
        return await asyncio.wait_for(_script(d)(keys=names, args=args), REDIS_TIMEOUT)
    except TimeoutError as exc:
        raise SharedDictError(f"shared dict {d.name!r}: no answer from Redis "
                              f"within {REDIS_TIMEOUT:g} s") from exc
    except (RedisError, OSError) as exc:
        raise SharedDictError(f"shared dict {d.name!r}: {exc}") from exc
