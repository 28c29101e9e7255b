"""How far an agreement estimate can be off when its samples come from a few streams.

A curve's samples are frames of a handful of streams, and frames of one stream are alike: a
head that fits the faces of the first six frames of a pan fits the next six too. The frames are
then not independent draws, and a margin from their count alone is too narrow exactly where it
matters: an option whose agreement differs from stream to stream promises, on the next stretch
of each stream, about as little as it keeps on its worst ones. The cluster-robust standard
error treats each stream as one draw (its sample-weighted mean agreement), so an option that is
good everywhere keeps a narrow margin and one that is good on some streams only does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["between_streams"]


def between_streams(scores: Sequence[float] | np.ndarray, streams: Sequence[Any]) -> float:
    """The standard error of the sample-weighted mean of ``scores`` with each stream one cluster
    (0.0 with fewer than two streams: one stream has no between-stream spread to measure).
    NaN scores (pairs a mode does not apply to) are left out."""
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
    return float(np.sqrt(k / (k - 1) * float((share**2) @ (means - overall) ** 2)))
