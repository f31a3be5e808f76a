"""The signal table: what each signal means to the master (SPEC §2, §4).

    command   signal    the master                   a worker
    reload    HUP       new generation, old one quits (ignored; single process: warns)
    quit      QUIT      graceful shutdown            graceful shutdown
    stop      TERM      fast shutdown                fast shutdown
    -         INT       fast shutdown (Ctrl-C)       fast shutdown
    reopen    USR1      reopen logs, tell workers    reopen logs

``pyresty -s COMMAND`` and ``pyresty.process.signal_master(COMMAND)`` send
``COMMANDS[COMMAND]``; the master catches ``CAUGHT`` (CHLD only wakes its loop)
and dispatches each to ``Master.handle_<name>``.
"""
from __future__ import annotations

import signal
from typing import Final

COMMANDS: Final = {
    "reload": signal.SIGHUP,
    "quit": signal.SIGQUIT,
    "stop": signal.SIGTERM,
    "reopen": signal.SIGUSR1,
}

CAUGHT: Final = (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                 signal.SIGCHLD)


def handler_name(signum: int) -> str:
    """``handle_hup`` for SIGHUP: the master method that acts on ``signum``."""
    return "handle_" + signal.Signals(signum).name.removeprefix("SIG").lower()
