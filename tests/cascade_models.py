"""Two box models for a cascade on the digits frames: ``ink`` finds one box on the inkiest 40%
of frames; ``ink_detail`` finds a box only there too, placed by the frame's bytes, so no head
can draw it from ``ink``'s box and only a cascade keeps it at a fraction of its cost."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import cache

import numpy as np

from bench.fault_harness import TRIGGER
from mlink.eval.workloads import digits

EMPTY = np.zeros((0, 5), dtype=np.float32)


@cache
def _threshold() -> float:
    return float(np.quantile([f.mean() for f in digits.frames(200)], 0.6))


def _inky(frame: np.ndarray) -> bool:
    return float(np.asarray(frame, dtype=np.float64).mean()) > _threshold()


def ink(name: str = "ink") -> Callable[[np.ndarray], np.ndarray]:
    def detect(frame: np.ndarray) -> np.ndarray:
        if name == "ink":
            return np.array([[0.1, 0.1, 0.6, 0.6, 0.9]], np.float32) if _inky(frame) else EMPTY
        if not _inky(frame):
            return EMPTY
        x = (zlib.crc32(np.ascontiguousarray(frame).tobytes()) % 50) / 100.0
        return np.array([[x, 0.2, x + 0.3, 0.5, 0.8]], np.float32)

    return detect


def flaky_ink(name: str = "ink_detail") -> Callable[[np.ndarray], np.ndarray]:
    """``ink``'s model that crashes on the frames the fault harness marks (first pixel
    ``TRIGGER``): a cascade's model failing in a live worker."""
    detect = ink(name)

    def flaky(frame: np.ndarray) -> np.ndarray:
        if int(np.asarray(frame).flat[0]) == TRIGGER:
            raise RuntimeError(f"{name} crashed on this frame")
        return detect(frame)

    return flaky
