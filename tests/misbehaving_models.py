"""Tiny black boxes that misbehave on purpose: hang, leak, segfault, raise, return garbage, exit.

``grow`` leaks 50 MB every 0.2 s inside a call that never returns (caught only by the parent's
memory poll).

Each model answers parity probabilities of a frame's first pixel, and misbehaves only on frames
whose first pixel equals ``trigger`` (None: on every frame), so a test can show that the frames
after a fault are still served. Module-level factories, so child processes can import them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from mlink.topics.specs import VectorSpec

SPEC = VectorSpec(2, "softmax")
LEAK_MB = 50
Fault = Literal["hang", "leak", "grow", "segfault", "sigsegv", "raise", "garbage", "exit", "none"]

RELEASE = threading.Event()
"""Set to release in-process hangs (a hang in a child process is only ended by a kill)."""


def parity(frame: np.ndarray) -> np.ndarray:
    return np.eye(2, dtype=np.float32)[int(frame.flat[0]) % 2]


class Misbehaving:
    """Parity, except on trigger frames where it does ``fault``."""

    def __init__(self, fault: Fault, trigger: int | None, hang_s: float | None) -> None:
        self.fault, self.trigger, self.hang_s = fault, trigger, hang_s
        self.leaked: list[bytes] = []
        self.calls = 0

    def __call__(self, frame: np.ndarray) -> object:
        self.calls += 1
        if self.trigger is not None and int(frame.flat[0]) != self.trigger:
            return parity(frame)
        if self.fault == "hang":
            RELEASE.wait(self.hang_s)
        elif self.fault == "leak":
            self.leaked.append(b"\x01" * (LEAK_MB * 2**20))  # written, so it is resident
        elif self.fault == "grow":  # leaks inside a call that never returns
            while True:
                self.leaked.append(b"\x01" * (LEAK_MB * 2**20))
                time.sleep(0.2)
        elif self.fault == "segfault":
            ctypes.string_at(0)
        elif self.fault == "sigsegv":
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(5)
        elif self.fault == "raise":
            raise RuntimeError(f"cannot handle frame {int(frame.flat[0])}")
        elif self.fault == "garbage":
            return {"not": "an output"}
        elif self.fault == "exit":
            os._exit(3)
        return parity(frame)


def misbehaving(
    fault: Fault = "none", trigger: int | None = None, hang_s: float | None = None
) -> Callable[[np.ndarray], object]:
    """The factory a ModelFactory names: ``"tests.misbehaving_models:misbehaving"``."""
    return Misbehaving(fault, trigger, hang_s)


def drifting(after: int, classes: int = 3) -> Callable[[np.ndarray], object]:
    """One class for its first ``after`` calls (a warm-up that shows a constant), then the
    classes in turn, call by call: neither a prior nor the last real output predicts it, so
    once synthesized it agrees about 1 in ``classes`` on probes."""
    calls = iter(range(2**62))
    eye = np.eye(classes, dtype=np.float32)
    return lambda frame: eye[0] if (n := next(calls)) < after else eye[(n - after + 1) % classes]


def _scaled(scale: float = 1.0) -> Callable[[np.ndarray], object]:
    return parity


@functools.wraps(_scaled)
def wrapped_factory(*args: Any, device: str = "cpu", **kwargs: Any) -> Callable:
    """A factory behind a ``functools.wraps`` decorator that takes an argument of its own, as
    device and weights plumbing often does."""
    return _scaled(*args, **kwargs)


class CachedModel:
    """A model class whose ``__new__`` takes anything (an instance cache, a registry), so its
    signature says nothing of the arguments ``__init__`` takes."""

    def __new__(cls, *args: Any, **kwargs: Any) -> CachedModel:
        return super().__new__(cls)

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return np.array([self.scale, 0.0], np.float32)


class _ByBackend(type):
    def __call__(cls, *, backend: str, **kwargs: Any) -> object:  # consumes ``backend``
        return super().__call__(**kwargs)


class MetaBuilt(metaclass=_ByBackend):
    """A class whose metaclass takes an argument ``__init__`` never sees."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return np.array([self.scale, 0.0], np.float32)


class Dispatcher:
    """``__new__`` takes the arguments and returns another object; ``__init__`` never runs."""

    def __new__(cls, backend: str) -> Callable[[np.ndarray], object]:  # type: ignore[misc]
        return _scaled(2.0)

    def __init__(self) -> None:  # pragma: no cover - never called
        pass


def broken_factory() -> Callable[[np.ndarray], object]:
    raise RuntimeError("weights not found")


def slow_factory(seconds: float) -> Callable[[np.ndarray], object]:
    time.sleep(seconds)
    return parity


def frames(*values: int, shape: tuple[int, ...] = (2, 2)) -> list[np.ndarray]:
    return [np.full(shape, v, np.uint8) for v in values]


def library_threads() -> Callable[[np.ndarray], object]:
    """Reports the intra-op threads OpenCV and torch have in the process it runs in."""
    import cv2
    import torch

    return lambda frame: np.array([cv2.getNumThreads(), torch.get_num_threads()], np.float32)


def parity_module() -> object:
    """Parity as a ``torch.nn.Module`` (built here, so a child process can import it)."""
    import torch
    from torch import nn

    class ParityHead(nn.Module):
        def forward(self, frame: torch.Tensor) -> torch.Tensor:
            return torch.eye(2)[int(frame.flatten()[0]) % 2]

    return ParityHead()


def slow_calls(seconds: float) -> Callable[[np.ndarray], object]:
    """Parity that takes ``seconds`` a call: a batch long enough to stop a worker in."""

    def slow(frame: np.ndarray) -> np.ndarray:
        time.sleep(seconds)
        return parity(frame)

    return slow
