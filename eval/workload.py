"""A workload: every model's real output on every frame of some streams, plus what each model costs.

Offline evaluation never runs a model: outputs are computed once (:mod:`mlink.eval.outputs`) and
every method, baseline and budget is measured on the same aligned outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlink.topics.specs import OutputSpec

__all__ = ["Workload", "shuffled_order", "stream_split"]


@dataclass(slots=True)
class Workload:
    """Aligned real outputs of every model on every frame, in stream (time) order.

    ``costs[m]`` is what running ``m`` once costs (``ms``, ``memory_mb``); ``cost_source`` says
    where that table comes from (declared, or measured when and how), because every compute-saved
    figure is only as good as it. ``poses``: each frame's motion pose where it was measured
    (:mod:`mlink.eval.motion_poses`; the ``flow`` mode), ``motion_ms`` what that cost a frame.
    """

    name: str
    specs: dict[str, OutputSpec]
    outputs: dict[str, list[Any]]
    costs: dict[str, dict[str, float]]
    streams: list[str] = field(default_factory=list)
    cost_source: str = "given"
    poses: list[Any] | None = None
    motion_ms: float = 0.0

    def __post_init__(self) -> None:
        n = {m: len(v) for m, v in self.outputs.items()}
        if set(n) != set(self.specs):
            raise ValueError(
                f"workload {self.name}: outputs cover {sorted(n)}, specs {sorted(self.specs)}"
            )
        if len(set(n.values())) > 1:
            raise ValueError(f"workload {self.name}: models have different frame counts {n}")
        if not self.streams:
            self.streams = ["stream"] * self.n_frames
        if len(self.streams) != self.n_frames:
            raise ValueError(
                f"workload {self.name}: {len(self.streams)} stream ids for {self.n_frames} frames"
            )
        if self.poses is not None and len(self.poses) != self.n_frames:
            raise ValueError(
                f"workload {self.name}: {len(self.poses)} poses for {self.n_frames} frames"
            )

    @property
    def models(self) -> list[str]:
        return list(self.specs)

    @property
    def n_frames(self) -> int:
        return len(next(iter(self.outputs.values()))) if self.outputs else 0

    def subset(self, index: Sequence[int]) -> dict[str, list[Any]]:
        return {m: [v[i] for i in index] for m, v in self.outputs.items()}

    def total_cost(self, resource: str = "ms") -> float:
        return float(sum(c.get(resource, 0.0) for c in self.costs.values()))

    def reordered(self, order: Sequence[int]) -> Workload:
        """The same frames in another order: new frame ``j`` is old frame ``order[j]``."""
        order = [int(i) for i in order]
        if sorted(order) != list(range(self.n_frames)):
            raise ValueError(f"workload {self.name}: order is not a permutation of its frames")
        return replace(
            self,
            outputs=self.subset(order),
            streams=[self.streams[i] for i in order],
            costs={m: dict(c) for m, c in self.costs.items()},
            poses=None,  # a pose chains onto the frame before it: a new order breaks them
        )


def stream_split(streams: Sequence[str], train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's protocol: the first ``train_fraction`` of *each* stream (in time order) trains,
    the rest evaluates. At least two frames per stream train so a validation split exists."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    train, test = [], []
    positions: dict[str, list[int]] = {}
    for i, s in enumerate(streams):
        positions.setdefault(s, []).append(i)
    for idx in positions.values():
        k = min(len(idx) - 1, max(2, round(len(idx) * train_fraction)))
        train += idx[:k]
        test += idx[k:]
    return np.array(sorted(train)), np.array(sorted(test))


def shuffled_order(streams: Sequence[str], seed: int) -> np.ndarray:
    """A permutation that shuffles the frames of each stream among that stream's own slots.

    For sources whose frames are independent samples stored in some order (the digits images are
    in file order, where consecutive labels often count up), so that the head of the stream that
    trains is a random sample and reuse gains nothing from the storage order.
    """
    rng = np.random.default_rng(seed)
    order = np.arange(len(streams))
    slots: dict[str, list[int]] = {}
    for i, s in enumerate(streams):
        slots.setdefault(s, []).append(i)
    for idx in slots.values():
        order[idx] = rng.permutation(idx)
    return order
