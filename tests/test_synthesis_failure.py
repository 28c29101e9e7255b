"""A batch whose synthesis fails is emitted without it: each inactive model missing with the
reason, the result degraded and counted so (not a complete result)."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import numpy as np

from mlink.operators.content_tally import ContentTally
from mlink.operators.joiner import Executed, FrameWork
from mlink.operators.metrics import WorkerMetrics
from mlink.operators.results import frame_results, record_result
from mlink.operators.state import Plan


def test_a_failed_synthesis_degrades_the_result_and_names_why(caplog):
    def linksets(versions):
        raise ValueError("link version 3 does not fit these models")

    prom = WorkerMetrics("w", ["a", "b"])
    mlink = SimpleNamespace(
        metrics=Counter(),
        prom=prom,
        content=ContentTally(),
        linksets=linksets,
        model_names=("a", "b"),
        state=SimpleNamespace(plan_extra={}),  # no priced plan: no compute counted
    )
    work = FrameWork(
        "cam:0",
        "cam",
        0,
        None,
        Plan(epoch=1, active=("a",), probe=False, link_version=3),
        {"a": Executed(np.zeros(2, np.float32), 5.0)},
    )
    with caplog.at_level(logging.CRITICAL, "mlink.worker"):
        [result] = frame_results(mlink, [work])
    record_result(mlink, result)
    a, b = result.results
    assert (a.status, a.error) == ("executed", None)
    assert b.status == "missing" and "synthesis failed: ValueError" in (b.error or "")
    assert result.degraded
    assert mlink.metrics["synthesis_failures"] == 1 and mlink.metrics["degraded"] == 1
    counts = {
        s.labels["outcome"]: s.value
        for m in prom.results.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counts == {"complete": 0.0, "degraded": 1.0}
