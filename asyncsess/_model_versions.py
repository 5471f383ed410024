"""TensorFlow Serving's base path: the newest version served, newer ones swapped in.

`ModelVersions` is the `ModelSource` of ``serve --saved-model``. It serves the
highest numeric version folder that loads, polls for higher ones, loads a new
one in the background while the old one serves, swaps it in for new requests,
lets the old one finish its requests and closes it. A version that fails to
load is logged, shown in the status with its error, and not tried again until
its files change. With *freeze_gc*, loaded versions are frozen out of the
garbage collector's full collections and a closed one is released at a quiet
moment (`ModelVersions`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import collapse
from ._gc_freeze import freeze, refreeze, unfreeze
from ._model_graph import is_saved_model
from ._signature import (
    ServedVersion,
    VersionState,
    VersionStatus,
    code_name,
    servable_not_found,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    from anyio.abc import TaskGroup, TaskStatus

    #: Opens version *number* at *path*, served for the time of the block.
    OpenVersion = Callable[[str, int], AbstractAsyncContextManager[ServedVersion]]

logger = logging.getLogger("asyncsess.serve")

_VERSION_NAME = re.compile(r"\d+")
_INT64_MAX = 2**63 - 1
#: Versions kept in the status after they ended (TF Serving keeps them all).
_ENDED_KEPT = 16


def versions_at(path: str) -> dict[int, str]:
    """The SavedModel versions under *path*: ``{number: folder}``.

    *path* itself a SavedModel: one version, its folder name's number (1 if the
    name is not a number). Otherwise TensorFlow Serving's base-path layout: each
    subfolder named by a number that holds a ``saved_model.pb`` (a folder still
    being written, without one, is not a version yet).
    """
    if is_saved_model(path):
        return {version_of(path): path}
    found = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if _VERSION_NAME.fullmatch(entry.name) and entry.is_dir():
                number = int(entry.name)
                if number <= _INT64_MAX and is_saved_model(entry.path):
                    found[number] = entry.path
    return found


def version_of(saved_model_dir: str) -> int:
    """The version number of a SavedModel folder: its name's number, else 1."""
    name = os.path.basename(os.path.normpath(saved_model_dir))
    return int(name) if _VERSION_NAME.fullmatch(name) else 1


def fingerprint(path: str) -> tuple[tuple[str, int, int], ...]:
    """The files of *path* with their sizes and times: changes when it is rewritten."""
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue
            files.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


@dataclass(eq=False)
class _Version:
    """One version's life: loading, serving, retiring, ended (or failed)."""

    number: int
    path: str
    state: VersionState = VersionState.LOADING
    error_code: str = "OK"
    error_message: str = ""
    served: ServedVersion | None = None
    inflight: int = 0
    retire: anyio.Event = field(default_factory=anyio.Event)
    idle: anyio.Event = field(default_factory=anyio.Event)

    def status(self) -> VersionStatus:
        return VersionStatus(
            self.number, self.state, self.error_code, self.error_message
        )


class ModelVersions:
    """The versions of a model under a path, as TensorFlow Serving serves them.

    Use it inside `running` (an app's lifespan): entering loads the highest
    version that loads, then a background task polls every *poll_secs* for a
    higher one, or for the newest one left when the serving version's folder is
    deleted (only for a base path; a SavedModel folder is served as is).

    Args:
      path: A SavedModel folder, or a base path of numeric version folders.
      name: The model's name.
      open_version: ``open_version(folder, number)``: an async context manager
        serving that version (`asyncsess._saved_model.open_saved_model`).
      poll_secs: Seconds between looks for a newer version (inf: never).
      retire_grace_secs: Longest a replaced version waits for its requests
        before it is closed anyway.
      freeze_gc: Manage the garbage collector for long-lived graphs (below).
      gc_quiet_secs: How long no request must have held a version before a
        closed version's graph is collected.
      gc_wait_secs: Longest wait for such a quiet moment.

    With *freeze_gc*, the objects left after each version loads are frozen
    (`gc.freeze`): a graph lives as long as its version serves, and every full
    collection that walked it would stop the loop. Frozen objects are never
    collected, though, and a graph is full of reference cycles, so once a
    replaced version has closed, its graph is released by a full collection of
    everything (`gc.unfreeze`, `gc.collect`, `gc.freeze`), which stops the loop
    for 0.2-1 s with TensorFlow loaded. The trade-off: it waits until no
    request has held a version for *gc_quiet_secs*, so a server whose traffic
    has lulls takes the pause in one (only a request arriving during it
    waits), but under traffic without a lull it runs after *gc_wait_secs*
    anyway: one pause per swap rather than a graph kept in memory per swap.
    Leaving `running` unfreezes every object (frozen by anyone), leaving the
    closed graphs to the collector.

    Cancellation: `running` owns the version tasks; leaving it (or cancelling
    it) retires every version, waits for their requests (bounded by
    *retire_grace_secs*) and closes them. A load in progress is abandoned when
    its graph import ends.
    """

    def __init__(
        self,
        path: str,
        *,
        name: str,
        open_version: OpenVersion,
        poll_secs: float = 1.0,
        retire_grace_secs: float = 30.0,
        freeze_gc: bool = False,
        gc_quiet_secs: float = 1.0,
        gc_wait_secs: float = 60.0,
    ) -> None:
        self.path = path
        self._name = name
        self._open = open_version
        self.poll_secs = poll_secs
        self.retire_grace_secs = retire_grace_secs
        self.freeze_gc = freeze_gc
        self.gc_quiet_secs = gc_quiet_secs
        self.gc_wait_secs = gc_wait_secs
        self._versions: dict[int, _Version] = {}
        self._current: _Version | None = None
        self._failed: dict[int, Any] = {}
        self._inflight = 0  # requests holding any version
        self._last_request = 0.0  # when the last one ended (time.monotonic)
        self._closed_one: anyio.Event | None = None  # a version closed (running)
        self._missing_logged = False  # the serving version's folder is gone
        #: Versions loaded, versions that failed to load, looks for new ones,
        #: full collections after versions closed (*freeze_gc*).
        self.loads = 0
        self.load_failures = 0
        self.polls = 0
        self.releases = 0

    @property
    def name(self) -> str:
        """The model's name."""
        return self._name

    @property
    def current(self) -> ServedVersion | None:
        """The version new requests go to (None before the first load)."""
        return None if self._current is None else self._current.served

    def statuses(self) -> list[VersionStatus]:
        """Every version known, newest first."""
        return [
            self._versions[n].status() for n in sorted(self._versions, reverse=True)
        ]

    def use(self, version: int | None) -> AbstractAsyncContextManager[ServedVersion]:
        """Hold *version* (None: the newest) while the block runs.

        Raises:
          ServingError: NOT_FOUND, that version does not serve (now).

        Cancellation: a cancelled block releases the version (a retiring one
        closes once its last block is left).
        """
        return _Held(self, version)

    def _hold(self, version: int | None) -> tuple[_Version, ServedVersion]:
        entry = self._current if version is None else self._versions.get(version)
        if entry is None or entry.state is not VersionState.AVAILABLE:
            raise servable_not_found(self._name, version)
        served = entry.served
        assert served is not None
        entry.inflight += 1
        self._inflight += 1
        return entry, served

    def _release(self, entry: _Version) -> None:
        entry.inflight -= 1
        self._inflight -= 1
        if not self._inflight:
            self._last_request = time.monotonic()
        if entry.inflight == 0 and entry.state is not VersionState.AVAILABLE:
            entry.idle.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ModelVersions]:
        """Serve: load the newest version that loads, watch for newer ones.

        Raises:
          RuntimeError: no version under the path loads (each one's error is
            logged).
          OSError: the path cannot be read.

        Cancellation: see the class docstring.
        """
        self._closed_one = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                await self._load_first(tg)
                watch, release = anyio.CancelScope(), anyio.CancelScope()
                if math.isfinite(self.poll_secs) and not is_saved_model(self.path):
                    tg.start_soon(self._watch, tg, watch)
                    if self.freeze_gc:
                        tg.start_soon(self._release_closed, release)
                try:
                    yield self
                finally:
                    watch.cancel()
                    release.cancel()
                    for entry in self._versions.values():
                        entry.retire.set()
        except BaseExceptionGroup as group:
            error = collapse(group)
            if error is group:
                raise
            raise error from None
        finally:
            if self.freeze_gc:
                unfreeze(f"after model {self._name} stopped serving")

    async def _load_first(self, tg: TaskGroup) -> None:
        found = await anyio.to_thread.run_sync(versions_at, self.path)
        for number in sorted(found, reverse=True):
            if await self._load(tg, number, found[number]):
                return
        tried = ", ".join(
            f"version {v.number}: {v.error_message}" for v in self._versions.values()
        )
        raise RuntimeError(
            f"No version of model {self._name!r} under {self.path} could be loaded"
            + (f" ({tried})." if tried else ": it holds no SavedModel.")
        )

    async def _watch(self, tg: TaskGroup, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self.poll_secs)
                try:
                    found = await anyio.to_thread.run_sync(versions_at, self.path)
                except OSError as exc:
                    logger.warning(
                        "Cannot look for new versions in %s: %s", self.path, exc
                    )
                else:
                    await self._load_newer(tg, found)
                self.polls += 1

    async def _load_newer(self, tg: TaskGroup, found: dict[int, str]) -> None:
        """Load the newest version in *found* that loads, if the current one is older.

        Or gone: when the serving version's folder is deleted, the newest
        version still there is loaded and swapped in (TF Serving's latest
        policy goes back to it), the deleted one retiring only once it serves,
        so no request fails. With no version left at all, the current one
        keeps serving (logged once) until one appears.
        """
        current = self._current
        newest = -1 if current is None else current.number
        gone = current is not None and newest not in found
        if gone and not found:
            if not self._missing_logged:
                logger.warning(
                    "The folder of version %d of model %s is gone and no other "
                    "version is under %s; it keeps serving until one appears",
                    newest,
                    self._name,
                    self.path,
                )
            self._missing_logged = True
            return
        self._missing_logged = False
        for number in sorted(found, reverse=True):
            if number <= newest and not gone:
                return
            if await self._load(tg, number, found[number]):
                if gone and number < newest:
                    logger.info(
                        "Version %d of model %s was deleted; version %d serves again",
                        newest,
                        self._name,
                        number,
                    )
                return

    async def _load(self, tg: TaskGroup, number: int, path: str) -> bool:
        """Load version *number*; swap it in. False if it failed (or failed before)."""
        files = await anyio.to_thread.run_sync(fingerprint, path)
        if self._failed.get(number) == files:
            return False  # the same files failed before: not again every poll
        entry = self._versions[number] = _Version(number, path)
        logger.info("Loading version %d of model %s from %s", number, self._name, path)
        try:
            await tg.start(self._serve, entry)
        except Exception as exc:
            self._failed[number] = files
            self.load_failures += 1
            entry.state = VersionState.END
            entry.error_code = _error_code(exc)
            entry.error_message = f"{type(exc).__name__}: {exc}"
            logger.error(
                "Version %d of model %s failed to load; %s: %s",
                number,
                self._name,
                "keeping the version serving" if self._current else "skipping it",
                entry.error_message,
            )
            return False
        self.loads += 1
        self._swap(entry)
        if self.freeze_gc:
            freeze(f"after loading version {number} of model {self._name}")
        return True

    def _swap(self, entry: _Version) -> None:
        """New requests go to *entry*; the version it replaces retires."""
        old, self._current = self._current, entry
        if old is not None:
            old.state = VersionState.UNLOADING
            if old.inflight == 0:
                old.idle.set()
            old.retire.set()
            logger.info(
                "Version %d of model %s serves; version %d retires",
                entry.number,
                self._name,
                old.number,
            )
        else:
            logger.info("Version %d of model %s serves", entry.number, self._name)
        self._forget_ended()

    def _forget_ended(self) -> None:
        ended = [n for n, v in self._versions.items() if v.state is VersionState.END]
        for number in sorted(ended)[:-_ENDED_KEPT]:
            del self._versions[number]

    async def _serve(self, entry: _Version, *, task_status: TaskStatus[None]) -> None:
        """Open *entry*, serve it until it retires and its requests are done."""
        started = False
        try:
            async with self._open(entry.path, entry.number) as served:
                entry.served = served
                entry.state = VersionState.AVAILABLE
                started = True
                # Not started(served): anyio's start future would keep it (and
                # its graph) alive after it closed.
                task_status.started()
                await entry.retire.wait()
                entry.state = VersionState.UNLOADING
                if entry.inflight:
                    with anyio.move_on_after(self.retire_grace_secs):
                        await entry.idle.wait()
        except Exception:
            if not started:
                raise
            logger.exception(
                "Closing version %d of model %s failed", entry.number, self._name
            )
        finally:
            if started:
                entry.state = VersionState.END
                entry.served = None
                logger.info("Version %d of model %s closed", entry.number, self._name)
                if self._closed_one is not None:
                    self._closed_one.set()

    async def _release_closed(self, scope: anyio.CancelScope) -> None:
        """Collect each closed version's frozen graph at a quiet moment (freeze_gc)."""
        with scope:
            while True:
                assert self._closed_one is not None
                await self._closed_one.wait()
                self._closed_one = anyio.Event()
                await self._quiet()
                refreeze(f"after a version of model {self._name} closed")
                self.releases += 1

    async def _quiet(self) -> None:
        """Until no request held a version for gc_quiet_secs (or gc_wait_secs passed).

        Counted from now at the earliest: what closed a version lets go of it
        meanwhile.
        """
        start = time.monotonic()
        deadline = start + self.gc_wait_secs
        while True:
            now = time.monotonic()
            idle = 0.0 if self._inflight else now - max(start, self._last_request)
            if idle >= self.gc_quiet_secs or now >= deadline:
                return
            await anyio.sleep(min(self.gc_quiet_secs - idle, deadline - now))


class _Held:
    """The block of `ModelVersions.use` (a class: cheaper than a generator's)."""

    __slots__ = ("_entry", "_version", "_versions")

    def __init__(self, versions: ModelVersions, version: int | None) -> None:
        self._versions = versions
        self._version = version
        self._entry: _Version | None = None

    async def __aenter__(self) -> ServedVersion:
        self._entry, served = self._versions._hold(self._version)
        return served

    async def __aexit__(self, *exc_info: object) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._versions._release(entry)


def _error_code(exc: BaseException) -> str:
    """TensorFlow's code name for a load error (UNKNOWN for a non-TF error)."""
    error_code = getattr(exc, "error_code", None)
    if isinstance(error_code, int):
        return code_name(error_code)
    return "NOT_FOUND" if isinstance(exc, FileNotFoundError) else "UNKNOWN"
