"""The exit codes of the ``pyresty`` command and of the processes it starts.

    EXIT_OK            done; a worker that shut down as asked
    EXIT_FAILURE       the command failed, or the server could not start; the reason is on stderr
    WORKER_BOOT_ERROR  a worker could not boot (broken config or code): the master does not
                       respawn it in a loop (gunicorn's ``WORKER_BOOT_ERROR``)
"""
from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
WORKER_BOOT_ERROR: Final = 3
