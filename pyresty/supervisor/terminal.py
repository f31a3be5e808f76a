"""What the operator reads on the terminal while a foreground server starts.

Rules:
- Until the server is up, every fatal reason (and a warning that it is not
  up yet) goes to stderr as well as to the error log (``make run`` on a taken
  port must not print only make's ``Error 1``), unless the error log *is*
  stderr: then once is enough.
- Once up, one line on stdout says where it listens, where the logs are and
  how to stop it; after that the terminal stays quiet (the logs have the rest).
"""
from __future__ import annotations

import logging
import sys

from pyresty import errorlog
from pyresty.config.model import Config

log = logging.getLogger("pyresty.master")


def fatal(config: Config, message: str) -> None:
    """``message`` (why the server cannot start) to the error log and to stderr."""
    log.log(errorlog.EMERG, "%s", message)
    if config.error_log != "stderr":
        print(f"pyresty: {message}", file=sys.stderr, flush=True)


def warn(config: Config, message: str) -> None:
    """``message`` (why the server is not up yet) to the error log and to stderr."""
    log.warning("%s", message)
    if config.error_log != "stderr":
        print(f"pyresty: {message}", file=sys.stderr, flush=True)


def announce(config: Config, listens: list[str]) -> None:
    """The one line saying the server is up."""
    where = ", ".join(f"http://{listen}" for listen in listens) or "no address"
    status = f"; status at http://{config.status.listen}/status" if config.status.listen else ""
    logs = "stderr" if config.error_log == "stderr" else config.error_log
    stop = "Ctrl-C"
    if config.path != "<builtin>":
        stop += f", or pyresty -s quit -c {config.path}"
    print(f"pyresty: serving on {where}{status}; error log: {logs}; stop with {stop}",
          flush=True)
