"""A chat room across workers, on ``pyresty.websocket`` and a shared dict.

A message gets the next number from ``incr("seq")`` and is stored under
``msg:<n>`` for a minute; every worker's timer reads the numbers it has not
seen yet and sends those messages to the WebSockets it holds. When the worker
shuts down (reload, ``pyresty drain``), ``ws.going_away`` turns true: the page
is told to reconnect, and a new worker takes it.
"""
from __future__ import annotations

import json
import logging

import pyresty

log = logging.getLogger("pyresty.app")

POLL = 0.05          # s between two looks at the room (the latency a message may take)
KEEP = 60            # s a message stays in the dict
sockets: set[pyresty.websocket.WebSocket] = set()
seen = 0


async def start() -> None:
    global seen
    seen = int(await pyresty.shared["chat"].get("seq") or 0)
    pyresty.timer.every(POLL, deliver)


async def deliver(premature: bool) -> None:
    """Send the room's new messages to this worker's sockets."""
    global seen
    if premature:
        return
    room = pyresty.shared["chat"]
    last = int(await room.get("seq") or 0)
    while seen < last:
        seen += 1
        text = await room.get(f"msg:{seen}")
        if text is None:
            continue          # expired, or its writer has not stored it yet: skipped
        for ws in list(sockets):
            try:
                await ws.send(text)
            except pyresty.WebSocketClosed:
                sockets.discard(ws)


async def join(r: pyresty.Request) -> None:
    ws = await pyresty.websocket.accept(r, compress=True, max_message_size=4096,
                                        ping_interval=20)
    name = r.args.get("name", ["anonymous"])[0][:32]
    sockets.add(ws)
    try:
        await say(f"{name} joined (worker {pyresty.worker.id()})")
        async for message in ws:
            if ws.going_away:
                await ws.send(json.dumps({"system": "this worker is going away: reconnecting"}))
                break
            await say(f"{name}: {str(message)[:1000]}")
    finally:
        sockets.discard(ws)
    if ws.close_code not in (None, 1000, 1001, 1005):
        log.info("%s left with %s %s", name, ws.close_code, ws.close_reason)


async def say(text: str) -> None:
    room = pyresty.shared["chat"]
    n = await room.incr("seq", 1, init=0)
    await room.set(f"msg:{n}", json.dumps({"text": text}), ttl=KEEP)
