"""Running the planned models on a batch of frames, in-process.

Each model runs in its own executor (a thread, or child processes when isolated; see
:mod:`mlink.operators.executor`), on every frame of the batch whose plan lists it, batched into
one call when the model accepts batches; different models run concurrently. A call that exceeds
the model's ``timeout_s`` yields an error outcome for its frames and the batch goes on: a model's
lateness is measured from the moment its call starts, never from time spent queueing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from mlink.linkstore.schedule import Schedule
from mlink.operators.joiner import Executed
from mlink.operators.model_errors import failure_kind
from mlink.operators.model_runner import model_calls
from mlink.operators.runtime import MLink

__all__ = ["run_cascades", "run_planned"]

log = logging.getLogger("mlink.worker")


async def run_planned(
    mlink: MLink, jobs: Sequence[tuple[np.ndarray, Sequence[str]]]
) -> list[dict[str, Executed]]:
    """For each ``(image, models to run)`` job, the outcome of each of its models."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, (_, models) in enumerate(jobs):
        for model in models:
            rows_of[model].append(i)
    outcomes: list[dict[str, Executed]] = [{} for _ in jobs]

    async def run(model: str, rows: list[int]) -> None:
        images = [jobs[i][0] for i in rows]
        try:
            executor = mlink.runners[model]
            done = await executor.arun(images)  # bounded by the model's timeout_s
            calls = model_calls(images, mlink.models[model].batch)
            mlink.prom.model_calls.labels(model).inc(calls)
            results = [Executed(o.output, o.elapsed_ms, o.error, o.cpu_ms) for o in done]
            mlink.prom.model_states({model: executor.health().state})
        except Exception as exc:  # executors contain model errors; this is a bug or no build
            error = f"model {model} could not run: {type(exc).__name__}: {exc}"
            results = [Executed(None, None, error)] * len(rows)
        failed = sum(r.error is not None for r in results)
        mlink.metrics[f"executed:{model}"] += len(rows) - failed
        for r in results:
            if r.error is None:
                cpu_s = None if r.cpu_ms is None else r.cpu_ms / 1000.0
                mlink.prom.model_call(model, (r.elapsed_ms or 0.0) / 1000.0, cpu_s)
            else:
                timeout = failure_kind(r.error) == "timeout"
                mlink.prom.model_failure(model, "timeout" if timeout else "error")
        if failed:
            mlink.metrics[f"failed:{model}"] += failed
            first = next(r.error for r in results if r.error is not None)
            logging.getLogger(f"mlink.model_failures.{model}").warning(  # limited: log_limits
                "model %s failed on %d of the %d frames of a call: %s",
                model,
                failed,
                len(rows),
                first,
            )
        for i, result in zip(rows, results, strict=True):
            outcomes[i][model] = result

    await asyncio.gather(*(run(m, rows) for m, rows in rows_of.items()))
    return outcomes


async def run_cascades(
    mlink: MLink,
    schedule: Schedule | None,
    jobs: Sequence[tuple[np.ndarray, Sequence[str]]],
    outcomes: list[dict[str, Executed]],
) -> list[frozenset[str]]:
    """After :func:`run_planned`: run each cascade's model on the frames where its source found
    anything (:meth:`~mlink.linkstore.schedule.Schedule.gated`), adding their outcomes to
    ``outcomes``; returns the models each job ran this way. A source that failed gates nothing.
    """
    if schedule is None or not schedule.cascaded:
        return [frozenset()] * len(jobs)
    gated = [
        schedule.gated({m: o.output for m, o in done.items() if o.error is None})
        for done in outcomes
    ]
    more = await run_planned(
        mlink, [(image, sorted(g)) for (image, _), g in zip(jobs, gated, strict=True)]
    )
    for done, extra in zip(outcomes, more, strict=True):
        done.update(extra)
    return gated
