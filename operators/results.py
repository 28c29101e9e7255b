"""A frame's result from what ran on it, and its count in the worker's metrics: shared by the
fused frame operator and the split layout's link operator, so both synthesize alike (stream
modes when the config asks for them, else the paper's links)."""

from __future__ import annotations

import logging
import time

from mlink.linkstore.schedule import Schedule
from mlink.operators.joiner import FrameWork, build_results
from mlink.operators.model_errors import failure_kind
from mlink.operators.runtime import MLink
from mlink.operators.stream_synthesis import synthesize_streams
from mlink.topics.records import FrameResult

__all__ = ["frame_results", "record_result"]

log = logging.getLogger("mlink.worker")


def record_result(mlink: MLink, result: FrameResult) -> None:
    """Count one emitted result in the worker's counters and Prometheus metrics."""
    mlink.metrics["results"] += 1
    mlink.metrics["degraded"] += int(result.degraded)
    reason = None
    for r in result.results:
        if r.status != "executed":
            mlink.metrics[f"{r.status}:{r.model}"] += 1
        if r.status == "synthesized":
            mlink.prom.synthesized_output(r.model)
        if r.error is not None and reason is None:
            reason = failure_kind(r.error)
    latency = time.time() - result.timestamp if result.timestamp is not None else None
    mlink.prom.result(degraded_reason=reason if result.degraded else None, latency_s=latency)
    executed = (r.model for r in result.results if r.status == "executed")
    mlink.prom.answered(executed, mlink.state.plan_extra.get("model_ms"))
    if (forecast := mlink.content.add(result)) is not None:
        mlink.prom.content_forecast(forecast)


def frame_results(
    mlink: MLink, works: list[FrameWork], schedule: Schedule | None = None
) -> list[FrameResult]:
    """Results with synthesis (stream synthesis when configured, else the paper's links); if
    synthesis itself fails (a link version that does not fit), the same results without it,
    each inactive model ``missing`` with the reason."""
    versions = [w.plan.link_version if w.plan else None for w in works]
    try:
        linksets = mlink.linksets(versions)
        streamed = None
        if mlink.settings.links.stream:
            streamed = synthesize_streams(
                works, schedule, mlink.stream_links, mlink.memory, mlink.specs
            )
        return build_results(
            works,
            mlink.model_names,
            linksets,
            time.time(),
            mlink.estimates(),
            mlink.unusable,
            streamed,
        )
    except Exception as exc:
        mlink.metrics["synthesis_failures"] += 1
        log.exception("synthesis failed for a batch of %d frames", len(works))
        reason = f"synthesis failed: {type(exc).__name__}: {exc}"
        for work in works:
            work.missing_reason = reason
        # every version of the batch as unusable: each model neither run nor synthesized is
        # missing with the reason, and the result is degraded (not a complete result)
        unusable = {v: reason for v in versions if v is not None}
        return build_results(works, mlink.model_names, {}, time.time(), unusable=unusable)
