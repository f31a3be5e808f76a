"""Background work of the quickstart: a heartbeat that runs in one process only."""
import logging

import pyresty

log = logging.getLogger("pyresty.app")


async def heartbeat(premature: bool) -> None:
    if premature:           # the process is exiting: no more work, return promptly
        return
    beats = await pyresty.shared["counters"].incr("heartbeats", 1, init=0)
    log.info("heartbeat %d from worker %s", beats, pyresty.worker.id())


def start() -> None:
    pyresty.timer.every(5, heartbeat, once=True)
