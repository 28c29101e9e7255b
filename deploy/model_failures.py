"""Which models failed on a pipeline's latest frames, and why: for ``mlink status``.

A model's health is in each worker's metrics (``mlink_model_healthy``), but a status that
showed none of it left "warming up" unexplained when one model failed on every frame, which
keeps the warm-up from ever ending (links are trained only from frames on which every model
ran; a new user's audit, stop 45).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlink.operators.warmup_failures import FailureTally
from mlink.topics.records import FrameResult

__all__ = ["failure_report"]


def failure_report(results: Iterable[FrameResult]) -> dict[str, Any]:
    """``{"results", "models": {model: {"failed", "of", "last_error"}}}`` over ``results``,
    the models that failed on any of them (counted as :class:`FailureTally` counts)."""
    tally = FailureTally()
    tally.add(results)
    return {
        "results": tally.frames,
        "models": {
            m: {"failed": tally.failed[m], "of": tally.tried[m], "last_error": tally.last_error[m]}
            for m in sorted(tally.failed)
        },
    }
