"""The paper's baselines (Table 4), on any :class:`~mlink.eval.workload.Workload`.

MLink is compared against three ways of running many models under a per-frame compute budget:

- :func:`standalone` -- the models that fit run; every other model gets its *prior* (the best
  constant guess from the training part), no links. Which models run is a knapsack on prior
  agreement.
- :func:`frame_filtering` -- Reducto (Li et al., SIGCOMM 2020): a model skips a frame whose cheap
  low-level features barely changed since the last frame it ran on, and its last output is reused.
- :func:`multitask` -- one small multi-task CNN on a thumbnail, with a head per model, trained on
  the models' outputs; it replaces all (or all inactive) models on the evaluation frames.

The protocol and the figures every method reports are described in
:mod:`mlink.eval.baselines.common`.
"""

from mlink.eval.baselines.common import MethodResult, evaluate_outputs, prior_outputs
from mlink.eval.baselines.frames import (
    FEATURES,
    PreparedFrames,
    feature_diff,
    frame_features,
    prepare_frames,
    thumbnails,
)
from mlink.eval.baselines.multitask import MultiTaskNet, multitask
from mlink.eval.baselines.reducto import frame_filtering
from mlink.eval.baselines.standalone import standalone

__all__ = [
    "FEATURES",
    "MethodResult",
    "MultiTaskNet",
    "PreparedFrames",
    "evaluate_outputs",
    "feature_diff",
    "frame_features",
    "frame_filtering",
    "multitask",
    "prepare_frames",
    "prior_outputs",
    "standalone",
    "thumbnails",
]
