"""``pyresty --dev``: reload the workers when a file under code_path or the config changes."""
from __future__ import annotations

import logging
import os
import signal
import threading

from pyresty.config.model import Config

log = logging.getLogger("pyresty.master")


def start_watcher(config: Config, master_pid: int) -> threading.Thread:
    """Watch in a daemon thread; a change sends the master SIGHUP (a normal reload,
    so a syntax error is logged by the new workers and the old ones keep serving)."""
    from watchfiles import watch

    paths = [p for p in config.code_path if os.path.isdir(p)]
    if config.path != "<builtin>":
        paths.append(config.path)

    def run() -> None:
        for changes in watch(*paths, debounce=200, rust_timeout=1000):
            names = sorted({os.path.basename(path) for _, path in changes})
            log.info("--dev: %s changed; reloading", ", ".join(names))
            os.kill(master_pid, signal.SIGHUP)

    thread = threading.Thread(target=run, name="pyresty-dev-watch", daemon=True)
    thread.start()
    return thread
