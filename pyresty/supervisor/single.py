"""``workers = 0``: one process that is master and worker at once (no reload).

The process serves what a master would beside its HTTP traffic: the control
socket (``pyresty status``, ``pyresty drain``) and, when configured, the
``[status]`` listener, both on its own event loop with the answers
``control.py`` builds for the master. A reload needs a master and is refused.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from pyresty import errorlog, purepython
from pyresty.config.model import Config
from pyresty.runtime import lifecycle
from pyresty.runtime.identity import Role
from pyresty.supervisor import listeners, terminal
from pyresty.supervisor.control import (HEAD_END, IO_TIMEOUT, MAX_HEAD, bind_control_socket,
                                        control_reply, remove_control_socket, status_reply)
from pyresty.supervisor.channel import BootFailed, Message
from pyresty.supervisor.exitcodes import EXIT_FAILURE
from pyresty.supervisor.pidfile import remove_pid, running_master, write_pid
from pyresty.supervisor.table import Row, serving_row
from pyresty.supervisor.worker import HttpLayer, WorkerProcess

log = logging.getLogger("pyresty.process")

RELOAD_NEEDS_A_MASTER = ("reload needs a master process (workers >= 1); restart a single-process "
                         "server instead")


def run_single(config: Config, http: HttpLayer) -> int:
    other = running_master(config.pid)
    if other is not None:
        terminal.fatal(config, f"already running (pid {other}, {config.pid}); not starting")
        return EXIT_FAILURE
    try:
        sockets = listeners.bind_all(listeners.listens_of(config))
    except OSError as exc:
        terminal.fatal(config, str(exc))
        return EXIT_FAILURE
    if config.shared:
        from pyresty.runtime import shared
        shared.wipe(config.shared, shared.base_dir_for(config.prefix))
    write_pid(config.pid)
    for listen in sockets:
        log.info("listening on %s", listen)
    log.log(errorlog.NOTICE, "%s", purepython.describe())
    try:
        process = SingleProcess(config, Role.SINGLE, 0, 0, list(sockets.items()), None,
                                os.getpid(), http)
        return process.run()
    finally:
        remove_pid(config.pid)
        if config.shared:
            from pyresty.runtime import shared
            shared.remove(shared.base_dir_for(config.prefix))


class SingleProcess(WorkerProcess):
    """The worker of ``workers = 0``, which also answers ``status`` and ``drain``."""

    draining = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._answering: list[asyncio.AbstractServer] = []

    async def _boot(self) -> None:
        await super()._boot()
        config = self.config
        try:
            control = bind_control_socket(config.control_socket)
            self._answering.append(await asyncio.start_unix_server(self._control, sock=control))
            if config.status.listen is not None:
                status = listeners.bind(config.status.listen, " (the status listener)")
                self._answering.append(await asyncio.start_server(self._status, sock=status,
                                                                  limit=MAX_HEAD))
            lifecycle.register("control socket", lifecycle.Layer.SERVER,
                               close=self._close_answering)   # answers `status` until the end
        except OSError as exc:
            self._close_answering()
            terminal.fatal(config, str(exc) if isinstance(exc, listeners.ListenError) else
                           f"cannot open the control socket {config.control_socket}: "
                           f"{exc.strerror or exc}")
            raise SystemExit(EXIT_FAILURE) from exc
        terminal.announce(config, [str(listen) for listen, _ in self.sockets])

    def _send(self, message: Message) -> None:
        # no master to tell: a boot failure goes to the terminal (the log has it too)
        if isinstance(message, BootFailed) and self.config.error_log != "stderr":
            print(f"pyresty: cannot start: {message.reason}", file=sys.stderr, flush=True)

    def _close_answering(self) -> None:
        for server in self._answering:
            server.close()
        if self._answering:
            remove_control_socket(self.config.control_socket)
        self._answering.clear()

    # control.Supervised
    def rows(self) -> list[Row]:
        state = self.state
        if state == "serving" and self.draining:
            state = "draining"
        elif state == "shutting down":
            state = f"shutting down for {self.loop.time() - self.shutdown_started:.1f} s"
        return [serving_row("single", 0, os.getpid(), 0, state, self.stats())]

    def drain(self) -> None:
        if self.server is not None:
            self.server.drain()
        if not self.draining:
            log.log(errorlog.NOTICE, "draining: keepalive off, /status answers 503")
        self.draining = True

    def resume(self) -> None:
        if self.server is not None and self.stop_kind is None:
            self.server.resume_keepalive()
        if self.draining:
            log.log(errorlog.NOTICE, "drain cancelled: keepalive back on")
        self.draining = False

    def request_reload(self) -> tuple[str, str]:
        return "refused", RELOAD_NEEDS_A_MASTER

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer() -> None:
            line = await reader.readline()
            writer.write(control_reply(self, line.rstrip(b"\n")))
            await writer.drain()
        await _bounded(answer(), writer)

    async def _status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer() -> None:
            head = await reader.readuntil(HEAD_END)
            writer.write(status_reply(self, head))
            await writer.drain()
        await _bounded(answer(), writer)


async def _bounded(exchange: object, writer: asyncio.StreamWriter) -> None:
    """One exchange within IO_TIMEOUT (a slow client gets nothing), then close."""
    deadline = time.monotonic() + IO_TIMEOUT
    try:
        await asyncio.wait_for(exchange, deadline - time.monotonic())  # type: ignore[arg-type]
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()
