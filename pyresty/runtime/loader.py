"""Loading user code: handler strings, ``code_path``, and one file, one module.

Rules (SPEC §9, issue 6)
------------------------
1. Handler strings are ``"package.module:attr[.attr...]"``, imported from the
   folders of ``code_path``, which ``install`` puts at the front of
   ``sys.path`` in their order.
2. **One file, one module.** Within a process a source file is executed once.
   Importing it under a second name (``prestop`` through the folder
   ``app/models`` on ``code_path``, ``app.models.prestop`` through ``.``)
   returns the module object already loaded under the first name, registers it
   under the second name too, and logs ONE warning naming both names and the
   file. Seed 003 is the incident: the same file loaded twice under two names
   kept two copies of its state, so a flag set through one name was invisible
   through the other.
3. What counts as "the file" is ``os.path.realpath`` of the spec's origin, so a
   symlinked folder on ``sys.path`` does not make a second copy either.
4. Packages follow the same rule through their ``__init__.py``; namespace
   packages (no file), built-in and frozen modules are left alone.
5. ``importlib.reload(module)`` re-executes the file into the same module
   object, whichever of its names the caller holds.
6. Handler phases: ``rewrite``, ``access``, ``content`` and ``balancer`` are
   awaited, so their handler must be a coroutine function (``async def``, or
   an object whose ``__call__`` is ``async def``). ``header_filter`` and
   ``body_filter`` run inline on the response path and must be plain callables
   (SPEC §5). ``log``, ``init_worker`` and ``exit_worker`` may be either: the
   caller awaits the result when it is awaitable.

Theory of operation
-------------------
``install`` puts a ``OneFileFinder`` first on ``sys.meta_path``. For every
import that is not already in ``sys.modules`` it asks the finders behind it
(normally ``BuiltinImporter``, ``FrozenImporter``, ``PathFinder`` and any
editable-install finders) for the spec, exactly as the import system would.
A spec without a file location is returned untouched. For a file-backed spec
it looks up the file's real path in a dict ``real path -> (name, origin)``:

* no entry, or the entry's module is no longer in ``sys.modules`` under that
  name (it failed to import, or someone deleted it), or the name is the same
  (a reload): record this name and return the spec as found;
* otherwise return an *alias spec* whose loader hands back the module already
  loaded. The import system then stores that module under the new name and,
  since it always overwrites ``__spec__`` on the object it gets from
  ``create_module``, the alias loader puts the original spec back in
  ``exec_module`` (``reload`` looks the module up by ``__spec__.name``). The
  warning is logged there too, so ``importlib.util.find_spec`` alone logs
  nothing.

The cost per import is one call to the normal finders (which the import would
make anyway), one ``lstat`` of the file (is it a symlink?) and a dict lookup,
about 10 us against the 100 us to 1 ms an import takes; a name that nothing
finds is searched twice (by us, then by the import system), which only costs
on the ``try: import x / except ImportError`` path. The real path of each
folder is computed once and cached until ``importlib.invalidate_caches()``, so
a folder turned into a symlink while the process runs is not noticed (workers
are replaced on reload, so this does not outlive a reload). Modules imported before
``install`` are recorded when it runs; ``__main__`` is never recorded, since
aliasing a script to ``__main__`` would change what ``__name__`` it sees.

Two threads importing one file under two names at the same moment may see the
module while it is still executing, as with a circular import.

Checking a config
-----------------
``check_config`` installs ``code_path`` and resolves every handler string of a
config, returning one line per problem (``file: key: reason``).
``check_config_in_child`` runs the same check in a forked child, so the
master, which must never import user code, learns the result as JSON on the
child's stdout (fd 1 is duplicated for the result and then pointed at stderr,
so user code that prints at import cannot corrupt it). The child reports each
handler before importing it; when it hangs past the timeout or dies, the
problem names the handler it was importing.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import json
import logging
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from pyresty.errors import ConfigError, HandlerError

log = logging.getLogger("pyresty.loader")

#: Phases whose handler is awaited by the server (SPEC §5, §8; "key": a limit zone's key, §8c).
ASYNC_PHASES = frozenset({"rewrite", "access", "content", "balancer", "key"})
#: Phases whose handler is called inline and must return at once (SPEC §5).
PLAIN_PHASES = frozenset({"header_filter", "body_filter"})
#: Phases that accept either; the caller awaits an awaitable result.
EITHER_PHASES = frozenset({"log", "init_worker", "exit_worker"})

#: How long ``check_config_in_child`` waits for the child. Importing a large
#: application takes a few seconds; 30 s is nginx's default for most timeouts
#: and long enough that only a module that blocks at import reaches it.
CHECK_TIMEOUT = 30.0
#: After killing a child that timed out, how long to wait for its pipes.
_REAP_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# One file, one module
# --------------------------------------------------------------------------

class _AliasLoader(importlib.abc.Loader):
    """Hands back a module already loaded from the same file under another name."""

    def __init__(self, module: ModuleType, name: str, real: str) -> None:
        self.module = module
        self.original_spec = module.__spec__
        self.name = name
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        # The import system replaced __spec__ with the alias spec; put the
        # original back so reload() and pickling keep using the first name.
        module.__spec__ = self.original_spec
        log.warning(
            'module "%s" is the file %s already loaded as "%s"; '
            "using that module (import it by one name)",
            self.name, self.real, self.original_spec.name if self.original_spec else "?",
        )


class OneFileFinder(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that executes each source file at most once."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, str]] = {}   # real path -> (name, origin)
        self._folders: dict[str, str] = {}             # folder -> its real path
        self.seen: set[str] = set()                    # names record() was given

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        spec = self._find_behind(fullname, path, target)
        if spec is None or not spec.has_location or not spec.origin:
            return spec
        real = self._real(spec.origin)
        loaded = self._loaded(real)
        if loaded is None or self._files[real][0] == fullname:   # first time, or a reload
            self._files[real] = (fullname, spec.origin)
            return spec
        loader = _AliasLoader(loaded, fullname, real)
        return importlib.machinery.ModuleSpec(fullname, loader, origin=spec.origin)

    def record(self, name: str, module: ModuleType) -> None:
        """Note that ``module`` (already in sys.modules as ``name``) owns its file."""
        spec = getattr(module, "__spec__", None)
        if name == "__main__" or spec is None or spec.name != name:
            return
        if spec.has_location and spec.origin:
            self._files.setdefault(self._real(spec.origin), (name, spec.origin))

    def invalidate_caches(self) -> None:
        self._folders.clear()

    def _find_behind(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        """Ask the finders after this one, as the import system would."""
        finders = sys.meta_path
        start = finders.index(self) + 1 if self in finders else 0
        for finder in finders[start:]:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def _loaded(self, real: str) -> ModuleType | None:
        """The module that owns the file ``real``, if it is still loaded."""
        entry = self._files.get(real)
        if entry is None:
            return None
        name, origin = entry
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        if spec is None or spec.name != name or spec.origin != origin:
            return None
        return module

    def _real(self, origin: str) -> str:
        """``os.path.realpath(origin)``, with the folder's real path cached."""
        folder, base = os.path.split(origin)
        if not os.path.isabs(folder):
            return os.path.realpath(origin)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        path = os.path.join(real_folder, base)
        return os.path.realpath(path) if os.path.islink(path) else path


_finder: OneFileFinder | None = None
_code_path: tuple[str, ...] = ()
_added_to_path: list[str] = []


def install(code_path: Sequence[str]) -> None:
    """Put ``code_path`` first on ``sys.path`` and the one-file finder first on ``sys.meta_path``.

    Idempotent: a second call moves the folders and the finder back to the
    front without adding copies. Modules already imported are recorded, so a
    later import of one of their files under another name is aliased too.
    """
    global _finder, _code_path
    folders = [os.path.abspath(folder) for folder in code_path]
    for folder in reversed(folders):
        if folder in sys.path:
            sys.path.remove(folder)
        elif folder not in _added_to_path:
            _added_to_path.append(folder)
        sys.path.insert(0, folder)
    _code_path = tuple(folders)
    if _finder is None:
        _finder = OneFileFinder()
    _record_loaded(_finder)
    # Also drop finders left by an earlier copy of this module (a reload of it).
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_one_file_finder(f)]
    sys.meta_path.insert(0, _finder)
    importlib.invalidate_caches()


def prepare() -> None:
    """Record the modules loaded so far, without installing anything.

    The master calls it before it forks workers (it imports no user code, so
    only pyresty's and the standard library's modules are recorded): a worker's
    ``install`` then records only what was imported since, instead of finding
    the file of every module again on each boot (a third of a respawn's time).
    """
    global _finder
    if _finder is None:
        _finder = OneFileFinder()
    _record_loaded(_finder)


def _record_loaded(finder: OneFileFinder) -> None:
    """Record every module in sys.modules that ``finder`` has not seen yet."""
    seen = finder.seen
    for name, module in list(sys.modules.items()):
        if name not in seen:
            seen.add(name)
            finder.record(name, module)


def _is_one_file_finder(finder: object) -> bool:
    kind = type(finder)
    return kind.__qualname__ == "OneFileFinder" and kind.__module__ == __name__


def uninstall() -> None:
    """Undo ``install``: remove the finder and the folders it added (for tests)."""
    global _finder, _code_path
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    for folder in _added_to_path:
        while folder in sys.path:
            sys.path.remove(folder)
    _added_to_path.clear()
    _code_path = ()


# --------------------------------------------------------------------------
# Handler strings
# --------------------------------------------------------------------------

def resolve(handler: str, *, phase: str | None = None) -> Callable[..., Any]:
    """Import ``"package.module:attr[.attr...]"`` and return the callable it names.

    ``phase`` (one of ASYNC_PHASES, PLAIN_PHASES, EITHER_PHASES) adds the
    phase's rule: ``async def`` for rewrite/access/content/balancer (a callable
    object whose ``__call__`` is ``async def`` counts), a plain callable for
    header_filter/body_filter, either for log/init_worker/exit_worker.

    Raises HandlerError (one-line reason: not "module:function", module not
    found, exception while importing, attribute missing, not callable, wrong
    kind for the phase) and ValueError for an unknown phase.
    """
    if phase is not None and phase not in ASYNC_PHASES | PLAIN_PHASES | EITHER_PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    module_name, attrs = _parse(handler)
    module = _import(handler, module_name)
    target = _walk(handler, module, attrs)
    if not callable(target):
        raise HandlerError(
            f'cannot use "{handler}": {type(target).__name__!r} object is not callable'
        )
    _check_phase(handler, target, phase)
    return target


def _parse(handler: str) -> tuple[str, list[str]]:
    """Split a handler string into a module name and an attribute path."""
    module_name, sep, attr_path = handler.partition(":")
    parts = module_name.split(".") + attr_path.split(".")
    if not sep or not all(part.isidentifier() for part in parts):
        raise HandlerError(f'invalid handler "{handler}" (expected "package.module:function")')
    return module_name, attr_path.split(".")


def _import(handler: str, module_name: str) -> ModuleType:
    """Import a handler's module; every failure becomes a one-line HandlerError."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            searched = f" (searched code_path: {', '.join(_code_path)})" if _code_path else ""
            raise HandlerError(f'cannot import "{handler}": {exc}{searched}') from exc
        raise HandlerError(f'cannot import "{handler}": {_describe(exc)}') from exc
    except (Exception, SystemExit) as exc:
        raise HandlerError(f'cannot import "{handler}": {_describe(exc)}') from exc


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line)``; the place is where the error was raised."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else None
        text = f"{type(exc).__name__}: {exc.msg}"
    else:
        where = _innermost_frame(exc)
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{text} (at {where})" if where else text


def _innermost_frame(exc: BaseException) -> str | None:
    """file:line of the innermost frame outside importlib's own machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen importlib")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _walk(handler: str, module: ModuleType, attrs: list[str]) -> Any:
    """Follow the dotted attribute path after the colon."""
    target: Any = module
    for depth, attr in enumerate(attrs):
        try:
            target = getattr(target, attr)
        except AttributeError:
            owner = f"{module.__name__}:{'.'.join(attrs[:depth])}" if depth else f"module {module.__name__}"
            raise HandlerError(
                f'cannot use "{handler}": {owner} has no attribute {attr!r}{_suggest(target, attr)}'
            ) from None
    return target


def _suggest(obj: object, attr: str) -> str:
    """`` (did you mean 'x'?)`` when ``obj`` has a close name, else ''."""
    names = [n for n in dir(obj) if attr.startswith("_") or not n.startswith("_")]
    close = difflib.get_close_matches(attr, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_async(target: object) -> bool:
    """True for ``async def`` functions and objects whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(target):
        return True
    if inspect.isclass(target):
        return False
    return inspect.iscoroutinefunction(getattr(target, "__call__", None))


def _check_phase(handler: str, target: object, phase: str | None) -> None:
    if phase in ASYNC_PHASES and not _is_async(target):
        raise HandlerError(f'cannot use "{handler}": {phase} must be async def, not a plain function')
    if phase in PLAIN_PHASES and _is_async(target):
        raise HandlerError(f'cannot use "{handler}": {phase} must be a plain function, not async def')


# --------------------------------------------------------------------------
# Checking a whole config
# --------------------------------------------------------------------------

def check_config(config: Any, *, on_check: Callable[[str, str], None] | None = None) -> list[str]:
    """Install ``config.code_path`` and resolve every handler string of ``config``.

    Returns one line per problem, ``"<config.path>: <key path>: <reason>"``;
    an empty list means every handler resolved. ``on_check(key, handler)`` is
    called before each import (the child uses it to report progress).
    Imports user code into this process: the master uses check_config_in_child.
    """
    install(config.code_path)
    problems: list[str] = []
    for key, handler in config.handler_strings():
        if on_check is not None:
            on_check(key, handler)
        try:
            resolve(handler, phase=key.rsplit(".", 1)[-1])
        except HandlerError as exc:
            problems.append(f"{config.path}: {key}: {exc}")
    return problems


def check_config_in_child(
    config_path: str,
    prefix: str | None = None,
    *,
    timeout: float = CHECK_TIMEOUT,
    load: str = "pyresty.config:load",
) -> list[str]:
    """Run ``check_config`` in a fresh interpreter and return its problem lines.

    The child calls ``load(config_path, prefix)`` (a "module:function" string,
    ``pyresty.config.load`` unless a test passes its own) to build the config;
    a ConfigError's problems are returned as they are. A child that does not
    finish within ``timeout`` seconds is killed with its process group, and a
    child that dies yields one problem naming the handler it was importing.
    Never raises for anything the child does.
    """
    status, out, err, finished = _forked(config_path, prefix or "", load, timeout)
    return check_result(config_path, status, out, err, finished, timeout)


def _forked(config_path: str, prefix: str, load: str, timeout: float
            ) -> tuple[int, bytes, bytes, bool]:
    """Run ``_check_main`` in a forked child of this process, in a session of
    its own: (exit status, stdout, stderr, finished in time).

    A fork, not a fresh interpreter: the command line that asks (``-t``) has
    pyresty imported already, and the user code it checks is imported in the
    child only. Starting a second interpreter and importing pyresty again cost
    a reload more than everything else it does (issue 17)."""
    check = start_check(config_path, prefix, load)
    output = {check.out: bytearray(), check.err: bytearray()}
    finished = _read_until_eof(output, time.monotonic() + timeout)
    if not finished:
        check.kill()
        # a grandchild that left the group may still hold the pipes: bounded
        _read_until_eof(output, time.monotonic() + _REAP_TIMEOUT)
    for fd in output:
        os.close(fd)
    _, status = os.waitpid(check.pid, 0)
    return exit_code(status), bytes(output[check.out]), bytes(output[check.err]), finished


class CheckChild:
    """A handler check running in a forked child: its pid and the read ends of
    its stdout (the JSON messages) and stderr. The caller reads both to EOF,
    reaps the child and passes what it got to ``check_result``."""

    __slots__ = ("pid", "out", "err")

    def __init__(self, pid: int, out: int, err: int) -> None:
        self.pid, self.out, self.err = pid, out, err

    def kill(self) -> None:
        """SIGKILL the child's process group: it only imports, it has nothing to
        save, and a module stuck at import may well ignore SIGTERM."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_check(config_path: str, prefix: str, load: str = "pyresty.config:load",
                in_child: Callable[[], None] | None = None) -> CheckChild:
    """Fork the child of ``check_config_in_child`` (``_check_main``) and return
    at once. ``in_child`` runs first in the child (the master closes what is
    its alone there)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:    # the child: never returns
        try:
            if in_child is not None:
                in_child()
            os.setsid()
            os.close(out_r)
            os.close(err_r)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            # Python's own streams onto the new descriptors (the parent's may
            # be anything: a terminal, a test's capture)
            sys.stdout = open(1, "w", closefd=False, buffering=1)
            sys.stderr = open(2, "w", closefd=False, buffering=1)
            sys.argv = ["pyresty-check", config_path, prefix, load]
            _check_main()
        finally:
            os._exit(1)
    os.close(out_w)
    os.close(err_w)
    return CheckChild(pid, out_r, err_r)


def exit_code(status: int) -> int:
    """A ``waitpid`` status as ``_result`` takes it: the exit code, or -signal."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def check_result(config_path: str, code: int, out: bytes, err: bytes, finished: bool,
                 timeout: float = CHECK_TIMEOUT) -> list[str]:
    """The problem lines of a check child that exited with ``code`` (``exit_code``)
    after writing ``out`` and ``err``; ``finished`` False: it was killed at ``timeout``."""
    if not finished:
        return [_failure(config_path, out, f"did not finish within {timeout:g} s")]
    return _result(config_path, code, out, err)


def _read_until_eof(output: dict[int, bytearray], deadline: float) -> bool:
    """Read every pipe of ``output`` to EOF; False when ``deadline`` came first."""
    with selectors.DefaultSelector() as selector:
        for fd in output:
            selector.register(fd, selectors.EVENT_READ)
        open_fds = len(output)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in selector.select(left):
                data = os.read(key.fd, 65536)
                if data:
                    output[key.fd] += data
                else:
                    selector.unregister(key.fd)
                    open_fds -= 1
    return True


def _result(config_path: str, status: int, out: bytes, err: bytes) -> list[str]:
    for message in _messages(out):
        if "problems" in message:
            return [str(line) for line in message["problems"]]
    if status < 0:
        how = f"was killed by {signal.Signals(-status).name}"
    else:
        how = f"exited with status {status}"
    last = next((line for line in reversed(err.decode(errors="replace").splitlines())
                 if line.strip()), "")
    return [_failure(config_path, out, how + (f": {last.strip()}" if last else ""))]


def _failure(config_path: str, out: bytes, how: str) -> str:
    """One problem line for a child that hung or died, naming its last handler."""
    checking = [m for m in _messages(out) if "checking" in m]
    if not checking:
        return f"{config_path}: the handler check process {how}"
    last = checking[-1]
    return f'{config_path}: {last["checking"]}: importing "{last["handler"]}" {how}'


def _messages(out: bytes) -> list[dict[str, Any]]:
    messages = []
    for line in out.decode(errors="replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


def _check_main() -> None:
    """The child of check_config_in_child: argv is config path, prefix, load."""
    config_path, prefix, load = sys.argv[1:4]
    result = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # user code printing at import goes to stderr, not into the result

    def send(message: dict[str, Any]) -> None:
        result.write(json.dumps(message) + "\n")
        result.flush()

    problems = _check_child_config(config_path, prefix or None, load,
                                   lambda key, handler: send({"checking": key, "handler": handler}))
    send({"problems": problems})
    # Skip interpreter shutdown: user threads or atexit hooks must not hold us.
    os._exit(0)


def _check_child_config(
    config_path: str, prefix: str | None, load: str, on_check: Callable[[str, str], None]
) -> list[str]:
    module_name, _, function = load.partition(":")
    try:
        config = getattr(importlib.import_module(module_name), function)(config_path, prefix)
    except ConfigError as exc:
        return list(exc.problems)
    except Exception as exc:  # noqa: BLE001 - any failure becomes one problem line
        return [f"{config_path}: cannot load the config: {_describe(exc)}"]
    return check_config(config, on_check=on_check)
