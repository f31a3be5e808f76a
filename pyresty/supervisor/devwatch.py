"""``pyresty --dev``: reload the workers when a Python source under ``code_path``
or the config file changes.

Rules:
- Watched: ``*.py`` files under each ``code_path`` folder, and the config file
  itself. Nothing else, so the server's own output never triggers a reload:
  with the default layout ``code_path = ["."]`` is the prefix, which holds
  ``logs/error.log``, the access log, the pid file and the control socket
  (watching the folder reloaded on every log line, and every reload writes
  log lines: an endless loop).
- Ignored even when they end in ``.py``: ``__pycache__``, hidden files and
  folders (editor state, ``.git``), editor temp and backup files (``.#x.py``,
  ``x.py~``, ``#x.py#``, ``x.py.swp``).
- Debounced: changes are grouped until the tree is quiet for ``QUIET_MS``
  (at most ``DEBOUNCE_MS``), and reloads are at least ``MIN_INTERVAL`` apart,
  so an editor's save-as-rename-and-write or a ``git checkout`` is one reload.
- A change sends the master SIGHUP: a normal reload, so a syntax error is
  logged by the new workers and the old ones keep serving.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from pyresty.config.model import Config

log = logging.getLogger("pyresty.master")

DEBOUNCE_MS = 1000      # the longest a burst of changes is grouped for
QUIET_MS = 200          # a burst ends after this long without a change
MIN_INTERVAL = 1.0      # s between two reloads


class Watched:
    """Which paths ``--dev`` reacts to (pure: paths in, a yes or no out)."""

    def __init__(self, config: Config) -> None:
        self.folders = tuple(os.path.realpath(p) for p in config.code_path if os.path.isdir(p))
        self.config_file = os.path.realpath(config.path) if config.path != "<builtin>" else None

    def roots(self) -> list[str]:
        """What to hand to the file watcher: the folders, and the config file's folder
        (an editor replaces the file, so its inode is not worth watching)."""
        roots = set(self.folders)
        if self.config_file is not None:
            roots.add(os.path.dirname(self.config_file))
        return sorted(roots)

    def __call__(self, path: str) -> bool:
        real = os.path.realpath(path)
        if real == self.config_file:
            return True
        name = os.path.basename(real)
        if not name.endswith(".py") or name.startswith((".", "#")):
            return False
        for folder in self.folders:
            if real.startswith(folder + os.sep):
                parts = os.path.relpath(real, folder).split(os.sep)
                return not any(part == "__pycache__" or part.startswith(".") for part in parts)
        return False


def start_watcher(config: Config, master_pid: int) -> threading.Thread:
    """Watch in a daemon thread; a change sends the master SIGHUP."""
    from watchfiles import watch

    watched = Watched(config)

    def run() -> None:
        last = 0.0
        for changes in watch(*watched.roots(), watch_filter=lambda _, path: watched(path),
                             debounce=DEBOUNCE_MS, step=QUIET_MS, rust_timeout=1000):
            wait = last + MIN_INTERVAL - time.monotonic()
            if wait > 0:
                time.sleep(wait)   # the pace of reloads, in this thread only
            names = sorted({os.path.basename(path) for _, path in changes})
            log.info("--dev: %s changed; reloading", ", ".join(names))
            last = time.monotonic()
            os.kill(master_pid, signal.SIGHUP)

    thread = threading.Thread(target=run, name="pyresty-dev-watch", daemon=True)
    thread.start()
    return thread
