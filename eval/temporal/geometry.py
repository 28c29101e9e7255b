"""Where frames sit in their streams: positions, runs of consecutive frames, lagged pairs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mlink.topics.specs import SequenceSpec

__all__ = ["change_distance", "is_vector", "lag_pairs", "positions", "stream_segments"]


def positions(streams: Sequence[str]) -> np.ndarray:
    """Each frame's position within its own stream."""
    seen: dict[str, int] = {}
    pos = np.empty(len(streams), dtype=np.int64)
    for i, s in enumerate(streams):
        pos[i] = seen.get(s, 0)
        seen[s] = pos[i] + 1
    return pos


def stream_segments(
    streams: Sequence[str], pos: np.ndarray, idx: Iterable[int]
) -> list[np.ndarray]:
    """``idx`` cut into runs of consecutive frames of one stream, in time order."""
    by_stream: dict[str, list[int]] = {}
    for i in sorted(int(i) for i in idx):
        by_stream.setdefault(streams[i], []).append(i)
    out = []
    for frames in by_stream.values():
        frames.sort(key=lambda i: pos[i])
        start = 0
        for j in range(1, len(frames) + 1):
            if j == len(frames) or pos[frames[j]] != pos[frames[j - 1]] + 1:
                out.append(np.array(frames[start:j], dtype=np.int64))
                start = j
    return out


def lag_pairs(segments: Sequence[np.ndarray], max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(then, now)`` frame pairs within a segment, ``1 <= lag <= max_lag``, and the lags."""
    pairs, lags = [], []
    for seg in segments:
        for d in range(1, min(max_lag, len(seg) - 1) + 1):
            pairs.append(np.stack([seg[:-d], seg[d:]], axis=1))
            lags.append(np.full(len(seg) - d, d))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(pairs), np.concatenate(lags)


def is_vector(spec) -> bool:
    return not isinstance(spec, SequenceSpec)


def change_distance(delta: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Root-mean-square standardised change per row."""
    return np.sqrt(np.mean(np.square(delta / scale), axis=-1))
