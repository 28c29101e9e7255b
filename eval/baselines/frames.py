"""What the frame-based baselines compute from the pixels: Reducto features and CNN thumbnails.

Frames arrive as arrays (8x8 grayscale digits, 720p BGR video, ...): this module needs neither
OpenCV nor a broker. :func:`prepare_frames` turns a frame source into both in one pass and times
each, because their cost is part of what the method spends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FEATURES",
    "PreparedFrames",
    "feature_diff",
    "frame_features",
    "prepare_frames",
    "thumbnails",
]

#: Thumbnail side of the Reducto features (grayscale, GRID x GRID).
GRID = 32
#: A thumbnail pixel "changed" when its gray level moved by more than this (of 1.0).
PIXEL_DELTA = 0.06
#: A thumbnail pixel is an edge when its Sobel gradient magnitude exceeds this (on a 0..1 image;
#: a unit step gives 4).
EDGE_THRESHOLD = 0.5
HIST_BINS = 16
#: The kinds of feature difference, in :func:`feature_diff`'s column order.
FEATURES: tuple[str, ...] = ("pixel", "edge", "area", "hist")
_CELLS = GRID * GRID


def _unit_float(frame: np.ndarray) -> np.ndarray:
    if np.issubdtype(frame.dtype, np.integer):
        return frame.astype(np.float32) / float(np.iinfo(frame.dtype).max)
    return frame.astype(np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average (shrinking) or nearest-neighbour (growing) resize of ``(H, W[, C])``."""
    out = image
    for axis, size in ((0, height), (1, width)):
        n = out.shape[axis]
        if n >= size:
            starts = (np.arange(size) * n) // size
            counts = np.diff(np.append(starts, n)).astype(np.float32)
            shape = [1] * out.ndim
            shape[axis] = size
            out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
        else:
            out = np.take(out, ((np.arange(size) + 0.5) * n / size).astype(np.int64), axis=axis)
    return out


def _shrink(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Strided subsample to at most ~4x the target size before averaging: a 720p frame is then
    averaged from ~1/16 of its pixels, which is plenty for thumbnails and change detection."""
    sy = max(1, frame.shape[0] // (4 * height))
    sx = max(1, frame.shape[1] // (4 * width))
    return frame[::sy, ::sx]


def _gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return _unit_float(frame)
    if frame.ndim == 3 and frame.shape[2] in (3, 4):  # BGR(A), as OpenCV decodes
        return _unit_float(frame[:, :, :3]) @ np.array([0.114, 0.587, 0.299], dtype=np.float32)
    raise ValueError(f"frames must be (H, W) or (H, W, 1|3|4) arrays, got shape {frame.shape}")


def _sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.hypot(gx, gy)


def _features_one(frame: np.ndarray) -> np.ndarray:
    gray = _resize(_gray(_shrink(np.asarray(frame), GRID, GRID)), GRID, GRID)
    edges = (_sobel_magnitude(gray) > EDGE_THRESHOLD).astype(np.float32)
    hist = np.bincount(
        np.minimum((gray * HIST_BINS).astype(np.int64), HIST_BINS - 1).ravel(),
        minlength=HIST_BINS,
    ).astype(np.float32)
    return np.concatenate([gray.ravel(), edges.ravel(), hist / hist.sum()])


def frame_features(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Reducto-style low-level features of each frame, as an ``(n, 2 * 32 * 32 + 16)`` array.

    Per frame: a 32x32 grayscale thumbnail (area-averaged, values in [0, 1]), its binary Sobel
    edge map, and a 16-bin gray histogram. :func:`feature_diff` turns two rows into the four
    differences Reducto thresholds (see :data:`FEATURES`). Frames may be ``(H, W)`` grayscale or
    ``(H, W, 3)`` BGR arrays of any size (smaller ones are upsampled), ``uint8`` or floats in
    [0, 1]. Costs ~0.1-1 ms per frame (720p included): the frame is strided down first.
    """
    rows = [_features_one(f) for f in frames]
    if not rows:
        return np.zeros((0, 2 * _CELLS + HIST_BINS), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


def feature_diff(features: np.ndarray, i: Any, j: Any) -> np.ndarray:
    """The differences between frames ``i`` and ``j`` (indices or index arrays), one column per
    :data:`FEATURES` kind, each in [0, 1]:

    - ``pixel``: share of thumbnail pixels whose gray level changed by more than 0.06;
    - ``edge``: share of thumbnail pixels that became or stopped being an edge;
    - ``area``: change in the share of the frame covered by edges (objects entering or leaving);
    - ``hist``: total-variation distance of the gray histograms (global lighting/scene change).
    """
    a = np.atleast_2d(features[i])
    b = np.atleast_2d(features[j])
    ga, gb = a[:, :_CELLS], b[:, :_CELLS]
    ea, eb = a[:, _CELLS : 2 * _CELLS], b[:, _CELLS : 2 * _CELLS]
    out = np.stack(
        [
            (np.abs(ga - gb) > PIXEL_DELTA).mean(axis=1),
            (ea != eb).mean(axis=1),
            np.abs(ea.mean(axis=1) - eb.mean(axis=1)),
            0.5 * np.abs(a[:, 2 * _CELLS :] - b[:, 2 * _CELLS :]).sum(axis=1),
        ],
        axis=1,
    )
    return out[0] if np.ndim(i) == 0 and np.ndim(j) == 0 else out


def _thumbnail_one(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    small = _resize(_unit_float(_shrink(frame[:, :, :3], height, width)), height, width)
    return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32)


def thumbnails(frames: Iterable[np.ndarray], width: int = 64, height: int = 48) -> np.ndarray:
    """``(n, C, height, width)`` float32 thumbnails in [0, 1] (C = 1 for gray, 3 for BGR)."""
    rows = [_thumbnail_one(f, width, height) for f in frames]
    return np.stack(rows) if rows else np.zeros((0, 1, height, width), dtype=np.float32)


@dataclass(slots=True)
class PreparedFrames:
    """What the baselines need from the frames, with the measured per-frame cost of each."""

    features: np.ndarray
    thumbs: np.ndarray
    feature_ms: float
    thumb_ms: float
    streams: list[str]


def prepare_frames(
    frames: Iterable[np.ndarray | tuple[str, np.ndarray]], width: int = 64, height: int = 48
) -> PreparedFrames:
    """One pass over a frame source (arrays, or ``(stream, array)`` pairs as the video source
    yields): Reducto features and CNN thumbnails, each timed per frame (mean ms)."""
    feats, thumbs, streams = [], [], []
    t_feat = t_thumb = 0.0
    for item in frames:
        stream, frame = item if isinstance(item, tuple) else ("stream", item)
        start = time.perf_counter()
        feats.append(_features_one(frame))
        mid = time.perf_counter()
        thumbs.append(_thumbnail_one(frame, width, height))
        t_feat += mid - start
        t_thumb += time.perf_counter() - mid
        streams.append(stream)
    n = max(1, len(streams))
    return PreparedFrames(
        np.stack(feats).astype(np.float32),
        np.stack(thumbs),
        1000 * t_feat / n,
        1000 * t_thumb / n,
        streams,
    )
