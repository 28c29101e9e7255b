"""Child processes that cannot outlive their parent, and signals to a child's process group.

Two sides of one Linux mechanism (``PR_SET_PDEATHSIG``): a parent arms it for a child it execs
(:func:`pdeathsig_preexec`: the embedded broker, worker processes), and a child arms it for
itself (:func:`die_with_parent`: model and training processes). Parents start their children in
their own session (process group), so signalling the group also ends whatever a child spawned.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["die_with_parent", "exit_when_orphaned", "pdeathsig_preexec", "signal_group"]

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def pdeathsig_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that sends ``sig`` to a child process when this one dies (Linux only).

    The death signal fires when the *thread* that forked exits, so None (no death signal) is
    returned outside the main thread. Usable for any child: ``Popen(..., preexec_fn=...)``.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def die_with_parent(expected_parent: int | None, *, death_signal: bool = True) -> None:
    """Make this (child) process end when its parent does: ``PR_SET_PDEATHSIG`` SIGKILL on
    Linux (only valid if the thread that started this process lives as long as the parent), and
    a watchdog thread that exits once the parent pid changes (also catches what prctl misses,
    but needs the GIL, so a model holding it in C code relies on the death signal)."""
    prctl = _prctl() if death_signal and sys.platform.startswith("linux") else None
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    parent = os.getppid()
    if expected_parent is not None and parent != expected_parent:
        os._exit(1)  # the worker died before the death signal was armed
    _watch_parent(parent, grace_s=0.0)


def exit_when_orphaned(parent: int, grace_s: float) -> None:
    """End this process ``grace_s`` seconds after ``parent`` is gone (it may be gone already).

    For children whose death signal asks for a graceful shutdown (a faust worker gets SIGTERM,
    :func:`pdeathsig_preexec`): the parent that would escalate to SIGKILL when that shutdown
    hangs is the process that died. A worker whose ``mlink run`` was killed had lost its
    embedded broker too, and its shutdown spun on the dead broker at 90% of a core until killed
    by hand. With this it gets ``grace_s`` to finish and is then ended; frames it had not
    answered are delivered again (at least once, deduplicated by frame id)."""
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s}")
    _watch_parent(parent, grace_s)


def _watch_parent(parent: int, grace_s: float) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="mlink-parent-watch", daemon=True).start()
