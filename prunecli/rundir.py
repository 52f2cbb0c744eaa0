"""A run directory is never lost: what a refused run may remove, and one process per directory.

Hydra creates the run directory (``.hydra/`` and ``prune.log`` in it) before the task starts, so
the :class:`RunDirGuard` callback looks first (``on_run_start``, before Hydra writes there):
whether the directory exists and, if it does, what it holds (:class:`Snapshot`). A run refused
for bad input then removes only what it added (:func:`discard_new`): the whole directory when
the run created it; otherwise the files it added, with ``.hydra/`` restored and the log cut back
to its old length. Nothing that was there before the run is removed, and a single run into a
directory that holds a finished run (its ``metrics.json``) is refused before anything is written.

:func:`lock` takes an exclusive ``flock`` on ``<dir>/.prune.lock`` for the life of the run, so
two processes never run into one directory at once (a re-run started while a stopped sweep's
workers are still running finds the job folders locked).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunecli.errors import PruneError

LOCK_NAME = ".prune.lock"
RESTORED = ".hydra"  # Hydra rewrites these files at every start: kept to put back


@dataclass
class Snapshot:
    """What a directory held before a run started."""

    path: Path
    existed: bool
    files: set[str] = field(default_factory=set)  # relative paths
    dirs: set[str] = field(default_factory=set)
    contents: dict[str, bytes] = field(default_factory=dict)  # files under .hydra/
    log_sizes: dict[str, int] = field(default_factory=dict)  # *.log files: appended to, cut back

    @classmethod
    def take(cls, path: Path) -> "Snapshot":
        path = path.resolve()
        if not path.exists():
            return cls(path, existed=False)
        snapshot = cls(path, existed=True)
        for item in path.rglob("*"):
            relative = item.relative_to(path).as_posix()
            if item.is_dir() and not item.is_symlink():
                snapshot.dirs.add(relative)
                continue
            snapshot.files.add(relative)
            if relative.startswith(RESTORED + "/") and item.is_file():
                snapshot.contents[relative] = item.read_bytes()
            elif item.suffix == ".log" and item.is_file():
                snapshot.log_sizes[relative] = item.stat().st_size
        return snapshot


# run directory (resolved) -> its snapshot, taken by RunDirGuard in this process
SNAPSHOTS: dict[Path, Snapshot] = {}
# open lock files of this process, kept open (the lock lives as long as the descriptor)
LOCKS: dict[Path, int] = {}


def check_writable(path: Path, setting: str) -> None:
    """Create ``path`` (and its parents) and write a probe file there; else one line naming the setting."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise PruneError(f"cannot write the run directory {str(path)!r} ({setting}): {err.strerror or err}") from None


def lock(path: Path) -> None:
    """Hold an exclusive lock on ``path`` for this process (released at exit or by :func:`unlock`);
    another process holding it -> :class:`PruneError` naming its pid."""
    path = path.resolve()
    if path in LOCKS:
        return
    lock_file = path / LOCK_NAME
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise PruneError(f"another prune process (pid {holder}) is running in {path}; wait for it or stop it") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    LOCKS[path] = descriptor


def unlock(path: Path) -> None:
    descriptor = LOCKS.pop(path.resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


def discard_new(path: Path) -> None:
    """Remove what the run in ``path`` added since its snapshot (all of it, if the run created the
    directory); put back ``.hydra/`` and cut logs back to their old length. Without a snapshot
    (the guard did not run) nothing is removed."""
    path = path.resolve()
    snapshot = SNAPSHOTS.get(path)
    unlock(path)
    if snapshot is None:
        return
    if not snapshot.existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for item in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        relative = item.relative_to(path).as_posix()
        if item.is_dir() and not item.is_symlink():
            if relative not in snapshot.dirs:
                shutil.rmtree(item, ignore_errors=True)
        elif relative not in snapshot.files:
            item.unlink(missing_ok=True)
    for relative, content in snapshot.contents.items():
        (path / relative).write_bytes(content)
    for relative, size in snapshot.log_sizes.items():
        log = path / relative
        if log.is_file() and log.stat().st_size > size:
            os.truncate(log, size)


def refuse_on_error(check):
    """Hydra turns a callback's exception into a warning and goes on: a refusal leaves as one line
    and ``SystemExit(2)`` (a ``BaseException``, which Hydra lets through) before Hydra writes anything."""

    def guarded(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check(self, config)
        except PruneError as err:
            from prunecli import console

            console.exit_with(err)

    return guarded


class RunDirGuard(Callback):
    """Before Hydra writes into a single run's directory: snapshot it, check it is writable, lock it."""

    @refuse_on_error
    def on_run_start(self, config: DictConfig) -> None:
        HydraConfig.instance().set_config(config)  # as run_job does next: the dir's ${hydra:...} parts resolve
        path = Path(str(config.hydra.run.dir))
        snapshot = SNAPSHOTS[path.resolve()] = Snapshot.take(path)
        if "metrics.json" in snapshot.files and config.get("resume") is not True:
            raise PruneError(f"{path} already holds a finished run (metrics.json), which a new run would overwrite: "
                             "choose another hydra.run.dir, or remove that run first")
        check_writable(path, "hydra.run.dir")
        lock(path)

    @refuse_on_error
    def on_multirun_start(self, config: DictConfig) -> None:
        check_writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")
