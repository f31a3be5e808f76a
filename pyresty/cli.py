"""The ``pyresty`` command line (SPEC §2).

    pyresty [-c FILE] [-p PREFIX] [--dev]     start in the foreground
    pyresty -t [-c FILE]                      test the config (and import every handler)
    pyresty -s reload|quit|stop|reopen        signal the running master
    pyresty status [-c FILE]                  every process and its figures
    pyresty drain [--timeout 30s] [-c FILE]   preStop: drain connections, wait for 0
    pyresty drain --cancel [-c FILE]          end a drain: keepalive back on
    pyresty --version
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from pyresty._version import __version__
from pyresty.errors import ConfigError
from pyresty.supervisor.exitcodes import EXIT_FAILURE, EXIT_OK
from pyresty.supervisor.signals import COMMANDS

if TYPE_CHECKING:
    from pyresty.config.model import Config
    from pyresty.supervisor.worker import HttpLayer

# ``-s reload`` waits for the master's checks: the handler imports may take up
# to loader.CHECK_TIMEOUT (30 s), plus the time to start the new generation
RELOAD_TIMEOUT = 40.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyresty", description="A programmable web server and gateway.")
    parser.add_argument("command", nargs="?", choices=["status", "drain"],
                        help="status: show every process; drain: preStop hook")
    parser.add_argument("-c", dest="config", metavar="FILE", help="config file (TOML)")
    parser.add_argument("-p", dest="prefix", metavar="PREFIX",
                        help="prefix for relative paths (default: the config file's folder)")
    parser.add_argument("-t", dest="test", action="store_true", help="test the config and exit")
    parser.add_argument("-s", dest="signal", choices=sorted(COMMANDS), help="signal the master")
    parser.add_argument("--dev", action="store_true", help="reload workers when code changes")
    parser.add_argument("--timeout", default="30s", help="drain: how long to wait (default 30s)")
    parser.add_argument("--cancel", action="store_true",
                        help="drain: end a drain (keepalive back on, /status 200)")
    parser.add_argument("--version", action="version", version=f"pyresty {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


def console() -> NoReturn:
    """The ``pyresty`` command; it ends with ``os._exit`` once its output is
    flushed. A command that only asks the master something (``-s``, ``-t``,
    ``status``, ``drain``) has nothing to clean up, and the interpreter's
    teardown (a collection of every object the config layer created) cost such
    a command as much as its own work (issue 17: ``-s reload`` 15-200 ms of its
    time); a server has walked its shutdown already (below)."""
    args = _parser().parse_args()
    code = run(args)
    if not (args.signal or args.test or args.command in ("status", "drain")):
        # A server that ran ends here too, its shutdown walked: the interpreter's
        # exit would join every non-daemon thread user code left (an executor's
        # busy run_in_executor or to_thread job, a thread of init_worker), and a
        # single process (workers = 0), which no master kills, outlived its
        # worker_shutdown_timeout by as long as that thread ran.
        import logging
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run(args: argparse.Namespace) -> int:
    if args.signal and args.config is not None:
        from pyresty.supervisor.pidfile import locate
        pid_file = locate(args.config, args.prefix)
        if pid_file is not None:    # the config itself is the master's business
            return send_signal(pid_file, args)
    try:
        config = _load(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if args.test:
            print(f"pyresty: configuration file {args.config} test failed", file=sys.stderr)
        return EXIT_FAILURE
    if args.test:
        return test_config(config, args)
    if args.signal:
        return send_signal(config.pid, args)
    if args.command == "status":
        from pyresty.supervisor.control import print_status
        return print_status(config)
    if args.command == "drain" and args.cancel:
        from pyresty.supervisor.control import cancel_drain
        return cancel_drain(config)
    if args.command == "drain":
        from pyresty import config as configuration
        from pyresty.supervisor.control import drain
        try:
            timeout = configuration.parse_duration(args.timeout)
        except ValueError as exc:
            print(f"pyresty: --timeout: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return drain(config, timeout)
    return start(config, args)


def _load(args: argparse.Namespace) -> Config:
    from pyresty import config as configuration
    if args.config is None:
        return configuration.builtin()
    return configuration.load(args.config, args.prefix)


def test_config(config: Config, args: argparse.Namespace) -> int:
    """``-t``: the config parsed (already) and every handler imported in a child."""
    problems = check_handlers(config, args)
    log_problem = errorlog_problem(config)
    if log_problem is not None:
        problems.insert(0, log_problem)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"pyresty: configuration file {config.path} test failed", file=sys.stderr)
        return EXIT_FAILURE
    print(f"pyresty: configuration file {config.path} test is successful")
    return EXIT_OK


def errorlog_problem(config: Config) -> str | None:
    """``error_log`` as the master would open it: None, or the problem with the file's name."""
    from pyresty import errorlog
    problem = errorlog.open_problem(config.error_log)
    return None if problem is None else f"{config.path}: {problem}"


def check_handlers(config: Config, args: argparse.Namespace | None = None) -> list[str]:
    from pyresty.runtime.loader import check_config_in_child
    if config.path == "<builtin>":
        return []
    prefix = args.prefix if args is not None else config.prefix
    return check_config_in_child(config.path, prefix)


def send_signal(pid_file: str, args: argparse.Namespace) -> int:
    """``-s``: signal the master ``pid_file`` names, once it is sure that pid is a
    pyresty master of this prefix (a stale pid file may name anything).

    ``reload`` asks on the control socket instead: the master loads the config,
    runs the ``-t`` checks (the handlers imported in a child it forks: it has the
    config layer loaded already, the command line need not) and starts the new
    generation, or refuses with every problem (a single process refuses too: it
    cannot reload): printed here, exit 1."""
    from pyresty.supervisor.control import ask, verify_master
    from pyresty.supervisor.pidfile import control_socket_for, read_pid
    control_socket = control_socket_for(pid_file)
    pid = read_pid(pid_file)
    if pid is None:
        hint = "" if args.config else \
            " (without -c, pyresty looks for the built-in welcome server; give -c FILE)"
        print(f"pyresty: no running master: pid file {pid_file} is missing or stale{hint}",
              file=sys.stderr)
        return EXIT_FAILURE
    problem = verify_master(control_socket, pid)
    if problem is not None:
        print(f"pyresty: not signalling pid {pid} from {pid_file}: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    if args.signal == "reload":
        try:
            reply = ask(control_socket, "reload", timeout=RELOAD_TIMEOUT, check=True)
        except (OSError, ValueError) as exc:
            print(f"pyresty: reload: no answer on {control_socket}: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return EXIT_FAILURE
        if reply.get("reload") == "refused":
            for line in reply.get("problems", []):
                print(line, file=sys.stderr)
            print(f"pyresty: reload refused: {reply.get('reason')}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"pyresty: reloading: {reply.get('reason')}")
        return EXIT_OK
    try:
        os.kill(pid, COMMANDS[args.signal])
    except ProcessLookupError:
        print(f"pyresty: no running master: process {pid} from {pid_file} is gone",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def start(config: Config, args: argparse.Namespace) -> int:
    from pyresty import errorlog   # here: -s, -t and status never configure logging
    from pyresty.supervisor.master import Master
    from pyresty.supervisor.single import run_single
    problem = errorlog_problem(config)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_FAILURE
    errorlog.configure(config.error_log, config.error_log_level)
    http = http_layer()   # last: it records what is loaded, so no worker finds it again
    if config.workers == 0:
        return run_single(config, http)
    return Master(config, args.config, args.prefix, http, dev=args.dev).run()


def http_layer() -> HttpLayer:
    """The HTTP server the workers host, handed to the supervisor (which never
    imports it). Imported here, before any fork, so every worker starts with
    pyresty's serving modules loaded: a reload costs a fork, not an import.
    User code is never imported in the master."""
    import pyresty.server.static  # noqa: F401  (loaded on a static file's first request otherwise)
    from pyresty.runtime import loader
    from pyresty.server import server
    loader.prepare()   # what is loaded now is recorded once, not in every worker's boot
    return server


if __name__ == "__main__":
    sys.exit(console())
