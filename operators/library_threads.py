"""Intra-op threads of the libraries models are built on, in a worker that runs many models."""

from __future__ import annotations

import sys

__all__ = ["limit_library_threads"]


def limit_library_threads(threads: int | None) -> dict[str, int]:
    """Give OpenCV and torch, where this process has loaded them, ``threads`` intra-op threads
    each; return what was set (nothing for None: the libraries' defaults).

    A worker runs its models side by side, a thread each, and prices each model by the CPU time
    of the thread that called it (docs/model-execution.md). That adds up only while a model's
    work stays on that thread. With OpenCV's default pool a Haar cascade called alone split its
    work over both cores of this machine, and its caller's CPU time was about half what the
    cascade costs on one thread (bench/library_threads.py); how much the pool took depended on
    what else was running, so live cost tables of one config moved by up to a third between
    runs, and its plans with them (BENCHMARKS.md, "At a camera's pace"). One thread per model
    is also how the bench prices models (``mlink.eval.memory.single_threaded``), and on a busy
    worker the pools only oversubscribe its cores. The setting is process-wide: call it after
    the models are built (their imports load the libraries)."""
    if threads is None:
        return {}
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"library threads must be an int >= 1 or None, got {threads!r}")
    done: dict[str, int] = {}
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setNumThreads"):
        cv2.setNumThreads(threads)
        done["cv2"] = threads
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)
        done["torch"] = threads
    return done
