"""mlink_degraded_total{reason}: each cause of a degraded result under the label the metrics'
docs name (timeout | links | model_error), and no model_error where no model failed."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from mlink.operators.content_tally import ContentTally
from mlink.operators.joiner import Executed, FrameWork, build_results
from mlink.operators.metrics import WorkerMetrics
from mlink.operators.model_errors import (
    DECODE_FAILED,
    NO_OUTPUT,
    failure_kind,
    stuck_error,
    timeout_error,
)
from mlink.operators.results import record_result
from mlink.operators.state import Plan

A = Executed(np.zeros(2, np.float32), 5.0)


def degraded_reasons(work: FrameWork, unusable=None) -> dict[str, float]:
    prom = WorkerMetrics("w", ["a", "b"])
    state = SimpleNamespace(plan_extra={})  # no priced plan: no compute counted
    mlink = SimpleNamespace(metrics=Counter(), prom=prom, content=ContentTally(), state=state)
    [result] = build_results([work], ["a", "b"], {}, 1.0, unusable=unusable)
    assert result.degraded
    record_result(mlink, result)
    return {
        s.labels["reason"]: s.value
        for m in prom.degraded.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


@pytest.mark.parametrize(
    ("outcomes", "missing_reason", "unusable", "reason"),
    [
        ({"a": A}, None, {3: "sha256 mismatch"}, "links"),
        ({"a": A}, "no output within 5 s", None, "timeout"),
        ({"a": A, "b": Executed(None, 2.0, "ValueError: bad")}, None, None, "model_error"),
    ],
)
def test_each_cause_of_a_degraded_result_has_its_label(outcomes, missing_reason, unusable, reason):
    active = ("a",) if unusable else ("a", "b")
    plan = Plan(epoch=1, active=active, probe=False, link_version=3)
    work = FrameWork("cam:0", "cam", 0, None, plan, outcomes, missing_reason=missing_reason)
    assert degraded_reasons(work, unusable) == {reason: 1.0}


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (timeout_error("a", 2.0), "timeout"),
        (stuck_error("a", 7.5), "timeout"),
        (f"{NO_OUTPUT} within 5 s", "timeout"),
        ("link version 3 cannot be used: sha256 mismatch", "links"),
        ("synthesis failed: KeyError", "links"),
        ("link version 3 cannot be used: timed out after 5s waiting for the writer", "links"),
        ("model a raised ValueError: bad", "model_error"),
        (f"{DECODE_FAILED}: cannot identify image file", "input"),  # a bad camera, no model
    ],
)
def test_every_failure_text_the_operators_write_has_the_kind_its_metrics_name(error, kind):
    """The executors write a timeout's text and the metrics read it back: one module holds
    both, so a reworded message cannot turn timeouts into model errors."""
    assert failure_kind(error) == kind
