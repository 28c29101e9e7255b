"""MTCNN face detection (Zhang et al. 2016) on the pretrained weights of the facenet-pytorch wheel.

Why not ``facenet_pytorch.MTCNN``: that package pins torch < 2.3 and imports torchvision (for one
``batched_nms`` call), neither of which works beside the project's torch 2.13. The wheel is
installed without its dependencies (see the Makefile) only for its three state dicts,
``facenet_pytorch/data/{pnet,rnet,onet}.pt``, which are found without importing the package and
loaded with ``weights_only=True`` into the module definitions below (the same layer names, so the
state dicts load strictly). The cascade follows facenet-pytorch's ``detect_face`` for one image:
same pyramid, thresholds, crops and NMS, with NMS written in numpy.

The three stages: P-Net slides a 12x12 window over an image pyramid and proposes candidate faces;
R-Net rescores and refines each candidate at 24x24; O-Net does the same at 48x48 and also places
five landmarks (eyes, nose, mouth corners).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate

__all__ = ["MTCNN", "Faces", "ONet", "PNet", "RNet", "nms", "weights_dir"]

WHEEL = "facenet-pytorch==2.6.0"


def weights_dir() -> Path:
    """The wheel's ``data`` folder, found without importing facenet_pytorch (which would import
    torchvision)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "facenet-pytorch is not installed; its MTCNN weights are needed: "
            f"pip install --no-deps {WHEEL} (it pins an old torch, so without its dependencies)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load(net: nn.Module, file: str) -> nn.Module:
    path = weights_dir() / file
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps {WHEEL}")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


class PNet(nn.Module):
    """Proposal net: fully convolutional, a face score and box offsets per 12x12 window."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops: a face score and box offsets per crop."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights were converted from Caffe/TF: flatten in (w, h, c) order, as they expect.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: a face score, box offsets and five landmarks per crop."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. ``mode="min"`` divides the
    overlap by the smaller box (MTCNN's last stage), ``"union"`` by the union (IoU). Boxes are
    inclusive pixel boxes ``x1, y1, x2, y2``, hence the ``+ 1`` in areas, as in MTCNN."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the nets see square crops)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply a net's box offsets (fractions of the box's inclusive width/height)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += offsets[:, 0] * w
    out[:, 1] += offsets[:, 1] * h
    out[:, 2] += offsets[:, 2] * w
    out[:, 3] += offsets[:, 3] * h
    return out


def _crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Each box cut from ``image`` (1x3xHxW, normalised), clipped to the image, resized to
    size x size; also the mask of boxes that kept any pixels."""
    height, width = image.shape[2:]
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], width), np.minimum(b[:, 3], height)
    valid = (ex > x - 1) & (ey > y - 1)
    crops = [
        interpolate(image[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], size=(size, size), mode="area")
        for k in np.flatnonzero(valid)
    ]
    return (torch.cat(crops) if crops else image.new_zeros((0, 3, size, size))), valid


@dataclass(frozen=True, slots=True)
class Faces:
    """Faces found in one image: ``boxes`` rows ``x1, y1, x2, y2, p`` in pixels, best first;
    ``landmarks`` (n, 5, 2) pixel points: left eye, right eye, nose, left and right mouth corner
    (left/right as seen in the image)."""

    boxes: np.ndarray
    landmarks: np.ndarray


class MTCNN:
    """The three-stage cascade on one RGB ``uint8`` image (H, W, 3).

    ``min_face_size`` (pixels) sets the first pyramid level, ``factor`` the step between levels;
    fewer levels (larger faces only) cost less.
    """

    def __init__(
        self,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (P-Net's window), got {min_face_size}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.pnet = _load(PNet(), "pnet.pt")
        self.rnet = _load(RNet(), "rnet.pt")
        self.onet = _load(ONet(), "onet.pt")

    def scales(self, height: int, width: int) -> list[float]:
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        out = []
        while side >= 12:
            out.append(scale)
            scale *= self.factor
            side *= self.factor
        return out

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> Faces:
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        boxes = self._propose(image)
        if boxes.shape[0]:
            boxes = self._refine(image, boxes)
        if boxes.shape[0]:
            return self._output(image, boxes)
        return Faces(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))

    def _propose(self, image: torch.Tensor) -> np.ndarray:
        """Stage 1: P-Net over the pyramid; square candidates ``x1, y1, x2, y2, p``."""
        height, width = image.shape[2:]
        found = []
        for scale in self.scales(height, width):
            level = interpolate(image, size=(int(height * scale + 1), int(width * scale + 1)),
                                mode="area")  # fmt: skip
            offsets, probs = self.pnet((level - 127.5) * 0.0078125)
            p = probs[0, 1].numpy()
            rows, cols = np.nonzero(p >= self.thresholds[0])
            if rows.size == 0:
                continue
            # Each output cell is a 12x12 window at stride 2 in the scaled image.
            cells = np.stack([cols, rows], axis=1).astype(np.float32)
            candidates = np.concatenate(
                [
                    np.floor((2 * cells + 1) / scale),
                    np.floor((2 * cells + 12) / scale),
                    p[rows, cols, None],
                    offsets[0][:, rows, cols].numpy().T,
                ],
                axis=1,
            )
            found.append(candidates[nms(candidates[:, :4], candidates[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5), np.float32)
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        refined = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * w,
                boxes[:, 1] + boxes[:, 6] * h,
                boxes[:, 2] + boxes[:, 7] * w,
                boxes[:, 3] + boxes[:, 8] * h,
                boxes[:, 4],
            ],
            axis=1,
        )
        return _square(refined)

    def _refine(self, image: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rescores and refines each candidate."""
        crops, valid = _crops(image, boxes, 24)
        boxes = boxes[valid]
        offsets, probs = self.rnet((crops - 127.5) * 0.0078125)
        score = probs[:, 1].numpy()
        keep = score > self.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        offsets = offsets.numpy()[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], offsets[pick]))

    def _output(self, image: torch.Tensor, boxes: np.ndarray) -> Faces:
        """Stage 3: O-Net's final score, box and landmarks."""
        crops, valid = _crops(image, boxes, 48)
        boxes = boxes[valid]
        offsets, points, probs = self.onet((crops - 127.5) * 0.0078125)
        score = probs[:, 1].numpy()
        keep = score > self.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        points = points.numpy()[keep]
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        landmarks = np.stack(
            [w * points[:, :5] + boxes[:, 0:1] - 1, h * points[:, 5:] + boxes[:, 1:2] - 1], axis=2
        )
        boxes = _regress(boxes, offsets.numpy()[keep])
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        return Faces(boxes[pick].astype(np.float32), landmarks[pick].astype(np.float32))
