"""What a worker's frames showed under the plan in force, weighed by the plan's content table.

The controller puts a :class:`~mlink.linkstore.content_forecast.ContentTable` in each
``active_set`` message of the paper's links (stream plans have probes for this and carry none);
:class:`~mlink.operators.state.ControlState` validates and keeps it (``state.content``).
Each worker counts the content signature of the results it emits (how many of the plan's active
detectors found anything) and turns the counts into the plan's content-weighted forecast:
``mlink_forecast{basis="content"}`` and ``mlink_unseen_content``, without labels.
"""

from __future__ import annotations

import numpy as np

from mlink.linkstore.content_forecast import (
    MAX_FIRING,
    ContentForecast,
    ContentTable,
    frame_signature,
)
from mlink.topics.records import FrameResult

__all__ = ["ContentTally"]


class ContentTally:
    """Signature counts of the results planned under ``epoch``, and that plan's table (None: no
    forecast)."""

    def __init__(self) -> None:
        self.table: ContentTable | None = None
        self.epoch = -1
        self.counts = np.zeros(MAX_FIRING + 1, dtype=np.int64)

    def plan(self, table: ContentTable | None, epoch: int) -> ContentForecast | None:
        """Start over with the plan of ``epoch`` and its table (None: a plan without one);
        its forecast before any frame, the plan's estimate."""
        self.counts[:] = 0
        self.table = table
        self.epoch = epoch
        return self.forecast()

    def forecast(self) -> ContentForecast | None:
        """The plan's forecast over every frame counted so far (None without a table)."""
        return None if self.table is None else self.table.forecast(self.counts)

    def add(self, result: FrameResult) -> ContentForecast | None:
        """Count one emitted result of this plan's epoch (a result planned under the plan before
        says nothing of this one's active models); the forecast over every frame counted."""
        if self.table is None or result.epoch != self.epoch:
            return None
        outputs = {r.model: r.output for r in result.results if r.status == "executed"}
        self.counts[frame_signature(outputs, self.table.detectors)] += 1
        return self.forecast()
