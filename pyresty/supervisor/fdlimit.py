"""The open-file limit of a worker: ``worker_rlimit_nofile`` (nginx's directive).

A worker needs a descriptor per client connection, per upstream connection,
per open file and per log. Linux starts processes with a soft limit of 1024
(the hard limit is usually far higher), which a few hundred keepalive clients
and their upstream connections exhaust. So each worker raises its soft limit
when it starts: to ``worker_rlimit_nofile`` when set (the hard limit too when
the process may, i.e. as root), else to the hard limit. Either way the result
is logged, and a limit below ``worker_connections`` is a warning, in nginx's
words ("worker_connections exceed open file resource limit").
"""
from __future__ import annotations

import logging
import resource

from pyresty.config.model import Config
from pyresty.errorlog import ALERT

log = logging.getLogger("pyresty.process")


def apply_nofile(config: Config) -> int:
    """Set this process's RLIMIT_NOFILE from ``config``; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.worker_rlimit_nofile
    if wanted is None:
        target = (soft, hard) if hard == resource.RLIM_INFINITY else (hard, hard)
    else:
        target = (wanted, hard if hard == resource.RLIM_INFINITY else max(hard, wanted))
    if target != (soft, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
        except (OSError, ValueError) as exc:
            log.log(ALERT, "setrlimit(RLIMIT_NOFILE, %d) failed (%s); the limit stays %d "
                    "(worker_rlimit_nofile)", target[0], exc, soft)
        else:
            log.info("open file limit %d (was %d; worker_rlimit_nofile %s)", target[0], soft,
                     wanted if wanted is not None else "not set: raised to the hard limit")
            soft = target[0]
    if config.worker_connections > soft:
        log.warning("%d worker_connections exceed open file resource limit: %d",
                    config.worker_connections, soft)
    return soft
