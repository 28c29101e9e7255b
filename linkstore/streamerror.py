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

__all__ = ["PSEUDO_STREAMS", "between_streams"]

#: streams of the largest variance added to a forecast's between-stream error (``pseudo``)
PSEUDO_STREAMS = 1.0


def between_streams(
    scores: Sequence[float] | np.ndarray, streams: Sequence[Any], pseudo: float = 0.0
) -> float:
    """The standard error of the sample-weighted mean of ``scores`` with each stream one cluster
    (0.0 with fewer than two streams: one stream has no between-stream spread to measure).
    NaN scores (pairs a mode does not apply to) are left out. ``pseudo``: that many more
    streams of variance 0.25 in the per-stream variance (a forecast's error, see above)."""
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
    share = weight / weight.sum()
    overall = float(share @ means)
    squared = k / (k - 1) * float((share**2) @ (means - overall) ** 2)
    if pseudo > 0:  # per-stream variance k * squared, shrunk towards 0.25 by ``pseudo`` streams
        squared = (k * k * squared + 0.25 * pseudo) / ((k + pseudo) * k)
    return float(np.sqrt(squared))
