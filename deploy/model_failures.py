"""Which models failed on a pipeline's latest frames, and why: for ``mlink status``.

A model's health is in each worker's metrics (``mlink_model_healthy``), but a status that
showed none of it left "warming up" unexplained when one model failed on every frame, which
keeps the warm-up from ever ending (links are trained only from frames on which every model
ran; a new user's audit, stop 45).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from mlink.topics.records import FrameResult

__all__ = ["failure_report"]

MAX_REASON_CHARS = 300


def failure_report(results: Iterable[FrameResult]) -> dict[str, Any]:
    """``{"results", "models": {model: {"failed", "of", "last_error"}}}`` over ``results``:
    a model failed on a frame where it was to run and gave no output of its own (missing, or
    synthesized in its place, with the error). Frames no model ran on (undecodable) are not
    the models' fault."""
    failed: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    last: dict[str, str] = {}
    seen = 0
    for result in results:
        seen += 1
        if not any(r.status == "executed" for r in result.results):
            continue
        for r in result.results:
            if r.status == "synthesized" and not r.error:
                continue  # the plan's synthesis, not a run that failed (that carries its error)
            tried[r.model] += 1
            if r.status != "executed":
                failed[r.model] += 1
                last[r.model] = (r.error or "no output")[:MAX_REASON_CHARS]
    return {
        "results": seen,
        "models": {
            m: {"failed": failed[m], "of": tried[m], "last_error": last.get(m)}
            for m in sorted(failed)
        },
    }
