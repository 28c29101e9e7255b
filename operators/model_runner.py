"""Running one black-box model on frames: batching, timing and output validation.

The model operator's pure core. A model that raises, or returns something its spec rejects, does
not stop the operator: the frame gets an error in place of an output, so the link operator can
finish the frame (synthesizing the failed model if links allow) instead of waiting for it.

Each call is timed twice: wall time (what a frame waits, for latency metrics) and the CPU time
of the thread that ran it (what the call costs, for plans). A worker runs its models side by
side on two cores, and there wall time counts the other models' turns too: on the DNN workload
a cheap model's wall time came out at 13 times its cost alone and an expensive one's at 3 times,
which flattens the relative costs that plans are made on (docs/model-execution.md, "What a call
costs").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlink.operators.model_errors import timeout_error
from mlink.topics.specs import OutputSpec, SpecError

__all__ = [
    "MAX_ERROR_CHARS",
    "ModelRunner",
    "RunOutcome",
    "describe_exception",
    "late_calls_timed_out",
    "model_calls",
]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One frame's output (validated) or the error that replaced it, the wall time it took and
    the CPU time of its thread (None where the call did not run on a thread here)."""

    output: np.ndarray | None
    elapsed_ms: float
    error: str | None = None
    cpu_ms: float | None = None


def model_calls(frames: Sequence[np.ndarray], batch: bool) -> int:
    """How many calls of the model :meth:`ModelRunner.run` makes for ``frames``: one for a batch
    model whose frames have one shape, else one per frame. A call's time limit covers that
    many calls (``timeout_s`` is per call), so a model that takes frames one at a time is not
    timed out for a batch it was never asked to run at once."""
    if batch and len({f.shape for f in frames}) == 1:
        return 1
    return max(len(frames), 1)


def late_calls_timed_out(
    name: str,
    frames: Sequence[np.ndarray],
    batch: bool,
    outcomes: list[RunOutcome],
    timeout_s: float,
) -> tuple[list[RunOutcome], list[bool]]:
    """``outcomes`` with every one-frame call that returned after ``timeout_s`` turned into a
    timeout, and which those were. A batch of one-frame calls runs under one limit of
    ``timeout_s`` times its calls, so one call could take many times ``timeout_s`` and still
    come back executed, where the docs promise an error output for any call that takes longer
    (a new user's audit, in a thread; the same held in an isolated model's process)."""
    late = [False] * len(outcomes)
    if model_calls(frames, batch) > 1:
        late = [o.error is None and o.elapsed_ms > timeout_s * 1000.0 for o in outcomes]
    if not any(late):
        return outcomes, late
    error = timeout_error(name, timeout_s)
    settled = [
        RunOutcome(None, o.elapsed_ms, error, o.cpu_ms) if slow else o
        for o, slow in zip(outcomes, late, strict=True)
    ]
    return settled, late


class ModelRunner:
    """Calls a model on frames, one at a time or as a batch when the model supports it."""

    def __init__(
        self, name: str, model: Callable[[Any], Any], spec: OutputSpec, batch: bool = False
    ) -> None:
        self.name, self.model, self.spec, self.batch = name, model, spec, batch

    def run(self, frames: Sequence[np.ndarray]) -> list[RunOutcome]:
        if model_calls(frames, self.batch) == 1 and len(frames) > 1:
            clock = _Clock()
            try:
                outputs = list(self.model(np.stack(frames)))
            except Exception:  # fall back to one by one, which attributes the error to a frame
                return [self._one(f) for f in frames]
            wall, cpu = clock.read(len(frames))
            if len(outputs) != len(frames):
                error = f"batch of {len(frames)} frames returned {len(outputs)} outputs"
                return [RunOutcome(None, wall, error, cpu) for _ in frames]
            return [self._validated(out, wall, cpu) for out in outputs]
        return [self._one(f) for f in frames]

    def _one(self, frame: np.ndarray) -> RunOutcome:
        clock = _Clock()
        try:
            output = self.model(frame)
        except Exception as exc:
            wall, cpu = clock.read()
            error = f"model {self.name} raised {describe_exception(exc)}"
            return RunOutcome(None, wall, error, cpu)
        return self._validated(output, *clock.read())

    def _validated(self, output: Any, elapsed_ms: float, cpu_ms: float) -> RunOutcome:
        try:
            return RunOutcome(self.spec.validate(output, model=self.name), elapsed_ms, None, cpu_ms)
        except SpecError as exc:
            return RunOutcome(None, elapsed_ms, f"invalid output: {_bounded(str(exc))}", cpu_ms)
        except Exception as exc:  # an output the spec's checks choke on (strings for boxes)
            error = f"invalid output: {describe_exception(exc)}"
            return RunOutcome(None, elapsed_ms, error, cpu_ms)


#: Longest error text a frame's result carries: a model's exception message can be any size,
#: and it travels to Kafka in the result and across the pipe from an isolated model's process.
MAX_ERROR_CHARS = 2000


def _bounded(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return f"{text[:MAX_ERROR_CHARS]}... ({len(text):,} characters)"


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, bounded; an exception whose ``str`` itself raises still says its type."""
    try:
        message = str(exc)
    except Exception:
        message = "<its message could not be read>"
    return f"{type(exc).__name__}: {_bounded(message)}"


class _Clock:
    """Wall and thread CPU time since it was made, in ms per frame."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def read(self, frames: int = 1) -> tuple[float, float]:
        wall = (time.perf_counter() - self.wall) * 1000 / frames
        return wall, (time.thread_time() - self.cpu) * 1000 / frames
