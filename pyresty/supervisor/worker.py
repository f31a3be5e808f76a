"""The life of a worker (or agent, or single) process: boot, serve, shut down.

Boot, in order: identity and title, privileges dropped, error log, a fresh
uvloop loop, user code imported from ``code_path`` (fresh after every fork:
the master never imports it), shared dicts opened, timers, ``init_worker``,
listeners. A failure anywhere in boot exits with ``WORKER_BOOT_ERROR`` so the
master stops instead of respawning in a loop. A stop asked for during the
boot ends it (TERM at once, QUIT at ``worker_shutdown_timeout``: an
``init_worker`` that never returns cannot hold the process), and the process
takes the fast shutdown's path without ``exit_worker``.

A spare (``worker_spare``) boots in two halves. The first (``_load``: code
path, shared dicts opened, the timer scheduler, handlers imported, routes)
runs at once, with the loop set as the running loop but not turning: what user
code schedules at import (a timer, a task) waits, so nothing of it runs. Then
the spare reports ``SpareReady`` and blocks on its channel. ``Promote(id)``
makes it worker ``id`` (identity, log tag, title; logs reopened after a USR1) and the loop
runs the second half (``_start``: signals, upstreams, ``init_worker``,
listeners, ``Ready``): a respawn then costs one message, not a boot (issue 17).
Until then a spare has no signal handler but "retire": QUIT, TERM or INT, or
its channel closing, end it with exit 0 and nothing run (no ``exit_worker``:
``init_worker`` never ran).

Shutdown is a walk over the process's lifecycle registry
(``pyresty/runtime/lifecycle.py``), which the worker installs before anything
else: the HTTP server, the timer scheduler, pipes, shared dicts and access
logs register their steps there when they are created or first used, and the
worker never looks for them. A graceful shutdown (QUIT, or the master's
channel closing) follows SPEC §4: begin exit (1. listeners closed; 2.
keepalive stopped, idle connections closed after a short linger; 3. every
pending timer fires once with ``premature=True`` and new timers are refused);
4. requests, timer callbacks and the like get the rest of
``worker_shutdown_timeout``; 5. the deadline steps: tasks cancelled, children
killed, connections closed; 6. ``exit_worker`` runs (at most
``SHUTDOWN.exit_hook``, and never past ``worker_shutdown_timeout`` +
``SHUTDOWN.worker_slack``); then the close steps (children that user code
left running are killed there, ``runtime/children.py``), and the process exits. A fast
shutdown (TERM/INT) is the same walk without step 4. Nothing user code does
can extend these deadlines: they are the loop's timers, and the master SIGKILLs
a worker ``SHUTDOWN.kill_margin`` past its timeout in case user code blocks the
loop itself.
"""
from __future__ import annotations

import asyncio
import enum
import gc
import logging
import os
import pwd
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import setproctitle
import uvloop

from pyresty import errorlog
from pyresty.config.model import Config, Listen
from pyresty.runtime import children, context, identity, lifecycle, loader
from pyresty.runtime import timer as timers
from pyresty.runtime.identity import Role
from pyresty.runtime.lifecycle import SHUTDOWN
from pyresty.runtime.watchdog import Watchdog
from pyresty.supervisor.channel import (BootFailed, Drain, LineReader, Message, Promote, Ready,
                                       Resume, SpareReady, Stats, encode)
from pyresty.supervisor.exitcodes import WORKER_BOOT_ERROR
from pyresty.supervisor.fdlimit import apply_nofile

log = logging.getLogger("pyresty.process")

STATS_INTERVAL = 0.5       # how often a worker reports its figures to the master
BOOT_WARN = 5.0            # s a process may boot before it is named as not ready yet


class Stop(enum.Enum):
    GRACEFUL = "graceful"
    FAST = "fast"


class BootError(Exception):
    """The process cannot start serving (reported, then WORKER_BOOT_ERROR)."""


class Retired(BaseException):
    """A spare was told to go before it was promoted (raised by its signal handler,
    so that it interrupts an import as well as the wait)."""


class HttpLayer(Protocol):
    """The HTTP server a worker hosts (the module ``pyresty.server.server``).

    The command line passes it in: the supervisor starts and supervises
    processes and never imports ``http/`` or ``server/`` itself.
    """

    def open_access_logs(self, config: Config) -> dict[str, Any]: ...

    def open_tls(self, config: Config) -> dict[Listen, Any]: ...

    async def start_upstreams(self, config: Config) -> None: ...

    HttpServer: Callable[..., Any]


SPARE_TITLE = "pyresty: spare process"


def title_for(role: Role, worker_id: int | None, shutting_down: bool = False) -> str:
    if role is Role.AGENT:
        name = "pyresty: privileged agent process"
    elif role is Role.SINGLE:
        name = "pyresty: single process"
    else:
        name = f"pyresty: worker process #{worker_id}"
    return name + (" is shutting down" if shutting_down else "")


class WorkerProcess:
    """Hosts the HTTP server (none in the agent) and the runtime of one process."""

    def __init__(self, config: Config, role: Role, worker_id: int | None, generation: int,
                 sockets: Sequence[tuple[Listen, socket.socket]], channel: socket.socket | None,
                 master_pid: int, http: HttpLayer, spare: bool = False) -> None:
        self.config = config
        self.spare = spare               # waits for Promote before it runs anything (worker_spare)
        self.early: list[Message] = []   # what came with Promote, handled once serving
        self.reopen_asked = False        # a USR1 reached the spare: reopen when promoted
        self.loaded = False              # _load ran (a spare runs it before it waits)
        self.http = http
        self.reader = LineReader()
        self.role = role
        self.worker_id = worker_id
        self.generation = generation
        self.sockets = sockets
        self.channel = channel
        self.master_pid = master_pid
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.server: Any = None
        self.scheduler: timers.TimerScheduler | None = None
        self.stop_kind: Stop | None = None
        self._stop_event: asyncio.Event | None = None
        self._booting: asyncio.Future[None] | None = None   # the boot, until it ends
        self._exit_hook: Callable[..., Any] | None = None
        self.state = "starting"
        self.shutdown_started = 0.0
        self.access_logs: dict[str, Any] = {}
        self.tls: dict[Listen, Any] = {}
        self.lifecycle = lifecycle.Registry(SHUTDOWN)
        self.watchdog: Watchdog | None = None
        self.born = time.monotonic()     # just after the fork: the boot's steps are timed from it

    # entry point
    def run(self) -> int:
        """Run the process to its end; returns the exit code."""
        lifecycle.install(self.lifecycle)    # before anything that registers with it
        try:   # a reload may have changed the error log: the master switches later
            errorlog.ensure(self.config.error_log, self.config.error_log_level)
        except OSError as exc:
            log.critical('cannot open the error log "%s": %s', self.config.error_log, exc)
            return WORKER_BOOT_ERROR
        errorlog.set_worker_tag(self.worker_id if self.role is not Role.AGENT else None)
        identity.become(self.role, self.worker_id, max(self.config.workers, 1), self.generation,
                        self.master_pid, self.config.prefix)
        setproctitle.setproctitle(SPARE_TITLE if self.spare else title_for(self.role, self.worker_id))
        if self.spare:
            for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _retire)
            signal.signal(signal.SIGUSR1, self._note_reopen)
        apply_nofile(self.config)
        if self.role is not Role.AGENT:
            try:
                self.access_logs = self.http.open_access_logs(self.config)
            except OSError as exc:
                log.critical("cannot open the access log: %s", exc)
                return WORKER_BOOT_ERROR
            try:    # keys are often readable by root only
                self.tls = self.http.open_tls(self.config)
            except (OSError, ValueError) as exc:
                log.critical("cannot load a certificate: %s", exc)
                return WORKER_BOOT_ERROR
        try:
            self._drop_privileges()
        except BootError as exc:
            log.critical("%s", exc)
            return WORKER_BOOT_ERROR
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._step("process set up, loop created")
        try:
            if self.spare:
                try:
                    code = self._wait_as_spare()
                except Retired:
                    code = 0
                if code is not None:
                    self._close_runtime()
                    return code
            return self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    # the spare
    def _wait_as_spare(self) -> int | None:
        """Load, report SpareReady, block until Promote: None once promoted,
        else the exit code (the channel closed: 0; the load failed)."""
        asyncio.events._set_running_loop(self.loop)   # import-time code sees its loop ...
        try:
            self._load()
        except BootError as exc:
            log.critical("%s", exc)
            self._send(BootFailed(str(exc)))
            return WORKER_BOOT_ERROR
        finally:
            asyncio.events._set_running_loop(None)    # ... which does not turn until promotion
        self._send(SpareReady())
        log.info("spare ready (generation %d)", self.generation)
        promote = self._read_promotion()
        if promote is None:
            log.info("spare retired")
            return 0
        self._become(promote.worker_id)
        return None

    def _read_promotion(self) -> Promote | None:
        """Block on the channel until Promote (None: the channel closed)."""
        assert self.channel is not None
        self.channel.setblocking(True)
        while True:
            try:
                data = self.channel.recv(65536)
            except OSError:
                data = b""
            if not data:
                return None
            messages = self.reader.feed(data)
            for i, message in enumerate(messages):
                if isinstance(message, Promote):
                    self.early = messages[i + 1:]
                    self.channel.setblocking(False)
                    return message

    def _note_reopen(self, signum: int, frame: Any) -> None:
        """A spare's USR1: recorded, acted on at promotion."""
        self.reopen_asked = True

    def _become(self, worker_id: int) -> None:
        """The spare is now worker ``worker_id``: who it is, its title and its logs."""
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)   # until _start installs the loop's handlers
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.spare, self.worker_id = False, worker_id
        self.born = time.monotonic()             # the steps of _start are timed from here
        identity.become(self.role, worker_id, max(self.config.workers, 1), self.generation,
                        self.master_pid, self.config.prefix)
        errorlog.set_worker_tag(worker_id)
        setproctitle.setproctitle(title_for(self.role, worker_id))
        if self.reopen_asked:   # its files may have been rotated while it waited
            self._reopen_logs()
        log.log(errorlog.NOTICE, "spare promoted to worker #%d", worker_id)

    async def _main(self) -> int:
        self._stop_event = asyncio.Event()
        self._booting = asyncio.ensure_future(self._boot())
        # a single process has no master to notice a boot that does not end
        warn = self.loop.call_later(BOOT_WARN, self._warn_booting) \
            if self.role is Role.SINGLE else None
        try:
            await self._booting
        except BootError as exc:
            log.critical("%s", exc)
            self._send(BootFailed(str(exc)))
            return WORKER_BOOT_ERROR
        except asyncio.CancelledError:
            if not self._booting.cancelled() or self.stop_kind is None:
                raise
            # asked to stop while init_worker (or an import) had not returned
            log.info("stopped while starting (%s shutdown)", self.stop_kind.value)
            self._exit_hook = None     # its init_worker never finished
            await self._shutdown_fast()
            self._close_runtime()
            return 0
        finally:
            if warn is not None:
                warn.cancel()
        self._booting = None
        self.state = "serving"
        _settle_collector()
        if self.config.loop_block_warn > 0:
            # from the first request on: a boot that imports slowly blocks no client
            self.watchdog = Watchdog(self.loop, self.config.loop_block_warn)
            self.watchdog.start()
        if self.role is Role.SINGLE:
            log.log(errorlog.NOTICE, "ready: single process serving")
        else:
            log.info("serving (generation %d)", self.generation)
        self._send(Ready())
        self._report()
        await self._stop_event.wait()
        if self.stop_kind is Stop.FAST:
            await self._shutdown_fast()
        else:
            await self._shutdown_gracefully()
        self._close_runtime()
        return 0

    # boot
    def _warn_booting(self) -> None:
        from pyresty.supervisor import terminal
        terminal.warn(self.config, f"single process not ready {BOOT_WARN:.1f} s after it "
                                   f"started: its init_worker hook has not returned; it "
                                   f"serves nothing until it does")

    def _step(self, name: str) -> None:
        """A boot step's time since the fork, at debug level (issue 17: respawn time)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("boot: %s at %.1f ms", name, (time.monotonic() - self.born) * 1000)

    def _drop_privileges(self) -> None:
        user = self.config.user
        if self.role is Role.AGENT or not user or os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise BootError(f'{self.config.path}: user: unknown user "{user}"') from None
        os.setgid(entry.pw_gid)
        os.initgroups(user, entry.pw_gid)
        os.setuid(entry.pw_uid)

    async def _boot(self) -> None:
        self._install_signals()
        if not self.loaded:           # a promoted spare loaded before it waited
            self._load()
        await self._start()

    def _load(self) -> None:
        """The half of the boot that depends on no worker id and runs no user
        code but imports: code path, shared dicts, timers, handlers and routes."""
        config = self.config
        self.loaded = True
        context.capture_base()        # before user code: what every request copies
        errorlog.capture_print()      # print() in user code goes to the error log
        loader.install(config.code_path)
        self._step("context, code path")
        if config.shared:
            from pyresty.runtime import shared
            shared.open_all(config.shared, shared.base_dir_for(config.prefix))
        self.scheduler = timers.TimerScheduler(
            self.loop, max_pending=config.max_pending_timers,
            max_running=config.max_running_timers, has_agent=config.privileged_agent)
        timers.install(self.scheduler)
        children.register()           # what user code leaves running is killed at exit
        self._step("shared dicts, timers")
        if self.role is not Role.AGENT:
            try:
                self.server = self.http.HttpServer(config, self.loop, loader.resolve,
                                                   self.access_logs, self.tls)
            except Exception as exc:
                raise BootError(f"cannot load handlers: {exc}") from exc
        self._step("handlers imported, routes")

    async def _start(self) -> None:
        """The half of the boot that makes this process a worker: upstreams,
        init_worker, listeners, the channel."""
        config = self.config
        try:
            await self.http.start_upstreams(config)
        except Exception as exc:
            raise BootError(f"cannot start upstream health checks: {exc}") from exc
        self._step("upstreams")
        init = self._hook("init_worker")
        self._exit_hook = self._hook("exit_worker")
        if init is not None:
            try:
                await context.call(init)      # a Task and Context of its own
            except Exception as exc:
                log.error("init_worker hook %s failed", config.hooks.init_worker, exc_info=True)
                raise BootError(f"init_worker hook {config.hooks.init_worker} failed: "
                                f"{exc.__class__.__name__}: {exc}") from exc
        self._step("init_worker")
        if self.server is not None:
            await self.server.start(self.sockets)
        self._step("listening")
        if self.channel is not None:
            self.loop.add_reader(self.channel.fileno(), self._on_channel)
            self.loop.call_later(STATS_INTERVAL, self._report_tick)
        early, self.early = self.early, []
        for message in early:
            self._on_message(message)

    def _hook(self, name: str) -> Callable[..., Any] | None:
        handler = getattr(self.config.hooks, name)
        if not handler:
            return None
        try:
            return loader.resolve(handler, phase=name)
        except Exception as exc:
            raise BootError(f"{self.config.path}: hooks.{name}: {exc}") from exc

    def _install_signals(self) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGQUIT, self.request_stop, Stop.GRACEFUL)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, Stop.FAST)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, Stop.FAST)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        if self.role is Role.SINGLE:
            loop.add_signal_handler(signal.SIGHUP, self._single_reload)
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def request_stop(self, kind: Stop) -> None:
        """Record a stop request (signal handler: nothing else happens here but,
        during the boot, arming its end: at once for a fast stop, at
        ``worker_shutdown_timeout`` for a graceful one)."""
        first = self.stop_kind is None
        if first or kind is Stop.FAST:
            self.stop_kind = kind
        if self._stop_event is not None:
            self._stop_event.set()
        booting = self._booting
        if booting is not None and not booting.done():
            if kind is Stop.FAST:
                booting.cancel()
            elif first:
                self.loop.call_later(self.config.worker_shutdown_timeout, booting.cancel)

    def _reopen_logs(self) -> None:
        errorlog.reopen()
        if self.server is None:
            return
        self.server.reopen_logs()

    def _single_reload(self) -> None:
        log.warning("reload needs a master process (workers >= 1); "
                    "restart a single-process server to load new code")

    # talking to the master
    def _on_channel(self) -> None:
        assert self.channel is not None
        try:
            data = self.channel.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.channel.fileno())
            if self.stop_kind is None:
                log.warning("the master is gone; shutting down")
                self.request_stop(Stop.GRACEFUL)
            return
        for message in self.reader.feed(data):
            self._on_message(message)

    def _on_message(self, message: Message) -> None:
        if self.server is None:
            return
        if isinstance(message, Drain):
            self.server.drain()
        elif isinstance(message, Resume) and self.stop_kind is None:
            self.server.resume_keepalive()

    def _send(self, message: Message) -> None:
        if self.channel is None:
            return
        try:
            self.channel.send(encode(message))
        except (BlockingIOError, InterruptedError):
            pass  # the master is slow: it gets the next report
        except OSError:
            pass

    def stats(self) -> Stats:
        """This process's figures (for the master, or for the single process's own status)."""
        scheduler = self.scheduler
        shared = None
        if self.config.shared:
            from pyresty.runtime import shared    # opened at boot: already imported
        return Stats(
            state=self.state,
            timers_pending=scheduler.pending_count() if scheduler is not None else 0,
            timers_running=scheduler.running_count() if scheduler is not None else 0,
            server=self.server.stats() if self.server is not None else {},
            shared=shared.stats() if shared is not None else {},
            limits=limits.stats() if (limits := sys.modules.get("pyresty.server.limits")) else {},
            peers=balancing.peer_stats(self.loop.time())
            if (balancing := sys.modules.get("pyresty.upstream.balancer")) else {},
            upstreams=pool.stats() if (pool := sys.modules.get("pyresty.upstream.pool")) else {},
            shutdown_for=round(self.loop.time() - self.shutdown_started, 3)
            if self.state == "shutting down" else None,
            counters={**(self.watchdog.counters() if self.watchdog is not None else {}),
                      **(scheduler.counters() if scheduler is not None else {})})

    def _report(self) -> None:
        self._send(self.stats())

    def _report_tick(self) -> None:
        self._report()
        if self.state != "exited":
            self.loop.call_later(STATS_INTERVAL, self._report_tick)

    # shutdown
    async def _shutdown_gracefully(self) -> None:
        loop = self.loop
        self._begin_shutdown()
        start = self.shutdown_started
        timeout = self.config.worker_shutdown_timeout
        setproctitle.setproctitle(title_for(self.role, self.worker_id, shutting_down=True))
        log.info("gracefully shutting down (%s)", ", ".join(self.lifecycle.names()))
        self._report()
        await self.lifecycle.shutdown(timeout)                    # steps 1-5
        end = start + timeout + SHUTDOWN.worker_slack
        await self._run_exit_hook(min(SHUTDOWN.exit_hook, end - loop.time()))   # step 6
        log.info("exiting after %.3f s", loop.time() - start)

    async def _shutdown_fast(self) -> None:
        self._begin_shutdown()
        await self.lifecycle.shutdown(None)                       # no wait: steps 1-3, 5
        await self._run_exit_hook(SHUTDOWN.fast_exit_hook)

    def _begin_shutdown(self) -> None:
        identity.current.exiting = True
        self.state = "shutting down"
        self.shutdown_started = self.loop.time()

    async def _run_exit_hook(self, limit: float) -> None:
        hook = self._exit_hook
        if hook is None or limit <= 0:
            return
        try:
            await asyncio.wait_for(context.call(hook), limit)
        except TimeoutError:
            log.error("exit_worker hook %s ran past %.1f s; abandoned",
                      self.config.hooks.exit_worker, limit)
        except Exception:
            log.error("exit_worker hook %s failed", self.config.hooks.exit_worker, exc_info=True)

    def _close_runtime(self) -> None:
        self.state = "exited"
        if self.watchdog is not None:
            self.watchdog.stop()
        self.lifecycle.close()


YOUNG_COLLECTION: Final = 7000   # container allocations between two young collections


def _settle_collector() -> None:
    """What the worker booted with (its handlers' modules, routes, config)
    moves to the collector's permanent generation, and young objects are
    collected every ``YOUNG_COLLECTION`` allocations instead of CPython's 700.
    A request's objects die by reference counting; the young collections
    only walked the few alive in flight, ~7k instructions per proxied request
    (issue 12). Garbage in cycles is still collected, just in larger steps."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION, older, oldest)


def _retire(signum: int, frame: Any) -> None:
    """A spare's QUIT/TERM/INT: it has run nothing, so it just goes (see ``Retired``)."""
    raise Retired(signum)
