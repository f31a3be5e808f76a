"""``pyresty.shared``: this process's shared dicts by name (SPEC §7).

Rules (who calls what, and when)
--------------------------------
- master, at start only:       ``wipe(specs, base_dir)`` (a restart begins empty,
                               as in OpenResty; a reload must NOT wipe, so the
                               data survives it, even with a new size)
- every child, after fork:     ``open_all(specs, base_dir)``, which registers
                               ``close_all()`` with the process's lifecycle
                               registry (it runs at exit; ``await aclose_all()``
                               also waits for the Redis pools to close). The master never opens a store across a
                               fork (py-lmdb refuses an environment a parent had
                               open; LMDB's locks are per process).
- master, after reaping one:   ``reader_check(specs, base_dir)`` clears reader
                               slots a killed process left pinning pages. It opens
                               each store for ~1 ms and closes it (measured: the
                               children's work is undisturbed and later forks are
                               fine); see ``embedded.reader_check``.
- /metrics:                    ``stats()`` (no I/O: Redis figures are the last
                               ones fetched, refreshed in the background) or
                               ``await astats()`` (fresh).

``base_dir_for(prefix)`` names the directory: ``/dev/shm/pyresty-<hash of
prefix>`` when /dev/shm is writable, else ``<prefix>/logs/shm``. Each embedded
dict is an LMDB environment in its own subdirectory. When a root process (the
privileged agent) creates a store in a directory owned by the worker user, it
hands the files to that user, so workers can open them after it.

Theory of operation
-------------------
``shared`` is one ``SharedDicts`` mapping per process, filled by ``open_all``;
``shared["cache"]`` returns the backend object for that name: ``EmbeddedDict``
(``backend = "embedded"``) or ``RedisDict`` (``redis://``, ``rediss://``,
``unix://``). An unknown name raises a ``KeyError`` that names the configured
dicts, so a typo explains itself.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping

from redis.asyncio import Redis

from pyresty.config.model import SharedDictSpec
from pyresty.errors import SharedDictError
from pyresty.runtime import lifecycle
from pyresty.runtime.shared import embedded, redis_backend
from pyresty.runtime.shared.contract import DictStats, SharedDict
from pyresty.runtime.shared.embedded import EmbeddedDict
from pyresty.runtime.shared.redis_backend import RedisDict

__all__ = [
    "DictStats", "EmbeddedDict", "RedisDict", "SharedDict", "SharedDicts",
    "aclose_all", "astats", "base_dir_for", "close_all", "open_all", "reader_check",
    "shared", "stats", "store_path", "wipe",
]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class UnknownSharedDict(KeyError):
    """``shared[name]`` for a name that is not configured."""

    def __str__(self) -> str:
        return str(self.args[0])


class SharedDicts(Mapping[str, SharedDict]):
    """The configured shared dicts of this process, by name (read-only)."""

    def __init__(self) -> None:
        self._dicts: dict[str, SharedDict] = {}

    def __getitem__(self, name: str) -> SharedDict:
        try:
            return self._dicts[name]
        except KeyError:
            configured = ", ".join(sorted(self._dicts)) or "none"
            raise UnknownSharedDict(
                f"no shared dict {name!r} (configured: {configured})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._dicts)

    def __len__(self) -> int:
        return len(self._dicts)

    def __repr__(self) -> str:
        return f"<shared dicts: {', '.join(self._dicts) or 'none'}>"


shared = SharedDicts()


def base_dir_for(prefix: str) -> str:
    """Where the embedded stores of the server at ``prefix`` live (not created here)."""
    digest = hashlib.sha256(os.path.realpath(prefix).encode()).hexdigest()[:16]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return f"/dev/shm/pyresty-{digest}"
    return os.path.join(prefix, "logs", "shm")


def store_path(base_dir: str, name: str) -> str:
    """The directory of dict ``name``'s LMDB environment."""
    if _PLAIN_NAME.fullmatch(name):
        return os.path.join(base_dir, name)
    return os.path.join(base_dir, "_" + hashlib.sha256(name.encode()).hexdigest()[:16])


def _embedded_specs(specs: Iterable[SharedDictSpec]) -> list[SharedDictSpec]:
    return [spec for spec in specs if spec.backend == "embedded"]


def remove(base_dir: str) -> None:
    """Delete the embedded stores of a server that stopped (its master, at exit):
    a stopped server leaves nothing in /dev/shm. A restart begins empty anyway."""
    shutil.rmtree(base_dir, ignore_errors=True)


def wipe(specs: Iterable[SharedDictSpec], base_dir: str,
         owner: tuple[int, int] | None = None) -> None:
    """Empty ``base_dir`` so a fresh start begins with empty stores (master, at start).

    Everything under ``base_dir`` goes, so dicts dropped from the config go
    too; Redis dicts are never touched (other machines share them). The
    directory is recreated (mode 0700, handed to ``owner`` = (uid, gid) when
    given: the user the workers run as). ``specs`` is accepted for symmetry
    with the other calls. Raises SharedDictError if it cannot be done.
    """
    del specs
    try:
        if os.path.isdir(base_dir):
            shutil.rmtree(base_dir)
        os.makedirs(base_dir, mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(base_dir, *owner)
    except OSError as exc:
        raise SharedDictError(f"cannot wipe shared dict stores in {base_dir}: {exc}") from exc


def open_all(specs: Iterable[SharedDictSpec], base_dir: str) -> None:
    """Open every configured dict in this process (call after fork).

    To reopen (a reload in single-process mode), ``close_all()`` first;
    embedded stores still open are closed here in any case. Raises
    SharedDictError if a store cannot be opened, ValueError for an unknown
    backend; nothing stays open on failure.
    """
    _close_embedded()
    specs = list(specs)
    clients = redis_backend.clients_for(s.backend for s in specs if s.backend.startswith(REDIS_SCHEMES))
    opened: dict[str, SharedDict] = {}
    try:
        for spec in specs:
            opened[spec.name] = _open(spec, base_dir, clients)
    except BaseException:
        for d in opened.values():
            if isinstance(d, EmbeddedDict):
                d.close()
        raise
    shared._dicts = opened
    lifecycle.register("shared dicts", lifecycle.Layer.STORES, close=close_all)


def _open(spec: SharedDictSpec, base_dir: str,
          clients: dict[str, Redis]) -> SharedDict:
    if spec.backend == "embedded":
        path = store_path(base_dir, spec.name)
        d = EmbeddedDict(spec.name, path, spec.capacity)
        _hand_over(path, base_dir)
        return d
    if spec.backend.startswith(REDIS_SCHEMES):
        return RedisDict(spec.name, spec.backend, client=clients[spec.backend])
    raise ValueError(f"shared dict {spec.name!r}: unknown backend {spec.backend!r} "
                     f"(expected \"embedded\" or a redis:// / unix:// URL)")


def _hand_over(path: str, base_dir: str) -> None:
    """As root, give a new store to the owner of ``base_dir`` (the worker user)."""
    if os.geteuid() != 0:
        return
    st = os.stat(base_dir)
    if st.st_uid == 0:
        return
    for name in (path, os.path.join(path, "data.mdb"), os.path.join(path, "lock.mdb")):
        os.chown(name, st.st_uid, st.st_gid)


def _close_embedded() -> None:
    for d in shared._dicts.values():
        if isinstance(d, EmbeddedDict):
            d.close()


_closing: set[asyncio.Task[None]] = set()


def close_all() -> None:
    """Close every dict of this process (idempotent; never raises for Redis).

    Embedded stores close at once. Redis pools are closed by a task on the
    running loop if there is one (else their sockets go with the process).
    """
    for client in _detach_all():
        try:
            task = asyncio.get_running_loop().create_task(client.aclose())
        except RuntimeError:
            continue
        _closing.add(task)
        task.add_done_callback(_closing.discard)


async def aclose_all() -> None:
    """``close_all()`` that waits for the Redis pools to close."""
    for client in _detach_all():
        await client.aclose()


def _detach_all() -> list[Redis]:
    """Empty the registry, close the embedded stores, return the Redis clients."""
    dicts, shared._dicts = shared._dicts, {}
    for d in dicts.values():
        if isinstance(d, EmbeddedDict):
            d.close()
    return list({id(d.client): d.client for d in dicts.values()
                 if isinstance(d, RedisDict)}.values())


def reader_check(specs: Iterable[SharedDictSpec], base_dir: str) -> int:
    """Clear dead processes' reader slots in every embedded store (master, after
    reaping a child); returns how many were cleared. Raises SharedDictError."""
    return sum(embedded.reader_check(store_path(base_dir, s.name), s.capacity)
               for s in _embedded_specs(specs))


def stats() -> dict[str, DictStats]:
    """``{name: {capacity, used, keys, evictions}}`` for ``/metrics``, without I/O
    (Redis dicts report their last figures; see ``RedisDict.stats_now``)."""
    return {name: d.stats_now() for name, d in shared._dicts.items()}


async def astats() -> dict[str, DictStats]:
    """``stats()`` with fresh Redis figures."""
    return {name: await d.stats() for name, d in shared._dicts.items()}
