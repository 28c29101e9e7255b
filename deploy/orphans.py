"""Child processes that cannot outlive their parent, and signals to a child's process group.

Used for the embedded broker and the worker processes: both start their child in its own
session (process group), so signalling the group also ends whatever the child spawned.
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
from collections.abc import Callable
from typing import Any

__all__ = ["pdeathsig_preexec", "signal_group"]

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
