"""What the operator reads on the terminal while a foreground server starts.

Rules:
- Until the server is up, every fatal reason (and a warning that it is not
  up yet) goes to stderr as well as to the error log (``make run`` on a taken
  port must not print only make's ``Error 1``), unless the error log *is*
  stderr: then once is enough.
- A terminal that has gone away (a closed pipe) is no error: the logs have it all.
- Once up, one line on stdout says where it listens, where the logs are and
  how to stop it; after that the terminal stays quiet (the logs have the rest).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from pyresty import errorlog
from pyresty.config.model import Config

log = logging.getLogger("pyresty.master")


def fatal(config: Config, message: str) -> None:
    """``message`` (why the server cannot start) to the error log and to stderr."""
    log.log(errorlog.EMERG, "%s", message)
    if config.error_log != "stderr":
        _say(sys.stderr, f"pyresty: {message}")


def warn(config: Config, message: str) -> None:
    """``message`` (why the server is not up yet) to the error log and to stderr."""
    log.warning("%s", message)
    if config.error_log != "stderr":
        _say(sys.stderr, f"pyresty: {message}")


def announce(config: Config, listens: list[str]) -> None:
    """The one line saying the server is up."""
    where = ", ".join(f"http://{listen}" for listen in listens) or "no address"
    status = f"; status at http://{config.status.listen}/status" if config.status.listen else ""
    logs = "stderr" if config.error_log == "stderr" else config.error_log
    stop = "Ctrl-C"
    if config.path != "<builtin>":
        stop += f", or pyresty -s quit -c {config.path}"
    _say(sys.stdout, f"pyresty: serving on {where}{status}; error log: {logs}; stop with {stop}")


def _say(stream: TextIO, line: str) -> None:
    """One line to the terminal, a courtesy: the error log has it too. A
    terminal that is gone (a closed pipe: the reader of ``pyresty ... | head``
    exited) must not stop the master, as this print once did at start."""
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):
        # nothing more goes there (nor the interpreter's flush at exit)
        devnull = open(os.devnull, "w")   # noqa: SIM115 - lives as long as the process
        if stream is sys.stdout:
            sys.stdout = devnull
        else:
            sys.stderr = devnull
