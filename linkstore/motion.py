"""How a stream's picture moved between two frames, so an old detection can be moved with it.

A detector's boxes from a few frames ago are off by however far the camera panned, zoomed or the
object moved since; reusing them as they were loses most of their overlap on moving video
(``flow`` mode, docs/stream-synthesis.md). The frame operator already holds every frame, so it
can measure that motion for a few milliseconds a frame: sparse optical flow between consecutive
frames of a stream, fitted to one similarity transform (shift, scale, rotation), chained into a
:class:`Pose` per frame. Two poses of one *track* give the transform from one frame to the other.

A track is an unbroken run of consecutive frames one tracker saw. It is named by its stream and
first sequence number, so two workers that start tracking a stream at the same frame compute the
same coordinates; a gap (a missed frame, a restart, a frame where the flow fails) starts a new
track, and poses of different tracks are not comparable: ``flow`` then reuses the boxes unmoved.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "WIDTH",
    "MotionTracker",
    "Pose",
    "between",
    "frame_step",
    "move_boxes",
    "moved_since",
    "small_gray",
]

WIDTH = 320  # frames are measured at this width: 4 ms a frame on one core, enough for boxes
_CORNERS, _MIN_POINTS, _RANSAC_PX = 200, 8, 2.0


@dataclass(frozen=True, slots=True)
class Pose:
    """A frame's place in its track: ``matrix`` (2x3, row-major, normalised coordinates) maps
    a point of the track's first frame to this frame."""

    track: str
    matrix: tuple[float, float, float, float, float, float]

    def __post_init__(self) -> None:
        if not isinstance(self.track, str) or not 0 < len(self.track) <= 256:
            raise ValueError(
                f"a pose's track is a non-empty name of <= 256 chars, got {self.track!r}"
            )
        if len(self.matrix) != 6 or not all(math.isfinite(float(v)) for v in self.matrix):
            raise ValueError(f"a pose's matrix is 6 finite numbers, got {self.matrix!r}")

    def as3(self) -> np.ndarray:
        return np.vstack([np.asarray(self.matrix, dtype=np.float64).reshape(2, 3), [0, 0, 1]])

    def to_json(self) -> dict[str, Any]:
        return {"track": self.track, "matrix": [float(v) for v in self.matrix]}

    @classmethod
    def from_json(cls, raw: Any) -> Pose:
        """A pose from the wire; raises ``ValueError`` naming what is wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"a pose is a dict with 'track' and 'matrix', got {type(raw).__name__}"
            )
        matrix = raw.get("matrix")
        if not isinstance(matrix, Sequence) or len(matrix) != 6:
            raise ValueError("a pose's matrix is a list of 6 numbers")
        try:
            values = tuple(float(v) for v in matrix)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a pose's matrix is a list of 6 numbers: {exc}") from None
        return cls(str(raw.get("track")), values)  # type: ignore[arg-type]


def between(then: Pose | None, now: Pose | None) -> np.ndarray | None:
    """The 3x3 transform from frame ``then`` to frame ``now`` of one track, else None."""
    if then is None or now is None or then.track != now.track:
        return None
    try:
        return now.as3() @ np.linalg.inv(then.as3())
    except np.linalg.LinAlgError:
        return None


def move_boxes(boxes: Any, transform: np.ndarray) -> np.ndarray:
    """``(n, 5)`` normalised boxes moved by ``transform`` (3x3), clipped to the frame; boxes
    moved wholly out of it are dropped (the object left the picture)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    if not len(b):
        return b
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1).astype(
        np.float64
    )
    moved = corners @ transform[:2, :2].T + transform[:2, 2]
    out = np.empty_like(b)
    out[:, 0], out[:, 1] = moved[..., 0].min(axis=1), moved[..., 1].min(axis=1)
    out[:, 2], out[:, 3] = moved[..., 0].max(axis=1), moved[..., 1].max(axis=1)
    out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
    out[:, 4] = b[:, 4]
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep]


def moved_since(boxes: Any, then: Pose | None, now: Pose | None) -> np.ndarray | None:
    """``boxes`` seen at pose ``then`` moved to pose ``now``, or None when the motion between
    them is unknown (``flow`` then reuses them as they were)."""
    transform = between(then, now)
    return None if transform is None else move_boxes(boxes, transform)


def small_gray(frame: np.ndarray, width: int = WIDTH) -> np.ndarray:
    """The frame in grey at ``width`` pixels across (never enlarged)."""
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape[:2]
    if w <= width:
        return np.ascontiguousarray(gray)
    size = (width, max(1, round(h * width / w)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def frame_step(prev: np.ndarray, now: np.ndarray) -> np.ndarray | None:
    """The 3x3 normalised transform from grey frame ``prev`` to ``now`` (same size), or None
    when too few points can be followed (a cut, a blank frame)."""
    if prev.shape != now.shape:
        return None
    p0 = cv2.goodFeaturesToTrack(prev, maxCorners=_CORNERS, qualityLevel=0.01, minDistance=7)
    if p0 is None or len(p0) < _MIN_POINTS:
        return None
    p1, status, _ = cv2.calcOpticalFlowPyrLK(prev, now, p0, None, winSize=(21, 21), maxLevel=3)
    ok = status.reshape(-1) == 1
    if ok.sum() < _MIN_POINTS:
        return None
    fit, _ = cv2.estimateAffinePartial2D(
        p0[ok], p1[ok], method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PX
    )
    if fit is None:
        return None
    h, w = prev.shape[:2]
    scale = np.diag([float(w), float(h), 1.0])
    return np.linalg.inv(scale) @ np.vstack([fit, [0.0, 0.0, 1.0]]) @ scale


@dataclass(slots=True)
class _Track:
    name: str
    seq: int
    gray: np.ndarray
    pose: np.ndarray


class MotionTracker:
    """Per stream, the last frame seen and its pose: the frame operator's motion state.

    Bounded to ``max_streams`` streams (least recently seen dropped), one small grey frame each
    (about 60 kB at the default width). :attr:`ms` is the mean time :meth:`update` took.
    """

    def __init__(self, max_streams: int = 4096, width: int = WIDTH) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.max_streams, self.width = max_streams, width
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._seconds, self._calls = 0.0, 0

    def update(self, stream: str, seq: int, frame: np.ndarray) -> Pose:
        """Frame ``seq`` of ``stream``'s pose: chained onto the last one when it is the next
        frame and the flow holds, else the first of a new track."""
        start = time.perf_counter()
        gray = small_gray(frame, self.width)
        last = self._tracks.get(stream)
        step = None
        if last is not None and seq == last.seq + 1:
            step = frame_step(last.gray, gray)
        if step is None or last is None:
            track = _Track(f"{stream}@{seq}", seq, gray, np.eye(3))
        else:
            track = _Track(last.name, seq, gray, step @ last.pose)
        self._tracks[stream] = track
        self._tracks.move_to_end(stream)
        while len(self._tracks) > self.max_streams:
            self._tracks.popitem(last=False)
        self._seconds += time.perf_counter() - start
        self._calls += 1
        return Pose(track.name, tuple(float(v) for v in track.pose[:2].reshape(-1)))  # type: ignore[arg-type]

    def forget(self, streams: Sequence[str] | None = None) -> None:
        """Drop the state of ``streams`` (all when None), e.g. of partitions revoked."""
        if streams is None:
            self._tracks.clear()
        for s in streams or ():
            self._tracks.pop(s, None)

    @property
    def ms(self) -> float:
        return 1000.0 * self._seconds / self._calls if self._calls else 0.0

    def __len__(self) -> int:
        return len(self._tracks)
