"""Running one black-box model on frames: batching, timing and output validation.

The model operator's pure core. A model that raises, or returns something its spec rejects, does
not stop the operator: the frame gets an error in place of an output, so the link operator can
finish the frame (synthesizing the failed model if links allow) instead of waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlink.topics.specs import OutputSpec, SpecError


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One frame's output (validated) or the error that replaced it, and the time it took."""

    output: np.ndarray | None
    elapsed_ms: float
    error: str | None = None


class ModelRunner:
    """Calls a model on frames, one at a time or as a batch when the model supports it."""

    def __init__(
        self, name: str, model: Callable[[Any], Any], spec: OutputSpec, batch: bool = False
    ) -> None:
        self.name, self.model, self.spec, self.batch = name, model, spec, batch

    def run(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        same_shape = len({f.shape for f in frames}) == 1
        if self.batch and len(frames) > 1 and same_shape:
            start = time.perf_counter()
            try:
                outputs = list(self.model(np.stack(frames)))
            except Exception:  # fall back to one by one, which attributes the error to a frame
                return [self._one(f) for f in frames]
            per_frame = (time.perf_counter() - start) * 1000 / len(frames)
            if len(outputs) != len(frames):
                error = f"batch of {len(frames)} frames returned {len(outputs)} outputs"
                return [RunOutcome(None, per_frame, error) for _ in frames]
            return [self._validated(out, per_frame) for out in outputs]
        return [self._one(f) for f in frames]

    def _one(self, frame: np.ndarray) -> RunOutcome:
        start = time.perf_counter()
        try:
            output = self.model(frame)
        except Exception as exc:
            elapsed = (time.perf_counter() - start) * 1000
            return RunOutcome(
                None, elapsed, f"model {self.name} raised {type(exc).__name__}: {exc}"
            )
        return self._validated(output, (time.perf_counter() - start) * 1000)

    def _validated(self, output: Any, elapsed_ms: float) -> RunOutcome:
        try:
            return RunOutcome(self.spec.validate(output, model=self.name), elapsed_ms)
        except SpecError as exc:
            return RunOutcome(None, elapsed_ms, f"invalid output: {exc}")
