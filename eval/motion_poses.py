"""Every frame's motion pose for a config's source, as the frame operator would measure it.

The bench replays stream synthesis on cached outputs; the ``flow`` mode also needs how the
picture moved, which only the frames tell. :func:`source_poses` runs the frame operator's
:class:`~mlink.linkstore.motion.MotionTracker` over the source once, in stream order, and caches
the poses and the mean time a frame took (``.mlink-cache/motion/``), keyed by the source, the
tracker's width and the OpenCV version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.deploy.source import iter_source
from mlink.eval.memory import single_threaded
from mlink.linkstore.motion import WIDTH, MotionTracker, Pose

__all__ = ["Motion", "measure_poses", "source_poses"]


@dataclass(frozen=True, slots=True)
class Motion:
    """Each frame's pose, in the source's order, and what measuring one frame cost."""

    poses: list[Pose]
    ms: float


def measure_poses(frames: Iterable[tuple[str, np.ndarray]], width: int = WIDTH) -> Motion:
    """Track ``(stream, frame)`` pairs in order; a frame's sequence number is its place in its
    stream (as the source numbers them)."""
    tracker = MotionTracker(width=width)
    seqs: dict[str, int] = {}
    poses = []
    with single_threaded():
        for stream, frame in frames:
            seq = seqs.get(stream, -1) + 1
            seqs[stream] = seq
            poses.append(tracker.update(stream, seq, frame))
    return Motion(poses, tracker.ms)


def source_poses(
    config: PipelineConfig, cache_dir: Path | None, width: int = WIDTH, progress: bool = False
) -> Motion:
    """:func:`measure_poses` of the config's source, cached under ``cache_dir`` (None: not)."""
    key = json.dumps(
        {"source": config.source.model_dump(mode="json"), "width": width, "cv2": cv2.__version__},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = (
        None if cache_dir is None else Path(cache_dir) / "motion" / f"{config.name}-{digest}.json"
    )
    if path is not None and path.exists():
        raw = json.loads(path.read_text())
        return Motion([Pose.from_json(p) for p in raw["poses"]], float(raw["ms"]))
    if progress:
        print(f"{config.name}: measuring every frame's motion (cached after this run)")
    motion = measure_poses(iter_source(config.source), width)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        body = {"ms": motion.ms, "poses": [p.to_json() for p in motion.poses]}
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)
    return motion
