"""Live agreement: how well the links synthesize each inactive model on real probe frames.

Validation agreement is measured once, on the frames the links were trained around. Probe
frames keep arriving with every model executed, so each one shows what the current plan would
have synthesized next to what the real model said. The running mean per model is the honest
runtime signal of link quality (and of drift): the trainer publishes it on the control topic and
``mlink status`` shows it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.metrics import agreement
from mlink.topics.records import FrameResult


def probe_agreement(
    result: FrameResult, linkset: LinkSet, active: Sequence[str]
) -> dict[str, float]:
    """Per inactive model: agreement of its synthesis from ``active`` with its real output."""
    executed = {r.model: r.output for r in result.results if r.status == "executed"}
    sources = {m: [executed[m]] for m in active if m in executed}
    scores: dict[str, float] = {}
    if not sources:
        return scores
    for model, actual in executed.items():
        if model in active or model not in linkset.specs:
            continue
        synthesized = linkset.synthesize(model, sources, trusted=True)
        scores[model] = float(agreement(linkset.specs[model], synthesized, [actual])[0])
    return scores


class LiveAgreement:
    """Running mean of probe agreement per model, for one (epoch, link version) at a time."""

    def __init__(self) -> None:
        self.key: tuple[int, int | None] | None = None
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.probes = 0

    def add(self, key: tuple[int, int | None], scores: dict[str, float]) -> None:
        if key != self.key:  # a new plan: its links and active set differ, start over
            self.key, self.probes = key, 0
            self.sums.clear()
            self.counts.clear()
        self.probes += 1
        for model, score in scores.items():
            self.sums[model] += score
            self.counts[model] += 1

    def means(self) -> dict[str, float]:
        return {m: self.sums[m] / self.counts[m] for m in sorted(self.counts)}
