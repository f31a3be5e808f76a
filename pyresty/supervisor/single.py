"""``workers = 0``: one process that is master and worker at once (no reload)."""
from __future__ import annotations

import logging
import os

from pyresty import errorlog, purepython
from pyresty.config.model import Config
from pyresty.supervisor import listeners
from pyresty.supervisor.pidfile import remove_pid, running_master, write_pid
from pyresty.supervisor.worker import HttpLayer, WorkerProcess
from pyresty.runtime.identity import Role

log = logging.getLogger("pyresty.process")


def run_single(config: Config, http: HttpLayer) -> int:
    other = running_master(config.pid)
    if other is not None:
        log.critical("pyresty is already running (pid %d, %s); not starting", other, config.pid)
        return 1
    try:
        sockets = listeners.bind_all(listeners.listens_of(config))
    except OSError as exc:
        log.critical("cannot listen: %s", exc)
        return 1
    if config.shared:
        from pyresty.runtime import shared
        shared.wipe(config.shared, shared.base_dir_for(config.prefix))
    write_pid(config.pid)
    for listen in sockets:
        log.info("listening on %s", listen)
    log.log(errorlog.NOTICE, "%s", purepython.describe())
    try:
        worker = WorkerProcess(config, Role.SINGLE, 0, 0, list(sockets.items()), None, os.getpid(),
                               http)
        return worker.run()
    finally:
        remove_pid(config.pid)
