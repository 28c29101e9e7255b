"""Agreement between a synthesized output and the real model's output, per task, in [0, 1].

MLink never measures accuracy against ground truth: a synthesized output is good when it agrees
with what the real model would have said. Every metric here maps into [0, 1] per sample so that the
selection objective can average agreement across models of different kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlink.topics.specs import BoxesSpec, OutputSpec, SequenceSpec, VectorSpec


def agreement(spec: OutputSpec, predicted: Any, actual: Any) -> np.ndarray:
    """Per-sample agreement of ``predicted`` with ``actual`` outputs (both decoded, same order).

    Vector outputs may be passed as ``(n, size)`` arrays; boxes and sequences as lists.
    """
    if isinstance(spec, VectorSpec):
        pred = np.asarray(predicted, dtype=np.float32).reshape(-1, spec.size)
        true = np.asarray(actual, dtype=np.float32).reshape(-1, spec.size)
        _same_length(pred, true)
        return vector_agreement(spec, pred, true)
    if len(predicted) != len(actual):
        raise ValueError(f"agreement: {len(predicted)} predictions for {len(actual)} outputs")
    if isinstance(spec, BoxesSpec):
        return np.array([box_agreement(p, a) for p, a in zip(predicted, actual, strict=True)])
    if isinstance(spec, SequenceSpec):
        return np.array(
            [1.0 - min(1.0, word_error_rate(p, a)) for p, a in zip(predicted, actual, strict=True)]
        )
    raise TypeError(f"agreement: unsupported spec {spec!r}")


def _same_length(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape[0] != true.shape[0]:
        raise ValueError(f"agreement: {pred.shape[0]} predictions for {true.shape[0]} outputs")


def vector_agreement(spec: VectorSpec, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Top-1 for softmax, per-sample F1 for sigmoid, share within tolerance for linear/count."""
    if spec.task == "softmax":
        return (pred.argmax(axis=1) == true.argmax(axis=1)).astype(np.float64)
    if spec.task == "sigmoid":
        return f1_agreement(pred >= 0.5, true >= 0.5)
    if spec.task == "count":
        pred = np.rint(pred)
    return (np.abs(pred - true) < spec.tolerance).mean(axis=1).astype(np.float64)


def f1_agreement(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-sample F1 of predicted label sets; two empty sets agree perfectly."""
    tp = np.logical_and(pred, true).sum(axis=1)
    denom = pred.sum(axis=1) + true.sum(axis=1)
    out = np.ones(pred.shape[0], dtype=np.float64)
    nz = denom > 0
    out[nz] = 2.0 * tp[nz] / denom[nz]
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(n, 4+)`` and ``(m, 4+)`` boxes as an ``(n, m)`` matrix."""
    a = np.asarray(a, dtype=np.float64)[:, :4]
    b = np.asarray(b, dtype=np.float64)[:, :4]
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    # A zero-area box (a point, a box clipped to a frame edge) has no IoU with anything; the same
    # box from both models is still full agreement, not a miss.
    same = np.all(a[:, None, :] == b[None, :, :], axis=2).astype(np.float64)
    return np.divide(inter, union, out=same, where=union > 0)


def box_agreement(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Matched IoU: greedy one-to-one matching by IoU, summed and divided by the larger count.

    A missed or an extra box costs a full box, so the score also penalises wrong counts; two empty
    detections agree perfectly.
    """
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1, 5)
    true = np.asarray(actual, dtype=np.float64).reshape(-1, 5)
    n = max(pred.shape[0], true.shape[0])
    if n == 0:
        return 1.0
    if pred.shape[0] == 0 or true.shape[0] == 0:
        return 0.0
    iou = box_iou(pred, true)
    total = 0.0
    for _ in range(min(iou.shape)):
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] <= 0:
            break
        total += iou[i, j]
        iou[i, :] = -1
        iou[:, j] = -1
    return total / n


def word_error_rate(predicted: Sequence[int], actual: Sequence[int]) -> float:
    """Levenshtein distance over tokens divided by the reference length (``inf``-safe for empty)."""
    pred = list(np.asarray(predicted).reshape(-1))
    true = list(np.asarray(actual).reshape(-1))
    if not true:
        return 0.0 if not pred else 1.0
    prev = list(range(len(pred) + 1))
    for i, t in enumerate(true, start=1):
        cur = [i] + [0] * len(pred)
        for j, p in enumerate(pred, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (t != p))
        prev = cur
    return prev[-1] / len(true)
