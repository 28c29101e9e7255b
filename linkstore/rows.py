"""Link-space rows and model outputs: decoding a row into what the model would emit, and priors.

Links and ensembles work on encoded rows (:func:`mlink.topics.specs.encode_batch`); what leaves the
link core must look like the real model's output again. A *prior* is the best guess with no active
source, used when nothing runs and as one more input of the weighted ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlink.topics.specs import OutputSpec, SequenceSpec, VectorSpec, encode_batch

__all__ = ["decode_rows", "prior_output", "prior_row"]


def decode_rows(spec: OutputSpec, rows: np.ndarray) -> Any:
    """Link-space rows -> what the real model would emit (an array for vectors, else a list)."""
    if isinstance(spec, VectorSpec):
        if spec.task == "count":
            return np.clip(np.rint(rows), 0, spec.max_count).astype(np.float32)
        return rows.astype(np.float32)
    return [spec.decode(row) for row in rows]


def prior_row(spec: OutputSpec, encoded: np.ndarray) -> np.ndarray:
    """The best guess with no active source: class frequencies, the modal count, the median."""
    if isinstance(spec, SequenceSpec):
        values, counts = np.unique(encoded, axis=0, return_counts=True)
        return values[counts.argmax()]
    if isinstance(spec, VectorSpec) and spec.task in ("softmax", "sigmoid"):
        return encoded.mean(axis=0).astype(np.float32)
    if isinstance(spec, VectorSpec) and spec.task == "count":
        rounded = np.rint(encoded)
        return np.array(
            [np.bincount(col.astype(np.int64)).argmax() for col in rounded.T], dtype=np.float32
        )
    return np.median(encoded, axis=0).astype(np.float32)


def prior_output(spec: OutputSpec, outputs: Sequence[Any]) -> Any:
    """The prior of these outputs (:func:`prior_row`) as an output the model could have emitted."""
    return decode_rows(spec, prior_row(spec, encode_batch(spec, list(outputs)))[None])[0]
