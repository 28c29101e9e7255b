"""The OpenCV black boxes of the video workloads: Haar cascades, HOG people, frame statistics.

What they output and why (boxes normalised to ``[0, 1]``, scores squashed from the cascade's
last stage or the SVM margin, the working resolution): :mod:`mlink.eval.workloads.video`.
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "MAX_COUNT",
    "STAT_LABELS",
    "VERSION",
    "BlackBox",
    "ColourHist",
    "EyesInFaces",
    "FrameStats",
    "HaarDetector",
    "HogPeople",
    "cascade_path",
    "score_offset",
]

#: Bumped whenever a model's code changes what it outputs, so cached outputs are recomputed.
VERSION = 1
MAX_COUNT = 64
STAT_LABELS = ("brightness", "contrast", "edge_density", "blue", "green", "red", "saturation")


def _working(
    frame: np.ndarray, max_side: int | None, resize: float, gray: bool = True
) -> np.ndarray:
    """The frame as a detector sees it: grey, longer side <= max_side, then scaled by resize."""
    image = np.asarray(frame)
    if gray and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    cap = 1.0 if max_side is None else min(1.0, max_side / max(image.shape[:2]))
    scale = resize * cap
    if scale != 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def _boxes(rects: Any, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV ``(x, y, w, h)`` rects in pixels -> normalised, highest score first, <= MAX_COUNT."""
    rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    if rects.shape[0] == 0:
        return np.zeros((0, 5), dtype=np.float32)
    out = np.empty((rects.shape[0], 5), dtype=np.float32)
    out[:, 0] = rects[:, 0] / width
    out[:, 1] = rects[:, 1] / height
    out[:, 2] = (rects[:, 0] + rects[:, 2]) / width
    out[:, 3] = (rects[:, 1] + rects[:, 3]) / height
    out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
    out[:, 4] = np.asarray(scores, dtype=np.float32).reshape(-1)
    return out[np.argsort(-out[:, 4], kind="stable")][:MAX_COUNT]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))).astype(np.float32)


def cascade_path(cascade: str) -> Path:
    path = Path(cv2.data.haarcascades) / f"haarcascade_{cascade}.xml"
    if not path.exists():
        available = sorted(
            p.stem.removeprefix("haarcascade_")
            for p in Path(cv2.data.haarcascades).glob("haarcascade_*.xml")
        )
        raise FileNotFoundError(f"Haar cascade {cascade!r} is not in the OpenCV wheel: {available}")
    return path


@functools.cache
def score_offset(cascade: str) -> float:
    """Centre of the sigmoid for a cascade's last-stage sums (see the module docstring)."""
    stages = ET.parse(cascade_path(cascade)).getroot().find("cascade/stages")
    if stages is None or not len(stages):
        raise ValueError(f"cascade {cascade!r} has no stages; is {cascade_path(cascade)} intact?")
    last = stages[-1]
    leaves = [
        [float(v) for v in w.findtext("leafValues", "0").split()]
        for w in last.findall("weakClassifiers/_")
    ]
    leaves = [v for v in leaves if v]
    low, high = sum(min(v) for v in leaves), sum(max(v) for v in leaves)
    return 0.0 if low <= 0.0 <= high else float(last.findtext("stageThreshold", "0"))


class BlackBox:
    """A black box: named, picklable (so its memory can be measured in a fresh process), with a
    ``model_key`` naming everything its output depends on (the output cache's key)."""

    name: str
    count: bool

    def __init__(self, name: str, count: bool, **params: Any) -> None:
        self.name = name
        self.count = count
        self.params = params
        self._build()

    def _build(self) -> None:
        """Load weights; called on creation and after unpickling."""

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name, self.count, self.params = state["name"], state["count"], state["params"]
        self._build()

    @property
    def model_key(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        kind = type(self).__name__
        return f"{self.name}[{kind} v{VERSION} cv2 {cv2.__version__} count={self.count}]({args})"

    def __repr__(self) -> str:
        return f"<video model {self.model_key}>"

    def detect(self, frame: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        boxes = self.detect(frame)
        return np.array([boxes.shape[0]], dtype=np.float32) if self.count else boxes


class HaarDetector(BlackBox):
    """A pretrained Haar cascade from the OpenCV wheel."""

    def _build(self) -> None:
        self._cascade = cv2.CascadeClassifier(str(cascade_path(self.params["cascade"])))
        if self._cascade.empty():
            raise OSError(f"OpenCV could not load cascade {self.params['cascade']!r}")
        self._offset = score_offset(self.params["cascade"])

    def detect(self, frame: np.ndarray) -> np.ndarray:
        p = self.params
        gray = _working(frame, p["max_side"], p["resize"])
        return self.detect_gray(gray, gray.shape[1], gray.shape[0])

    def detect_gray(self, gray: np.ndarray, width: int, height: int) -> np.ndarray:
        p = self.params
        side = int(p["min_size"])
        rects, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=p["scale_factor"],
            minNeighbors=p["min_neighbors"],
            minSize=(side, side),
            outputRejectLevels=True,
        )
        return _boxes(rects, _sigmoid(np.ravel(weights) - self._offset), width, height)


class EyesInFaces(BlackBox):
    """Eyes searched only inside faces found by a cheap face detector: a cascade of black boxes,
    cheaper than ``eyes`` on the whole frame and blind to eyes outside frontal faces."""

    def _build(self) -> None:
        p = self.params
        self._faces = HaarDetector(
            "faces",
            False,
            cascade=p["face_cascade"],
            scale_factor=p["face_scale_factor"],
            min_neighbors=p["face_min_neighbors"],
            min_size=0,
            max_side=p["max_side"],
            resize=p["face_resize"],
        )
        self._eyes = HaarDetector(
            "eyes",
            False,
            cascade=p["cascade"],
            scale_factor=p["scale_factor"],
            min_neighbors=p["min_neighbors"],
            min_size=0,
            max_side=p["max_side"],
            resize=1.0,
        )

    def detect(self, frame: np.ndarray) -> np.ndarray:
        gray = _working(frame, self.params["max_side"], 1.0)
        height, width = gray.shape
        face_side = int(self.params["face_side"])
        found = []
        for x1, y1, x2, y2, _ in self._faces.detect(gray):
            left, top = int(x1 * width), int(y1 * height)
            right, bottom = math.ceil(x2 * width), math.ceil(y2 * height)
            roi = gray[top:bottom, left:right]
            if roi.size == 0:
                continue
            roi_h, roi_w = roi.shape
            # Eyes in a small face are smaller than the eye cascade's 20 px window: search each
            # face at face_side pixels wide instead, as a face-then-eyes pipeline would.
            zoom = face_side / roi_w
            if zoom > 1.0:
                roi = cv2.resize(roi, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
            eyes = self._eyes.detect_gray(roi, roi.shape[1], roi.shape[0])
            if eyes.shape[0]:
                eyes[:, [0, 2]] = (eyes[:, [0, 2]] * roi_w + left) / width
                eyes[:, [1, 3]] = (eyes[:, [1, 3]] * roi_h + top) / height
                found.append(eyes)
        if not found:
            return np.zeros((0, 5), dtype=np.float32)
        boxes = np.concatenate(found)
        boxes[:, :4] = np.clip(boxes[:, :4], 0.0, 1.0)
        return boxes[np.argsort(-boxes[:, 4], kind="stable")][:MAX_COUNT]


class HogPeople(BlackBox):
    """OpenCV's pretrained HOG + linear SVM pedestrian detector (64x128 window)."""

    WINDOW = (64, 128)

    def _build(self) -> None:
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(self, frame: np.ndarray) -> np.ndarray:
        p = self.params
        image = _working(frame, p["max_side"], p["resize"], gray=False)
        height, width = image.shape[:2]
        if width < self.WINDOW[0] or height < self.WINDOW[1]:
            # OpenCV 4.x segfaults on images smaller than the window; a person cannot fit anyway.
            return np.zeros((0, 5), dtype=np.float32)
        stride = int(p["win_stride"])
        rects, weights = self._hog.detectMultiScale(
            image,
            hitThreshold=p["hit_threshold"],
            winStride=(stride, stride),
            scale=p["scale"],
        )
        return _boxes(rects, _sigmoid(np.ravel(weights)), width, height)


class FrameStats(BlackBox):
    """Cheap whole-frame features: brightness, contrast, edge density, mean B/G/R, saturation,
    each in [0, 1]. The kind of signal a link can use to tell scenes apart almost for free."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        small = _working(frame, self.params["max_side"], 1.0, gray=False)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        edges = cv2.Canny(gray, 100, 200)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        bgr = small.reshape(-1, 3).mean(axis=0) / 255.0
        return np.array(
            [
                gray.mean() / 255.0,
                gray.std() / 128.0,
                (edges > 0).mean(),
                *bgr,
                hsv[..., 1].mean() / 255.0,
            ],
            dtype=np.float32,
        ).clip(0.0, 1.0)


class ColourHist(BlackBox):
    """Share of pixels in each of 2x2x2 coarse BGR colour cells (sums to 1, so a softmax spec:
    agreement is on the dominant colour cell)."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        small = _working(frame, self.params["max_side"], 1.0, gray=False)
        cells = (small.reshape(-1, 3) >= 128).astype(np.int64) @ np.array([4, 2, 1])
        hist = np.bincount(cells, minlength=8).astype(np.float64)
        return (hist / hist.sum()).astype(np.float32)
