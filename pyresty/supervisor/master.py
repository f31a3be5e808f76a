"""The master process: binds listeners, forks and supervises workers, reloads.

Rules (SPEC §4):
- The master never imports user code: a reload always runs fresh code in
  freshly forked workers. It reads only the TOML config.
- Signal handlers only queue the signal; the main loop dispatches it to
  ``handle_<name>`` (gunicorn's arbiter does the same, nginx sets flags).
- Reload: parse the new config (a bad one is logged with every problem and
  changes nothing), bind new listeners, fork a new generation, and only when
  every new process reported ready ask the old generation to shut down
  gracefully. A new process that fails at boot rolls the reload back: the old
  generation never stopped serving.
- Every process asked to stop has a hard deadline (``worker_shutdown_timeout``
  + ``SHUTDOWN.kill_margin``, from the one table of shutdown deadlines in
  ``runtime/lifecycle.py``); past it the master SIGKILLs it, whatever user code does.
- A worker of the current generation that dies is respawned with the same id
  at once; one that fails at boot (``WORKER_BOOT_ERROR``) stops the master,
  since respawning would fail the same way forever. A respawn that dies
  before it is ready (whatever its exit code) is tried again after
  ``RESPAWN_BACKOFF``, never in a loop; one still booting ``BOOT_WARN`` after
  its fork is named once.
- A child killed past its stop deadline keeps its deadline: its death was
  asked for and is never "replaced". Unasked deaths (crashed, boot_failed),
  such kills and reloads by outcome are counted for ``/metrics``.
- Nothing a reload meets stops the master: a bad config, an address taken,
  an error log that cannot be opened, a fork or channel that fails (out of
  memory or descriptors) refuse the reload; a respawn that cannot be forked
  is tried again later. A reload that moves ``pid`` moves the pid file and
  the control socket; one that moves ``[status] listen`` rebinds it.
- ``worker_spare``: the current generation keeps one spare, forked once the
  generation (or a respawned worker) is serving, so that it never competes
  with a boot. A worker that dies is replaced by promoting the spare (one
  ``Promote`` message; it already imported the code), and a new spare is
  forked once the promoted one serves. A spare is no worker: it counts in no
  readiness, broadcast, RSS guard or metric, never gets Drain (the promoted
  one does), and belongs to its generation: when that generation stops
  (reload, quit, stop) the spare stops with it, so none outlives it (seed 001).
  A spare that cannot load is tried again after ``RESPAWN_BACKOFF``.

- ``pyresty -s reload`` (the control socket's checked reload): the config is
  parsed here and the handlers are imported in a child the master forks (the
  ``-t`` check; the master itself still imports no user code), with the
  master's loop serving on meanwhile; the checked config is the one reloaded,
  and the client gets the outcome or every problem. Only the command line
  waits: HUP reloads at once, as before.
- ``pyresty drain`` turns keepalive off in every worker (and in every worker
  spawned later) until ``drain --cancel`` or a reload ends it.

Theory of operation: one thread, one ``selectors`` loop over the signal
wake-up pipe, the children's channels (``channel``'s messages), the control
socket (``pyresty status``/``drain``) and the status listener (``/status``,
``/metrics``). ``waitpid(WNOHANG)`` runs after every wake-up. What the master
knows of each child is a ``table.Child``; ``rows()`` is the process table.
"""
from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import setproctitle

from pyresty import config as configuration
from pyresty import errorlog, purepython
from pyresty.config.model import Config, Listen
from pyresty.errors import ConfigError
from pyresty.runtime import identity, loader
from pyresty.runtime.identity import Role
from pyresty.runtime.lifecycle import SHUTDOWN
from pyresty.supervisor import listeners, terminal
from pyresty.supervisor.channel import (BootFailed, Drain, Message, Promote, Ready, Resume,
                                       SpareReady, Stats, encode)
from pyresty.supervisor.control import ControlServer, StatusServer
from pyresty.supervisor.exitcodes import EXIT_FAILURE, EXIT_OK, WORKER_BOOT_ERROR
from pyresty.supervisor.pidfile import remove_pid, running_master, write_pid
from pyresty.supervisor.rss_guard import RssGuard
from pyresty.supervisor.signals import CAUGHT, handler_name
from pyresty.supervisor.table import Child, Row, State, child_rows, rss_of
from pyresty.supervisor.worker import BOOT_WARN, HttpLayer, WorkerProcess

log = logging.getLogger("pyresty.master")

READY_TIMEOUT = 60.0       # s a new generation may take to boot before the reload is abandoned
RESPAWN_BACKOFF = 5.0      # s between attempts to respawn a worker that fails at boot
TICK = 0.1                 # s, the longest the loop sleeps when deadlines are pending


@dataclass
class Generation:
    number: int
    config: Config
    sockets: list[tuple[Listen, socket.socket]]


@dataclass(eq=False)
class ReloadCheck:
    """A ``pyresty -s reload`` waiting for its handler check (a forked child)."""

    child: loader.CheckChild
    config: Config
    answer: Callable[[dict[str, Any]], None]
    deadline: float
    started: float                      # monotonic, when the command asked
    output: dict[int, bytearray] = field(default_factory=dict)   # open pipe -> what it said
    said: dict[int, bytes] = field(default_factory=dict)         # closed pipe -> all it said
    status: int | None = None           # waitpid's, once reaped
    finished: bool = True               # False: killed at the deadline


class Master:
    def __init__(self, config: Config, config_arg: str | None, prefix_arg: str | None,
                 http: HttpLayer, dev: bool = False) -> None:
        self.config = config
        self.http = http
        self.config_arg = config_arg
        self.prefix_arg = prefix_arg
        self.dev = dev
        self.pid = os.getpid()
        self.children: dict[int, Child] = {}
        self.sockets: dict[Listen, socket.socket] = {}
        self.current: Generation | None = None
        self.pending: Generation | None = None     # a reload whose workers are booting
        self.pending_since = 0.0
        self.generations = 0
        self.signals: list[int] = []
        self.selector = selectors.DefaultSelector()
        self.stopping: str | None = None            # "graceful" | "fast"
        self.fast_deadline = 0.0
        self.reload_queued = False
        self.respawns: dict[tuple[int, Role, int | None], float] = {}   # (generation, role, id)
        self.spare_retry_at: float | None = None    # a spare failed to load: next try
        self.checks: dict[int, ReloadCheck] = {}    # pid -> a -s reload's handler check
        self.draining = False
        self.exit_code = EXIT_OK
        self.control: ControlServer | None = None
        self.status_server: StatusServer | None = None
        self.pid_path = config.pid                  # where the pid file is (a reload may move it)
        self.rss_guard = RssGuard()                 # worker_max_rss (rss_guard.py)
        self.exits: Counter[tuple[str, str]] = Counter()   # (role, crashed|boot_failed|killed)
        self.reloads: Counter[str] = Counter()             # started | refused | abandoned
        self._wake_r, self._wake_w = os.pipe()

    # main loop
    def run(self) -> int:
        config = self.config
        identity.become(Role.MASTER, None, config.workers, 0, self.pid, config.prefix)
        setproctitle.setproctitle("pyresty: master process " + " ".join(sys.argv))
        other = running_master(config.pid)
        if other is not None:
            # never take over another server's pid file and control socket
            terminal.fatal(config, f"already running (pid {other}, {config.pid}); not starting")
            return EXIT_FAILURE
        try:
            self.sockets = listeners.bind_all(listeners.listens_of(config))
        except OSError as exc:
            terminal.fatal(config, str(exc))
            return EXIT_FAILURE
        if config.shared:
            from pyresty.runtime import shared
            shared.wipe(config.shared, shared.base_dir_for(config.prefix), owner=_owner(config))
        write_pid(config.pid)
        self._install_signals()
        try:
            self.control = ControlServer(self, self.selector, config.control_socket)
        except OSError as exc:
            terminal.fatal(config, f"cannot open the control socket {config.control_socket}: "
                                   f"{exc.strerror or exc}")
            remove_pid(config.pid)
            return EXIT_FAILURE
        if config.status.listen is not None:
            try:
                self.status_server = StatusServer(self, self.selector, config.status.listen)
            except OSError as exc:
                terminal.fatal(config, str(exc))
                self.control.close()
                remove_pid(config.pid)
                return EXIT_FAILURE
        for listen in self.sockets:
            log.info("listening on %s", listen)
        if self.dev:
            from pyresty.supervisor.devwatch import start_watcher
            start_watcher(config, self.pid)
        log.log(errorlog.NOTICE, "%s", purepython.describe())
        # Every object the master holds now (pyresty's modules, the config) moves
        # to the collector's permanent generation: a child's collections then
        # never walk them, so fewer inherited pages are copied on write in every
        # worker's boot (issue 17: a respawn's boot 2-4 ms shorter; the CPython
        # docs' advice for servers that fork). Done once: a freeze before each
        # fork would keep every later cycle of the master forever.
        gc.freeze()
        try:
            self.pending = self._start_generation(config)
        except OSError as exc:
            terminal.fatal(config, f"cannot start the workers: {exc.strerror or exc}")
            self.exit_code = EXIT_FAILURE
            self.handle_term()
        self.pending_since = time.monotonic()
        try:
            while not self._finished():
                self._loop_once()
        finally:
            self._cleanup()
        return self.exit_code

    def _loop_once(self) -> None:
        timeout = TICK if self._deadlines_pending() else 1.0
        for key, _ in self.selector.select(timeout):
            key.data()
        self._dispatch_signals()
        self.reap_children()
        self._check_deadlines()

    def _finished(self) -> bool:
        return self.stopping is not None and not self.children

    def _deadlines_pending(self) -> bool:
        return self.stopping is not None or self.pending is not None or bool(self.respawns) or \
            self.spare_retry_at is not None or bool(self.checks) or any(
            c.stop_deadline is not None or c.state is State.STARTING for c in self.children.values())

    # signals
    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in CAUGHT:
            signal.signal(sig, self._record_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeups)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _dispatch_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            handler = getattr(self, handler_name(signum), None)   # CHLD has none: it only wakes us
            if handler is not None:
                handler()

    def handle_hup(self) -> None:
        if self.stopping is not None:
            return
        if self.pending is not None:
            self.reload_queued = True
            return
        self.reload()

    def handle_quit(self) -> None:
        if self.stopping is None:
            log.log(errorlog.NOTICE, "graceful shutdown")
        self.stopping = "graceful"
        if self.current is not None:
            self._abandon_pending("the server is shutting down")
        self.pending = None        # at start-up, the first generation stops gracefully too
        for child in list(self.children.values()):
            self.stop_child(child)

    def handle_term(self) -> None:
        if self.stopping != "fast":
            log.log(errorlog.NOTICE, "fast shutdown")
            self.fast_deadline = time.monotonic() + SHUTDOWN.fast_kill_after
        self.stopping = "fast"
        for child in list(self.children.values()):
            self._kill(child, signal.SIGTERM)

    handle_int = handle_term      # Ctrl-C in the foreground

    def handle_usr1(self) -> None:
        errorlog.reopen()
        log.log(errorlog.NOTICE, "reopening logs")
        self._create_logs_for_workers()
        for child in list(self.children.values()):
            self._kill(child, signal.SIGUSR1)

    def _create_logs_for_workers(self) -> None:
        """Workers that dropped to ``user`` cannot create a file in a folder
        root owns: after logrotate moved the logs, their reopen failed and they
        wrote on into the rotated files. The master creates each log file first
        and gives it to that user (nginx's ``ngx_reopen_files`` does the same);
        the workers then open a file that exists and is theirs."""
        owner = _owner(self.config)
        if owner is None:
            return
        paths = [s.access_log for s in self.config.servers if s.access_log]
        if self.config.error_log != "stderr":
            paths.append(self.config.error_log)
        for path in dict.fromkeys(paths):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.fchown(fd, *owner)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.log(errorlog.ALERT, 'cannot create "%s" for the workers (%s)', path,
                        exc.strerror or exc)

    # generations
    def _start_generation(self, config: Config) -> Generation:
        self.generations += 1
        sockets = [(listen, self.sockets[listen]) for listen in listeners.listens_of(config)]
        gen = Generation(self.generations, config, sockets)
        try:
            for worker_id in range(config.workers):
                self.spawn_worker(gen, Role.WORKER, worker_id)
            if config.privileged_agent:
                self.spawn_worker(gen, Role.AGENT, None)
        except OSError:
            self._kill_generation(gen.number)    # no half generation is left behind
            raise
        return gen

    def reload(self, checked: Config | None = None) -> str | None:
        """HUP: validate the new config (``checked``: already done), then start a
        new generation beside the old.

        Returns why the reload was refused (logged too), or None once the new
        generation is starting."""
        log.log(errorlog.NOTICE, "reloading configuration")
        try:
            config = checked or self._load_config()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            return self._refuse("the configuration is invalid; still serving the old one")
        if config.workers == 0:
            return self._refuse("workers = 0 (single process) needs a restart")
        problem = errorlog.open_problem(config.error_log)
        if problem is not None:
            log.error("%s: %s", config.path, problem)
            return self._refuse(f"{config.path}: {problem}; still serving the old configuration")
        try:
            # keep the sockets only the current generation uses: _promote closes
            # them once it stops, _abandon_pending keeps them (they still serve)
            self.sockets.update(listeners.bind_all(listeners.listens_of(config), keep=self.sockets))
        except OSError as exc:
            return self._refuse(f"{exc}; still serving the old configuration")
        try:
            self.pending = self._start_generation(config)
        except OSError as exc:     # out of descriptors or memory: fork, socketpair
            self._close_unused_listeners()
            return self._refuse(f"cannot start the new generation: {exc.strerror or exc}; "
                                f"still serving the old configuration")
        self.pending_since = time.monotonic()
        self.reloads["started"] += 1
        return None

    def _load_config(self) -> Config:
        return configuration.load(self.config_arg, self.prefix_arg) if self.config_arg \
            else self.config

    def _refuse(self, reason: str) -> str:
        log.error("reload refused: %s", reason)
        self.reloads["refused"] += 1
        return reason

    def request_reload(self, checked: Config | None = None) -> tuple[str, str]:
        """What HUP does, with the outcome for the caller:
        ("started" | "queued" | "refused", why)."""
        if self.stopping is not None:
            return "refused", "the server is shutting down"
        if self.pending is not None:
            self.reload_queued = True
            return "queued", "a reload is in progress; this one follows it"
        reason = self.reload(checked)
        if reason is not None:
            return "refused", reason
        return "started", f"generation {self.generations} is starting"

    # pyresty -s reload: the -t checks, then the reload
    def check_reload(self, answer: Callable[[dict[str, Any]], None]) -> None:
        """Parse the config, import its handlers in a forked child, then reload;
        ``answer`` gets {"reload": outcome, "reason": why[, "problems": lines]}."""
        if self.stopping is not None:
            answer({"reload": "refused", "reason": "the server is shutting down"})
            return
        started = time.monotonic()
        try:
            config = self._load_config()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            reason = self._refuse("the configuration is invalid; still serving the old one")
            answer({"reload": "refused", "reason": reason, "problems": list(exc.problems)})
            return
        if config.path == "<builtin>" or not config.handler_strings():
            self._checked(config, [], answer, started)
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)    # as spawn_worker does
        try:
            child = loader.start_check(config.path, self.prefix_arg or "",
                                       in_child=self._forget_in_check)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CAUGHT)
        check = ReloadCheck(child, config, answer, time.monotonic() + loader.CHECK_TIMEOUT,
                            started)
        self.checks[child.pid] = check
        for fd in (child.out, child.err):
            os.set_blocking(fd, False)
            check.output[fd] = bytearray()
            self.selector.register(fd, selectors.EVENT_READ,
                                   lambda fd=fd: self._on_check_output(check, fd))

    def _forget_in_check(self) -> None:
        self._forget_in_child(())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CAUGHT)

    def _on_check_output(self, check: ReloadCheck, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            check.output[fd] += data
            return
        self._close_check_pipe(check, fd)
        self._check_progress(check)

    def _close_check_pipe(self, check: ReloadCheck, fd: int) -> None:
        check.said[fd] = bytes(check.output.pop(fd))
        self.selector.unregister(fd)
        os.close(fd)

    def _check_progress(self, check: ReloadCheck) -> None:
        """Once the child is reaped and its pipes are closed: the verdict."""
        if check.output or check.status is None:
            return
        del self.checks[check.child.pid]
        problems = loader.check_result(check.config.path, loader.exit_code(check.status),
                                       check.said.get(check.child.out, b""),
                                       check.said.get(check.child.err, b""), check.finished)
        self._checked(check.config, problems, check.answer, check.started)

    def _checked(self, config: Config, problems: list[str],
                 answer: Callable[[dict[str, Any]], None], started: float) -> None:
        log.info("reload checked in %.1f ms (config and handler imports)",
                 (time.monotonic() - started) * 1000)
        if problems:
            for problem in problems:
                log.error("%s", problem)
            reason = self._refuse("the configuration is invalid; still serving the old one")
            answer({"reload": "refused", "reason": reason, "problems": problems})
            return
        outcome, reason = self.request_reload(config)
        answer({"reload": outcome, "reason": reason})

    def _expire_checks(self, now: float) -> None:
        for check in list(self.checks.values()):
            if check.finished and now > check.deadline:
                # a module that hangs at import: killed with its group, its pipes
                # closed (a grandchild that left the group may hold them)
                check.finished = False
                check.child.kill()
                for fd in list(check.output):
                    self._close_check_pipe(check, fd)
                self._check_progress(check)

    def _generation_ready(self, gen: Generation) -> bool:
        members = [c for c in self.children.values() if c.generation == gen.number and not c.spare]
        expected = gen.config.workers + (1 if gen.config.privileged_agent else 0)
        return len(members) == expected and all(c.state is State.SERVING for c in members)

    def _promote(self, gen: Generation) -> None:
        """The new generation is ready: it becomes current, the old one stops."""
        old = self.current
        self.current, self.pending = gen, None
        self.config = gen.config
        if old is not None:
            self._move_control(old.config, gen.config)
            try:
                errorlog.configure(gen.config.error_log, gen.config.error_log_level)
            except OSError as exc:    # checked before the reload: gone since
                log.log(errorlog.ALERT, 'cannot open the error log "%s" (%s); logging on '
                        "to the one in use", gen.config.error_log, exc.strerror or exc)
        log.log(errorlog.NOTICE, "generation %d ready: %d workers%s", gen.number,
                gen.config.workers, " and the privileged agent" if gen.config.privileged_agent else "")
        if old is None:
            terminal.announce(gen.config, [str(listen) for listen in self.sockets])
        for child in list(self.children.values()):
            if old is not None and child.generation == old.number:
                self.stop_child(child)
        in_use = set(listeners.listens_of(gen.config))
        for listen in [l for l in self.sockets if l not in in_use]:
            self.sockets.pop(listen).close()   # old workers still hold their own copy
            log.info("stopped listening on %s", listen)
        if self.draining:
            # a reload ends a drain: the new generation serves with keepalive
            self.draining = False
            self.broadcast(Resume())   # its workers were told to drain when they were spawned
            log.log(errorlog.NOTICE, "drain ended by the reload")
        if self.reload_queued:
            self.reload_queued = False
            self.reload()
        self.ensure_spare()

    def _move_control(self, old: Config, new: Config) -> None:
        """A reload that changed ``pid`` or ``[status] listen``: the pid file and
        the control socket beside it move (nginx writes the new pid file and
        removes the old), the status listener rebinds. What cannot be opened
        is an [alert], and the old one stays in use."""
        other = running_master(new.pid) if new.pid != self.pid_path else None
        if other is not None:
            # never take over another server's pid file and control socket
            log.log(errorlog.ALERT, "pid file %s belongs to another running server (pid %d); "
                    "the pid file stays %s", new.pid, other, self.pid_path)
        elif new.pid != self.pid_path:
            try:
                os.makedirs(os.path.dirname(new.control_socket) or ".", exist_ok=True)
                control = ControlServer(self, self.selector, new.control_socket)
            except OSError as exc:
                log.log(errorlog.ALERT, "cannot open the control socket %s (%s); the pid "
                        "file stays %s", new.control_socket, exc.strerror or exc, self.pid_path)
            else:
                try:
                    write_pid(new.pid)
                except OSError as exc:
                    control.close()
                    log.log(errorlog.ALERT, "cannot write the pid file %s (%s); it stays %s",
                            new.pid, exc.strerror or exc, self.pid_path)
                else:
                    if self.control is not None:
                        self.control.close()
                    self.control = control
                    remove_pid(self.pid_path)
                    log.log(errorlog.NOTICE, "pid file moved to %s", new.pid)
                    self.pid_path = new.pid
        if new.status.listen != old.status.listen:
            status: StatusServer | None = None
            if new.status.listen is not None:
                try:
                    status = StatusServer(self, self.selector, new.status.listen)
                except OSError as exc:
                    log.log(errorlog.ALERT, "cannot listen for [status] on %s (%s); keeping %s",
                            new.status.listen, exc.strerror or exc, old.status.listen)
                    return
            if self.status_server is not None:
                self.status_server.close()
            self.status_server = status
            log.info("status listener: %s", new.status.listen or "off")

    def _abandon_pending(self, reason: str) -> None:
        gen = self.pending
        if gen is None:
            return
        self.pending = None
        self.reloads["abandoned"] += 1
        log.error("reload abandoned: %s; still serving generation %d", reason,
                  self.current.number if self.current else 0)
        self._kill_generation(gen.number)
        self._close_unused_listeners()
        if self.reload_queued and self.stopping is None:
            self.reload_queued = False   # a HUP that came during the failed reload
            self.reload()

    def _kill_generation(self, number: int) -> None:
        """SIGKILL a generation that never served (an abandoned or failed start)."""
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.generation == number:
                child.state = State.SHUTTING_DOWN
                child.stop_started, child.stop_deadline = now, now + SHUTDOWN.kill_margin
                child.killed = True     # counted as the reload abandoned, not as a kill
                self._kill(child, signal.SIGKILL)

    def _close_unused_listeners(self) -> None:
        """Close the listeners a refused or abandoned reload bound (the serving
        generation's are kept)."""
        in_use = set(listeners.listens_of(self.config))
        for listen in [l for l in self.sockets if l not in in_use]:
            self.sockets.pop(listen).close()

    # children
    def respawn(self, gen: Generation, role: Role, worker_id: int | None) -> None:
        """Start a worker in place of one that died; when the master cannot
        (out of descriptors or memory), say so and try again after
        ``RESPAWN_BACKOFF`` instead of stopping the server."""
        try:
            self.spawn_worker(gen, role, worker_id)
        except OSError as exc:
            name = "the privileged agent" if role is Role.AGENT else f"worker #{worker_id}"
            log.error("cannot start %s: %s; trying again in %.0f s", name,
                      exc.strerror or exc, RESPAWN_BACKOFF)
            self.respawns[(gen.number, role, worker_id)] = time.monotonic() + RESPAWN_BACKOFF

    def spawn_worker(self, gen: Generation, role: Role, worker_id: int | None,
                     spare: bool = False) -> Child:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Block our signals across fork: until the child has reset them, a
        # signal would run the master's handler in the child (and be lost).
        signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
        pid = os.fork()
        if pid == 0:  # the child: never returns into master code
            code = 1
            try:
                parent_end.close()
                self._forget_in_child(gen.sockets)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, CAUGHT)
                code = WorkerProcess(gen.config, role, worker_id, gen.number, gen.sockets,
                                     child_end, self.pid, self.http, spare=spare).run()
            except BaseException:
                logging.getLogger("pyresty.process").critical("worker crashed", exc_info=True)
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CAUGHT)
        child_end.close()
        parent_end.setblocking(False)
        child = Child(pid, role, worker_id, gen.number, parent_end, time.monotonic(),
                      gen.config.worker_shutdown_timeout, spare=spare)
        self.children[pid] = child
        self.selector.register(parent_end, selectors.EVENT_READ, lambda: self._on_channel(child))
        if self.draining and not spare:
            self._tell(child, Drain())   # read once it has booted: a respawn drains too
        log.info("started %s", child.label)
        return child

    def _forget_in_child(self, keep: Sequence[tuple[Listen, socket.socket]]) -> None:
        """In a new child: drop what belongs to the master alone (all but the
        listeners ``keep``)."""
        # listeners of other generations: a copy kept open here would hold a
        # removed address in LISTEN (clients queued, never served) for as
        # long as this worker lives
        mine = {id(sock) for _, sock in keep}
        for sock in self.sockets.values():
            if id(sock) not in mine:
                sock.close()
        signal.set_wakeup_fd(-1)
        for sig in CAUGHT:
            signal.signal(sig, signal.SIG_DFL)
        # USR1's default action kills: a reopen reaching a worker that is still
        # booting must not (the worker installs its own handler in _boot)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        for child in self.children.values():
            child.channel.close()
        for check in self.checks.values():
            for fd in check.output:
                os.close(fd)
        if self.control is not None:
            self.control.close_in_child()
        if self.status_server is not None:
            self.status_server.close_in_child()
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def stop_child(self, child: Child) -> None:
        """Ask a child to shut down gracefully, with a hard deadline."""
        if child.stop_deadline is not None:
            return
        # the worker's own deadline, not the new config's: an old worker
        # honours the worker_shutdown_timeout it was started with
        timeout = child.shutdown_timeout
        now = time.monotonic()
        child.stop_started = now
        child.stop_deadline = now + timeout + SHUTDOWN.kill_margin
        child.state = State.SHUTTING_DOWN
        self._kill(child, signal.SIGQUIT)

    def _kill_at_deadline(self, child: Child) -> None:
        """SIGKILL a child that outlived its stop deadline (counted once)."""
        if not child.killed:
            child.killed = True
            self.exits[(child.role_name, "killed")] += 1
        self._kill(child, signal.SIGKILL)

    def _kill(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._child_exited(child, status)
            elif pid in self.checks:
                self.checks[pid].status = status
                self._check_progress(self.checks[pid])

    def _child_exited(self, child: Child, status: int) -> None:
        self._on_channel(child)   # read what it said last
        try:
            self.selector.unregister(child.channel)
        except (KeyError, ValueError):
            pass
        child.channel.close()
        if os.WIFSIGNALED(status):
            how = f"killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with code {os.WEXITSTATUS(status)}"
        expected = child.stop_deadline is not None or self.stopping is not None
        level = logging.INFO if expected and status == 0 else logging.WARNING if expected else \
            logging.ERROR
        took = f" after {time.monotonic() - child.stop_started:.3f} s" if child.stop_started else ""
        log.log(level, "%s %s%s", child.label, how, took)
        if not expected:
            boot_failed = child.state is State.STARTING and os.WIFEXITED(status) and \
                os.WEXITSTATUS(status) == WORKER_BOOT_ERROR
            self.exits[(child.role_name, "boot_failed" if boot_failed else "crashed")] += 1
            self._replace(child, status, how)
        self._reader_check()    # after the replacement: it only tidies the shared dicts

    def _replace(self, child: Child, status: int, how: str) -> None:
        """A child died unasked: respawn it, promote the spare, or stop."""
        boot_error = os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_BOOT_ERROR
        if child.spare:
            self._spare_exited(child, boot_error)
            return
        starting = self.pending is not None and child.generation == self.pending.number
        if starting and self.current is not None:
            self._abandon_pending(f"{child.label} failed to start ({how})")
            return
        if starting:
            terminal.fatal(self.config, f"{child.label} failed to start; stopping: "
                                        f"{child.boot_error or how}")
            self.exit_code = EXIT_FAILURE
            self.handle_term()
            return
        if self.rss_guard.exited(child):
            return
        if self.current is not None and child.generation == self.current.number:
            if child.state is State.STARTING:
                # A respawn that cannot boot (its code changed on disk since the
                # reload, or it crashes in init_worker: a segfault is no boot-error
                # exit code but a failed boot all the same): keep the rest serving
                # and try again later, never in a loop.
                log.error("%s failed to start; trying again in %.0f s", child.label, RESPAWN_BACKOFF)
                self.respawns[(child.generation, child.role, child.worker_id)] = \
                    time.monotonic() + RESPAWN_BACKOFF
                return
            if not self._promote_spare(child):
                self.respawn(self.current, child.role, child.worker_id)

    # the spare (worker_spare)
    def ensure_spare(self) -> None:
        """Fork the current generation's spare if it should have one and has
        none, once no worker of it is booting (a spare's load must not slow one)."""
        gen = self.current
        if gen is None or not gen.config.worker_spare or self.stopping is not None or \
                self.pending is not None or self.spare_retry_at is not None:
            return
        mine = [c for c in self.children.values() if c.generation == gen.number]
        if any(c.spare or c.state is State.STARTING for c in mine):
            return
        try:
            self.spawn_worker(gen, Role.WORKER, None, spare=True)
        except OSError as exc:
            log.error("cannot start a spare: %s; trying again in %.0f s", exc.strerror or exc,
                      RESPAWN_BACKOFF)
            self.spare_retry_at = time.monotonic() + RESPAWN_BACKOFF

    def _promote_spare(self, dead: Child) -> bool:
        """Make the current generation's waiting spare worker ``dead.worker_id``."""
        worker_id = dead.worker_id
        if dead.role is not Role.WORKER or worker_id is None or self.current is None:
            return False
        spare = next((c for c in self.children.values() if c.spare and c.state is State.SPARE
                      and c.generation == self.current.number), None)
        if spare is None:
            return False
        try:
            spare.channel.send(encode(Promote(worker_id)))
        except OSError:
            return False     # it is dying too: the master hears of it from waitpid
        log.log(errorlog.NOTICE, "%s promoted to worker #%d", spare.label, worker_id)
        spare.spare, spare.worker_id, spare.state = False, worker_id, State.STARTING
        spare.promoted = time.monotonic()
        if self.draining:
            self._tell(spare, Drain())
        return True

    def _spare_exited(self, child: Child, boot_error: bool) -> None:
        if boot_error or child.state is State.STARTING:
            # it could not load its code (changed on disk since the reload?): not in a loop
            log.error("%s failed to start; trying again in %.0f s", child.label, RESPAWN_BACKOFF)
            self.spare_retry_at = time.monotonic() + RESPAWN_BACKOFF
            return
        self.ensure_spare()

    def _reader_check(self) -> None:
        if self.config.shared:
            try:
                from pyresty.runtime import shared
                shared.reader_check(self.config.shared, shared.base_dir_for(self.config.prefix))
            except Exception:
                log.warning("shared dict reader check failed", exc_info=True)

    def _on_channel(self, child: Child) -> None:
        messages: list[Message] = []
        try:
            while True:
                data = child.channel.recv(65536)
                if not data:
                    break
                messages += child.reader.feed(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass
        for message in messages:
            self._on_message(child, message)

    def _on_message(self, child: Child, message: Message) -> None:
        if isinstance(message, SpareReady):
            if child.spare and child.state is State.STARTING:
                child.state = State.SPARE
        elif isinstance(message, Ready):
            if child.state is State.STARTING:
                child.state = State.SERVING
            if child.promoted is not None:
                log.info("%s serving %.1f ms after its promotion", child.label,
                         (time.monotonic() - child.promoted) * 1000)
                child.promoted = None
            replaced = self.rss_guard.ready(child)
            if replaced is not None:
                log.log(errorlog.NOTICE, "%s replaces %s", child.label, replaced.label)
                self.stop_child(replaced)
            if self.pending is not None and self._generation_ready(self.pending):
                self._promote(self.pending)
            self.ensure_spare()
        elif isinstance(message, Stats):
            child.stats = message
        elif isinstance(message, BootFailed):
            child.boot_error = message.reason
            log.error("%s failed to start: %s", child.label, message.reason)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        self._expire_checks(now)
        self._warn_slow_boots(now)
        for child in list(self.children.values()):
            # its stop_deadline stays set: the death that follows was asked for
            # (a worker the memory guard replaced must not be respawned beside
            # its replacement)
            if child.stop_deadline is not None and now > child.stop_deadline and not child.killed:
                log.warning("%s still running %.1f s after it was asked to stop; killing it",
                            child.label, now - (child.stop_started or now))
                self._kill_at_deadline(child)
        for key, when in list(self.respawns.items()):
            if now >= when:
                del self.respawns[key]
                generation, role, worker_id = key
                current = self.current
                if current is not None and current.number == generation and self.stopping is None:
                    self.respawn(current, role, worker_id)
        if self.spare_retry_at is not None and now >= self.spare_retry_at:
            self.spare_retry_at = None
            self.ensure_spare()
        if self.config.worker_max_rss and self.current is not None and self.pending is None \
                and self.stopping is None:
            self._replace_large_workers(self.current, now)
        if self.stopping == "fast" and now > self.fast_deadline:
            for child in list(self.children.values()):
                if not child.killed:
                    self._kill_at_deadline(child)
        if self.pending is not None and self.current is not None and \
                now - self.pending_since > READY_TIMEOUT:
            self._abandon_pending(f"the new workers were not ready within {READY_TIMEOUT:.0f} s")

    def _warn_slow_boots(self, now: float) -> None:
        """A process still booting ``BOOT_WARN`` after its fork (or promotion) is
        named once: a hung import or ``init_worker`` otherwise left a server that
        never served and said nothing (at start, on the terminal too)."""
        for child in self.children.values():
            began = child.promoted or child.started
            if child.state is not State.STARTING or child.boot_warned or now - began < BOOT_WARN:
                continue
            child.boot_warned = True
            message = (f"{child.label} not ready {now - began:.1f} s after it started: its "
                       f"handler imports or its init_worker hook have not returned; it "
                       f"serves nothing until they do")
            if self.current is None and self.stopping is None:
                terminal.warn(self.config, message)
            else:
                log.warning("%s", message)

    def _replace_large_workers(self, gen: Generation, now: float) -> None:
        """worker_max_rss: a new worker with the same id first, then the old one stops."""
        limit = self.config.worker_max_rss
        for child, rss in self.rss_guard.over_limit(self.children.values(), gen.number, limit, now):
            log.warning("%s: RSS %.1f MiB is above worker_max_rss (%.1f MiB); replacing it",
                        child.label, rss / 1048576, limit / 1048576)
            try:
                self.rss_guard.replace(self.spawn_worker(gen, child.role, child.worker_id), child)
            except OSError as exc:
                log.error("cannot start a replacement for %s: %s", child.label,
                          exc.strerror or exc)

    # control (control.Supervised)
    def _tell(self, child: Child, message: Message) -> None:
        try:
            child.channel.send(encode(message))
        except OSError:
            pass    # it is exiting; the master hears of it from waitpid

    def broadcast(self, message: Message) -> None:
        """Send ``message`` to every process of the current generation."""
        for child in list(self.children.values()):
            if self.current is not None and child.generation == self.current.number and \
                    not child.spare:
                self._tell(child, message)

    def drain(self) -> None:
        if not self.draining:
            log.log(errorlog.NOTICE, "draining: keepalive off, /status answers 503")
        self.draining = True
        self.broadcast(Drain())

    def resume(self) -> None:
        if self.draining:
            log.log(errorlog.NOTICE, "drain cancelled: keepalive back on")
        self.draining = False
        self.broadcast(Resume())

    def rows(self) -> list[Row]:
        """The process table, for ``pyresty status``, ``/status`` and ``/metrics``."""
        generation = self.current.number if self.current else 0
        state = "shutting down" if self.stopping else "draining" if self.draining else "serving"
        master = Row(role="master", id=None, pid=self.pid, generation=generation, state=state,
                     rss=rss_of(self.pid), exits=self._exit_counts(), reloads=dict(self.reloads))
        draining = generation if self.draining else None
        return [master, *child_rows(self.children.values(), time.monotonic(), draining)]

    def _exit_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for (role, reason), n in self.exits.items():
            counts.setdefault(role, {})[reason] = n
        return counts

    def _cleanup(self) -> None:
        for check in list(self.checks.values()):    # a -s reload still checking: told, not left
            check.child.kill()
            for fd in list(check.output):
                self._close_check_pipe(check, fd)
            check.answer({"reload": "refused", "reason": "the server is shutting down"})
        self.checks.clear()
        if self.control is not None:
            self.control.close()
        if self.status_server is not None:
            self.status_server.close()
        for sock in self.sockets.values():
            sock.close()
        remove_pid(self.pid_path)
        if self.config.shared and not self.children:
            # every child is gone (the loop ends when none is left): no store is open
            from pyresty.runtime import shared
            shared.remove(shared.base_dir_for(self.config.prefix))
        log.log(errorlog.NOTICE, "exit")


def _owner(config: Config) -> tuple[int, int] | None:
    """The (uid, gid) workers run as, when the master is root and drops them."""
    if not config.user or os.geteuid() != 0:
        return None
    import pwd
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid
