"""Links made for detectors: one detector's boxes from another's, now or since a refresh.

The paper's links regress a detector's fixed-length encoding (a count plus the top boxes, 41
numbers) with an MLP. On video that throws away what detectors of overlapping tasks share: where
the objects are. Matched-IoU agreement rewards getting boxes right, so these links work on boxes:

- :class:`BoxHead` maps a *source* detector's boxes on a frame to a *target* detector's boxes on
  the same frame: a count table (how many target boxes for 0, 1, 2, 3+ source boxes) and a few
  box templates in the source box's own coordinates (a face box -> the same face as another
  detector draws it, or -> two eye boxes inside it). Fitted with medians and a tiny k-means: a
  few dozen frames are enough, which is what a live pipeline has after its warm-up.
- :func:`follow` moves the target's boxes from its last real run as the source's matching
  boxes moved since then (the target's own geometry, the source's motion).
- :func:`track` takes the head's boxes now and replaces each with the followed box it overlaps:
  the source decides what is there, the target's last real output how it is drawn.

Boxes are ``(n, 5)`` float32 rows ``x1, y1, x2, y2, score`` normalised to the frame, as
:class:`~mlink.topics.specs.BoxesSpec` defines them. Everything here is plain numpy on a handful
of boxes per frame, so it runs in the link operator at a few tens of microseconds per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlink.linkstore.metrics import box_agreement, box_iou

__all__ = [
    "EMPTY",
    "BoxHead",
    "as_boxes",
    "finds_anything",
    "fit_box_head",
    "follow",
    "place",
    "relative",
    "switch",
    "track",
]

EMPTY = np.zeros((0, 5), dtype=np.float32)
_MIN_SIDE = 1e-4  # a degenerate box still has a size, so relative coordinates stay finite
_MIN_FOLLOW_IOU = 0.1  # a source box moved to a box it overlaps less than this is another object
_MERGE_IOU = 0.3  # a head box and a followed box overlapping this much are the same object


def as_boxes(output: Any) -> np.ndarray:
    """Any detector output as ``(n, 5)`` float32 rows."""
    arr = np.asarray(output, dtype=np.float32)
    return EMPTY if arr.size == 0 else arr.reshape(-1, 5)


def finds_anything(output: Any) -> bool:
    """Whether a detector's output holds at least one box: where a cascade runs its model
    (:meth:`~mlink.linkstore.schedule.Schedule.gated`), and so what its price is counted on."""
    return as_boxes(output).size > 0


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centre = (boxes[..., 0:2] + boxes[..., 2:4]) / 2
    size = np.maximum(boxes[..., 2:4] - boxes[..., 0:2], _MIN_SIDE)
    return centre, size


def relative(box: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``box`` in ``anchor``'s coordinates: centre offset in anchor sizes, log size ratios."""
    (bc, bs), (ac, as_) = _centre_size(np.asarray(box)), _centre_size(np.asarray(anchor))
    return np.concatenate([(bc - ac) / as_, np.log(bs / as_)], axis=-1)


def place(rel: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Boxes ``x1, y1, x2, y2`` at relative positions ``rel`` (``(k, 4)``) of ``anchor``."""
    ac, as_ = _centre_size(np.asarray(anchor, dtype=np.float32))
    rel = np.asarray(rel, dtype=np.float32).reshape(-1, 4)
    centre = ac + rel[:, :2] * as_
    half = as_ * np.exp(rel[:, 2:]) / 2
    return np.clip(np.concatenate([centre - half, centre + half], axis=1), 0.0, 1.0)


def _nearest(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """For each box, the anchor whose centre is nearest to its centre."""
    bc, _ = _centre_size(boxes)
    ac, _ = _centre_size(anchors)
    return np.argmin(((bc[:, None, :] - ac[None, :, :]) ** 2).sum(-1), axis=1)


def _kmeans(points: np.ndarray, k: int, iterations: int = 20) -> np.ndarray:
    """``k`` medoid-ish centres (coordinate-wise medians), largest cluster first; deterministic
    (seeded at quantiles of the first coordinate, the left-right order of eyes in a face)."""
    order = np.argsort(points[:, 0], kind="stable")
    centres = points[order[((np.arange(k) + 0.5) * len(points) / k).astype(int)]].copy()
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(iterations):
        labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (labels == j).any():
                centres[j] = np.median(points[labels == j], axis=0)
    sizes = np.bincount(labels, minlength=k)
    return centres[np.argsort(-sizes, kind="stable")]


@dataclass(frozen=True, slots=True)
class BoxHead:
    """A target detector's boxes from a source detector's boxes on the same frame.

    ``counts[b]`` is how many target boxes to emit when the source found ``b`` boxes (the last
    entry for ``b`` or more); ``templates`` are target boxes relative to a source box (see
    :func:`relative`), most frequent first. Each source box, best score first, contributes its
    templates in order until ``counts`` boxes are out; they carry the source box's score.
    """

    counts: tuple[int, ...]
    templates: tuple[tuple[float, float, float, float], ...]

    def __post_init__(self) -> None:
        if not self.counts or any(c < 0 for c in self.counts):
            raise ValueError(f"BoxHead counts must be non-negative, got {self.counts}")
        if not self.templates or any(len(t) != 4 for t in self.templates):
            raise ValueError("BoxHead needs at least one template of 4 numbers")

    def count(self, n_source: int) -> int:
        return self.counts[min(n_source, len(self.counts) - 1)]

    def predict(self, source: Any) -> np.ndarray:
        boxes = as_boxes(source)
        want = self.count(len(boxes))
        if want == 0 or len(boxes) == 0:
            return EMPTY
        boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        per_box = len(self.templates)
        used = boxes[: -(-want // per_box)]
        rel = np.asarray(self.templates, dtype=np.float32)
        out = np.empty((len(used) * per_box, 5), dtype=np.float32)
        for i, anchor in enumerate(used):
            out[i * per_box : (i + 1) * per_box, :4] = place(rel, anchor)
            out[i * per_box : (i + 1) * per_box, 4] = anchor[4]
        return out[:want]

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready form for a link bundle's metadata."""
        return {"counts": list(self.counts), "templates": [list(t) for t in self.templates]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> BoxHead:
        return cls(
            tuple(int(c) for c in meta["counts"]),
            tuple(tuple(float(x) for x in t) for t in meta["templates"]),  # type: ignore[misc]
        )


def fit_box_head(
    sources: Sequence[Any],
    targets: Sequence[Any],
    max_bucket: int = 3,
    max_templates: int = 4,
) -> BoxHead:
    """Fit a :class:`BoxHead` on aligned outputs of the source and target detectors.

    Counts: the most frequent target count per source-count bucket ``0 .. max_bucket`` (ties go
    to the smaller count); a bucket never seen takes the median boxes-per-source-box ratio times
    its source count (0 for the empty bucket). Templates: every target box relative to the source
    box nearest to it, on frames where both found something, clustered into as many templates as
    the median target boxes per source box (at most ``max_templates``).
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source outputs for {len(targets)} target outputs")
    table = np.zeros((max_bucket + 1, 1), dtype=np.int64)
    rels, ratios = [], []
    for s_out, t_out in zip(sources, targets, strict=True):
        s, t = as_boxes(s_out), as_boxes(t_out)
        bucket = min(len(s), max_bucket)
        if len(t) >= table.shape[1]:
            table = np.pad(table, ((0, 0), (0, len(t) + 1 - table.shape[1])))
        table[bucket, len(t)] += 1
        if len(s) and len(t):
            ratios.append(len(t) / len(s))
            rels.append(relative(t[:, :4], s[_nearest(t, s), :4]))
    ratio = float(np.median(ratios)) if ratios else 0.0
    counts = tuple(
        int(table[b].argmax()) if table[b].any() else round(b * ratio)
        for b in range(max_bucket + 1)
    )
    if not rels:
        return BoxHead(counts, ((0.0, 0.0, 0.0, 0.0),))
    points = np.concatenate(rels).astype(np.float64)
    k = int(np.clip(round(ratio), 1, min(max_templates, len(points))))
    centres = _kmeans(points, k) if k > 1 else np.median(points, axis=0, keepdims=True)
    return BoxHead(counts, tuple(tuple(float(x) for x in c) for c in centres))  # type: ignore[misc]


def follow(
    target_then: Any, source_then: Any, source_now: Any, drop_lost: bool = True
) -> np.ndarray:
    """The target's boxes at its last real run, moved as the source's boxes moved since.

    Each target box rides on the source box (at the run) nearest to it; that source box is
    matched one-to-one to a box now by IoU. A target box whose source box has no match now is
    dropped (``drop_lost``, the object left) or kept in place. With no source box at the run
    there is nothing to ride on and the target's boxes are kept as they were.
    """
    target, then, now = as_boxes(target_then), as_boxes(source_then), as_boxes(source_now)
    if len(target) == 0 or len(then) == 0:
        return target
    match = _match(then, now)
    anchor = _nearest(target, then)
    out = []
    for box, a in zip(target, anchor, strict=True):
        j = match[a]
        if j < 0:
            if not drop_lost:
                out.append(box)
            continue
        moved = place(relative(box[:4], then[a, :4]), now[j])[0]
        out.append(np.append(moved, box[4]))
    return np.asarray(out, dtype=np.float32).reshape(-1, 5)


def _match(then: np.ndarray, now: np.ndarray) -> np.ndarray:
    """Greedy one-to-one IoU matching: for each box of ``then`` its box in ``now`` or -1."""
    match = np.full(len(then), -1, dtype=np.int64)
    if len(now) == 0:
        return match
    iou = box_iou(then, now)
    for _ in range(min(iou.shape)):
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < _MIN_FOLLOW_IOU:
            break
        match[i] = j
        iou[i, :], iou[:, j] = -1.0, -1.0
    return match


def track(head_now: Any, followed: Any) -> np.ndarray:
    """The head's boxes, each replaced by the followed box it overlaps most (IoU > 0.3, one to
    one): what is there comes from the source now, how it is drawn from the target's last run."""
    head, moved = as_boxes(head_now), as_boxes(followed)
    if len(head) == 0 or len(moved) == 0:
        return head
    out = head.copy()
    iou = box_iou(head, moved)
    for _ in range(min(iou.shape)):
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] <= _MERGE_IOU:
            break
        out[i] = moved[j]
        iou[i, :], iou[:, j] = -1.0, -1.0
    return out


def switch(
    followed: Any, head_now: Any, source_then: Any, source_now: Any, threshold: float
) -> np.ndarray:
    """The followed boxes while the source still agrees with itself at the target's last run
    (matched IoU >= ``threshold``), else the head's boxes: a scene change invalidates memory."""
    stable = box_agreement(as_boxes(source_then), as_boxes(source_now)) >= threshold
    return as_boxes(followed) if stable else as_boxes(head_now)
