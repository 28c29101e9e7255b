"""How far an agreement estimate can be off when its samples come from a few streams.

A curve's samples are frames of a handful of streams, and frames of one stream are alike: a
head that fits the faces of the first six frames of a pan fits the next six too. The frames are
then not independent draws, and a margin from their count alone is too narrow exactly where it
matters: an option whose agreement differs from stream to stream promises, on the next stretch
of each stream, about as little as it keeps on its worst ones. The cluster-robust standard
error treats each stream as one draw (its sample-weighted mean agreement), so an option that is
good everywhere keeps a narrow margin and one that is good on some streams only does not.

A *forecast* of what a plan keeps on the rest of its streams needs more than that: the streams'
warm-ups can all agree (no camera pan shows a face in its first frames) and the standard error
then reads as certainty. ``pseudo`` adds that many streams of the largest variance (0.25) to the
between-stream variance, as :data:`~mlink.linkstore.streamoptions.PSEUDO` does for frames, so
``k`` streams that agree still leave room for the next stretch of each to be unlike them all
(docs/stream-synthesis.md, "The forecast").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PSEUDO_STREAMS", "between_streams", "stream_mean", "stream_weights"]

#: streams of the largest variance added to a forecast's between-stream error (``pseudo``)
PSEUDO_STREAMS = 1.0


def between_streams(
    scores: Sequence[float] | np.ndarray,
    streams: Sequence[Any],
    pseudo: float = 0.0,
    balanced: bool = False,
) -> float:
    """The standard error of the sample-weighted mean of ``scores`` with each stream one cluster
    (0.0 with fewer than two streams: one stream has no between-stream spread to measure).
    NaN scores (pairs a mode does not apply to) are left out. ``pseudo``: that many more
    streams of variance 0.25 in the per-stream variance (a forecast's error, see above).
    ``balanced``: of the mean of the per-stream means instead (:func:`stream_mean`)."""
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(streams)
    if values.shape != labels.shape:
        raise ValueError(f"{values.shape[0]} scores for {labels.shape[0]} stream labels")
    valid = ~np.isnan(values)
    values, labels = values[valid], labels[valid]
    names, which = np.unique(labels, return_inverse=True)
    k = len(names)
    if k < 2:
        return 0.0
    weight = np.bincount(which, minlength=k).astype(np.float64)
    means = np.bincount(which, weights=values, minlength=k) / weight
    share = np.full(k, 1.0 / k) if balanced else weight / weight.sum()
    overall = float(share @ means)
    squared = k / (k - 1) * float((share**2) @ (means - overall) ** 2)
    if pseudo > 0:  # per-stream variance k * squared, shrunk towards 0.25 by ``pseudo`` streams
        squared = (k * k * squared + 0.25 * pseudo) / ((k + pseudo) * k)
    return float(np.sqrt(squared))


def stream_weights(streams: Sequence[Any], balanced: bool) -> np.ndarray:
    """Each sample's weight in an estimate: 1, or with ``balanced`` 1 / (its stream's samples),
    so every stream weighs the same whatever share of the samples it happened to get.

    Which one is right depends on how the samples were drawn. The bench's warm-up is the first
    10% of each stream, so a stream's share of samples is its share of the frames to come, and
    sample weights are unbiased. A live warm-up is the first frames a worker fetched: paced
    cameras arrive in turn, but a backlog arrives as the broker's fetches deliver it, a batch
    per partition, and the cameras whose batches hold many frames fill it (docs/stream-synthesis.md,
    "A warm-up from a backlog").
    """
    labels = np.asarray(streams)
    if not balanced or labels.size == 0:
        return np.ones(labels.shape[0], dtype=np.float64)
    _, which, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[which].astype(np.float64)


def stream_mean(
    scores: Sequence[float] | np.ndarray, streams: Sequence[Any], balanced: bool
) -> float:
    """The mean of ``scores`` (NaN left out) under :func:`stream_weights`."""
    values = np.asarray(scores, dtype=np.float64)
    valid = ~np.isnan(values)
    if not valid.any():
        return 0.0
    weights = stream_weights(np.asarray(streams)[valid], balanced)
    return float(np.average(values[valid], weights=weights))
