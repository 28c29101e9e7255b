"""Tiny black-box models and a frame source for tests of the benchmark and configs.

Frames are 16x16 grayscale images whose brightness drifts slowly in two streams, so every
model's output is a known function of the frame and consecutive frames are related.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np


def frames(n: int = 80, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for stream in ("s0", "s1"):
        level = rng.uniform(0.2, 0.8)
        for _ in range(n // 2):
            level = float(np.clip(level + rng.normal(0, 0.05), 0.0, 1.0))
            noise = rng.normal(0, 0.02, (16, 16))
            yield stream, np.clip((level + noise) * 255, 0, 255).astype(np.uint8)


def model(name: str, delay_ms: float = 2.0) -> Callable[[np.ndarray], np.ndarray]:
    """``delay_ms`` stands in for a real model's compute, so links are cheap next to models."""

    def bright(frame: np.ndarray) -> np.ndarray:
        on = float(frame.mean() / 255 > 0.5)
        return np.array([1 - on, on], dtype=np.float32)

    def level(frame: np.ndarray) -> np.ndarray:
        return np.array([round(frame.mean() / 255 * 4)], dtype=np.float32)

    def spread(frame: np.ndarray) -> np.ndarray:
        return np.array([frame.std() / 255], dtype=np.float32)

    fn = {"bright": bright, "level": level, "spread": spread}[name]

    def timed(frame: np.ndarray) -> np.ndarray:
        time.sleep(delay_ms / 1000)
        return fn(frame)

    return timed
