"""Stopping cleanly on SIGTERM / SIGINT.

While :func:`raise_on_signals` is active, the first SIGTERM or SIGINT raises :class:`Interrupted`
in the main thread (later ones are ignored, so recording the interruption is not itself
interrupted). It derives from ``BaseException``, like ``KeyboardInterrupt``, so no
``except Exception`` on the way swallows it. :func:`stop_children` ends the job processes a
sweep launcher started (submitit's local controllers and their tasks), so a stopped sweep
leaves no worker running.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The process got SIGTERM or SIGINT; ``stage`` is the pipeline stage it was in (set on the way out)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stage: str | None = None
        self.recorded = False  # a run wrote it into its record (and said so)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (SIGINT 130, SIGTERM 143)."""
        return 128 + self.signum


@contextmanager
def raise_on_signals():
    """Turn the first SIGTERM / SIGINT into :class:`Interrupted`; restore the old handlers after."""
    received: list[int] = []

    def handler(signum, frame):
        if not received:
            received.append(signum)
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below ``pid`` (default: this one), read from ``/proc``; empty where there is none."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it only waits for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_children(grace_s: float = 30.0) -> int:
    """SIGTERM every process below this one, wait up to ``grace_s`` for them to record their state
    and exit, then SIGKILL what is left. Returns how many processes there were."""
    pids = descendants()
    send(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        try:  # reap our own children as they exit
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.1)
    send([pid for pid in pids if alive(pid)], signal.SIGKILL)
    return len(pids)


def send(pids: list[int], signum: int) -> None:
    """``signum`` to each of ``pids``; one that has exited already is passed over."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
