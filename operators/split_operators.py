"""The planner, model operator and link operator as separate agents (the split layout).

:func:`~mlink.operators.frame_operator.attach_frame_operator` does all three in one agent and is
what :func:`~mlink.operators.attach` uses. The split layout is for deployments that run models
in other apps or on other machines (a GPU box for one detector, say):

    frames --planner--> planned --model operators--> outputs --link operator--> results
                 \\_________ plan notices __________/

Every topic is keyed by stream id, so with equal partition counts a stream's frames, planned
frames, outputs and results live in partitions of the same number. The planner bounds the frames
it has planned but not yet seen answered (``Settings.max_in_flight``): while the window is full
it stops taking frames, so a backlog waits in Kafka. A frame's credit returns when this worker's
link operator emits its result, or after ``output_timeout_s`` if another worker answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import faust
import numpy as np

from mlink.operators.dispatch import run_planned
from mlink.operators.frame_operator import FrameReader, read_frame_record
from mlink.operators.joiner import FrameWork, JoinBuffer, is_training_sample
from mlink.operators.model_errors import DECODE_FAILED, NO_OUTPUT
from mlink.operators.results import frame_results, record_result
from mlink.operators.runtime import MLink
from mlink.operators.wiring import Outbox, count_crashes, dead_letters, raw_topic, verified_value
from mlink.topics.codec import decode_any_record, decode_record, encode_record
from mlink.topics.frames import decode_frame
from mlink.topics.records import DecodeError, Frame, FrameResult, ModelOutput, PlanNotice
from mlink.topics.specs import SpecError

__all__ = ["Credits", "attach_link_operator", "attach_model_operator", "attach_planner"]

log = logging.getLogger("mlink.worker")
_EMPTY = np.zeros(0, dtype=np.float32)


class Credits:
    """Frames planned by this worker and not yet answered, bounded by a window."""

    def __init__(self, window: int, expire_s: float) -> None:
        self.window, self.expire_s = window, expire_s
        self.planned: OrderedDict[str, float] = OrderedDict()
        self.changed = asyncio.Condition()

    def _expire(self, now: float) -> None:
        while self.planned and now - next(iter(self.planned.values())) > self.expire_s:
            self.planned.popitem(last=False)

    async def take(self, frame_id: str) -> None:
        async with self.changed:
            while True:
                self._expire(time.monotonic())
                if len(self.planned) < self.window:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), self.expire_s / 4)
            self.planned[frame_id] = time.monotonic()

    async def give_back(self, frame_ids: Sequence[str]) -> None:
        async with self.changed:
            for frame_id in frame_ids:
                self.planned.pop(frame_id, None)
            self.changed.notify_all()


def _credits(mlink: MLink) -> Credits:
    if not hasattr(mlink, "credits"):
        settings = mlink.settings
        mlink.credits = Credits(settings.max_in_flight, settings.output_timeout_s)  # type: ignore[attr-defined]
    return mlink.credits  # type: ignore[attr-defined]


def attach_planner(
    app: faust.App,
    mlink: MLink,
    *,
    source: faust.TopicT | None = None,
    reader: FrameReader = read_frame_record,
) -> Any:
    """Stamp each frame with its plan (planned topic) and tell the link operator (a notice)."""
    names, settings = mlink.names, mlink.settings
    planned_t, outputs_t = Outbox(app, mlink, names.planned), Outbox(app, mlink, names.outputs)
    dead = dead_letters(app, mlink)
    credits = _credits(mlink)

    async def planner(stream: faust.StreamT) -> None:
        await mlink.event("control").wait()
        async for event in stream.events():
            async with dead.guard(event, "planner"):
                frame = reader(event, mlink.limits)
                await credits.take(frame.frame_id)
                # planned when a credit frees, close to running; before any model has run, so
                # a cascade's model runs on every frame
                await mlink.loaded()
                plan = mlink.plan(frame.seq, cascades=False)
                notice = PlanNotice(
                    frame_id=frame.frame_id,
                    stream_id=frame.stream_id,
                    seq=frame.seq,
                    plan=plan,
                    timestamp=frame.timestamp,
                    planned_at=time.time(),
                )
                key = frame.stream_id.encode()
                await outputs_t.send(key, encode_record(notice))
                stamped = dataclasses.replace(frame, plan=plan)
                await planned_t.send(key, encode_record(stamped))
                mlink.metrics["frames_planned"] += 1
                mlink.prom.frames.inc()
                mlink.prom.in_flight.set(len(credits.planned))

    planner.__name__ = "planner"
    source = source if source is not None else raw_topic(app, names.frames)
    return app.agent(source, name=f"{settings.name}-planner")(
        count_crashes(mlink, "planner")(planner)
    )


def attach_model_operator(
    app: faust.App, mlink: MLink, models: Sequence[str] | None = None, *, name: str = "models"
) -> Any:
    """Run ``models`` (default: all) on the planned frames whose plan lists them.

    One agent per app whatever the number of models: each planned frame is read and decoded
    once, and its models run in-process. Several apps may each run a subset of the models.
    """
    names, settings = mlink.names, mlink.settings
    mine = set(models or mlink.model_names)
    unknown = sorted(mine - set(mlink.model_names))
    if unknown:
        raise ValueError(f"attach_model_operator: unknown models {unknown}")
    planned_t, outputs_t = raw_topic(app, names.planned), Outbox(app, mlink, names.outputs)
    dead = dead_letters(app, mlink)
    limits = mlink.limits

    async def model_operator(stream: faust.StreamT) -> None:
        await mlink.build_models(sorted(mine))
        async for events in stream.take_events(settings.batch_size, within=settings.batch_wait_s):
            async with dead.guard(list(events), "model-operator"):
                frames = await dead.decode(
                    events,
                    lambda e: decode_record(verified_value(mlink, e), Frame, limits=limits),
                    "model-operator",
                )
                jobs, kept = [], []
                for event, frame in frames:
                    todo = sorted(mine & set(frame.plan.active if frame.plan else ()))
                    if not todo:
                        continue
                    try:
                        image = decode_frame(frame, limits)
                    except DecodeError as exc:
                        await dead.send(event, "model-operator", exc)
                        await send(frame, {m: None for m in todo}, f"{DECODE_FAILED}: {exc}")
                        continue
                    jobs.append((image, todo))
                    kept.append(frame)
                outcomes = await run_planned(mlink, jobs)
                for frame, done in zip(kept, outcomes, strict=True):
                    await send(frame, done, None)

    async def send(frame: Frame, done: dict[str, Any], error: str | None) -> None:
        for model, outcome in done.items():
            failed = error or (outcome.error if outcome is not None else NO_OUTPUT)
            output = outcome.output if outcome is not None and outcome.output is not None else None
            record = ModelOutput(
                frame_id=frame.frame_id,
                stream_id=frame.stream_id,
                seq=frame.seq,
                model=model,
                output=output if output is not None else _EMPTY,
                epoch=frame.plan.epoch if frame.plan else 0,
                elapsed_ms=(outcome.elapsed_ms if outcome is not None else None) or 0.0,
                cpu_ms=outcome.cpu_ms if outcome is not None else None,
                produced_at=time.time(),
                error=failed if output is None else None,
            )
            await outputs_t.send(frame.stream_id.encode(), encode_record(record))

    model_operator.__name__ = f"model_operator_{name}"
    return app.agent(planned_t, name=f"{settings.name}-{name}")(
        count_crashes(mlink, name)(model_operator)
    )


def attach_link_operator(app: faust.App, mlink: MLink) -> Any:
    """Join each frame's notice and outputs, synthesize the rest, emit one result per frame.

    With ``links.stream`` the rest are synthesized by the stream schedule the frame was planned
    under, from this worker's memory of each stream's real runs (every topic is keyed by stream,
    so one worker sees all of a stream's outputs), as the frame operator does."""
    names, settings = mlink.names, mlink.settings
    outputs_t = raw_topic(app, names.outputs)
    results_t, samples_t = Outbox(app, mlink, names.results), Outbox(app, mlink, names.samples)
    dead = dead_letters(app, mlink)
    joins = JoinBuffer()
    credits = _credits(mlink)
    acker: dict[str, Any] = {}

    def check(record: ModelOutput) -> str | None:
        if record.model not in mlink.specs:
            return f"unknown model {record.model!r}; this pipeline has {mlink.model_names}"
        if record.error is not None:
            return None
        try:
            mlink.specs[record.model].validate(record.output, model=record.model)
        except SpecError as exc:
            return f"invalid output: {exc}"
        return None

    finishing: set[str] = set()  # frames whose results are being sent (across awaits)

    async def finish(frame_ids: Sequence[str], timed_out: bool) -> None:
        # claimed before the first await: the timer and the agent interleave at each send, and
        # a frame finished by both would get two results that disagree (one timed out)
        frame_ids = [f for f in frame_ids if f in joins.frames and f not in finishing]
        finishing.update(frame_ids)
        try:
            await _finish(frame_ids, timed_out)
        finally:
            finishing.difference_update(frame_ids)

    async def _finish(frame_ids: Sequence[str], timed_out: bool) -> None:
        works = []
        for frame_id in frame_ids:
            pending = joins.frames[frame_id]
            reason = f"{NO_OUTPUT} within {settings.output_timeout_s:g} s" if timed_out else None
            works.append(pending.work(reason))
        epochs: dict[int, list[FrameWork]] = {}
        for work in sorted(works, key=lambda w: (w.stream_id, w.seq)):
            epochs.setdefault(work.plan.epoch if work.plan else -1, []).append(work)
        results = [
            result
            for epoch, group in epochs.items()
            for result in frame_results(mlink, group, mlink.state.schedule_of(epoch))
        ]
        for result in results:
            await emit(result)
        await credits.give_back(frame_ids)
        for frame_id in frame_ids:
            for held in joins.pop(frame_id):
                await acker["stream"].ack(held)

    async def emit(result: FrameResult) -> None:
        value, key = encode_record(result), result.stream_id.encode()
        await results_t.send(key, value)
        if is_training_sample(result):
            await samples_t.send(key, value)
        mlink.completed.add(result.frame_id)
        record_result(mlink, result)

    async def link_operator(stream: faust.StreamT) -> None:
        # Manual acks: a frame's records are acked only once its result is out, so the committed
        # offset never passes an unfinished frame; after a crash the new owner replays them.
        manual = acker["stream"] = stream.noack()
        async for event in manual.events():
            async with dead.guard(event, "link-operator"):
                record = decode_any_record(verified_value(mlink, event), limits=mlink.limits)
                if not isinstance(record, PlanNotice | ModelOutput):
                    raise DecodeError(f"unexpected {type(record).__name__} on the outputs topic")
                problem = check(record) if isinstance(record, ModelOutput) else None
                done = record.frame_id in mlink.completed or record.frame_id in finishing
                if problem or done:
                    if problem:  # never joined: a stray bad record must not take a model's slot
                        await dead.send(event, "link-operator", problem)
                    else:
                        mlink.metrics["late_records"] += 1
                    await manual.ack(event)
                    continue
                state = joins.add(record, event, time.time())
                if state.complete:
                    await finish([record.frame_id], timed_out=False)
                continue
            await manual.ack(event)  # dead-lettered by the guard: acked, never replayed

    async def expire_pending() -> None:
        overdue = [
            f for f in joins.overdue(time.time(), settings.output_timeout_s) if f not in finishing
        ]
        orphans = [f for f in overdue if joins.frames[f].notice is None]
        for frame_id in orphans:  # outputs for a frame no planner saw: not a frame that entered
            pending = joins.frames.get(frame_id)
            if pending is None or pending.notice is not None:  # its plan came during an await
                continue
            for event in joins.pop(frame_id):
                await dead.send(event, "link-operator", f"no plan for frame {frame_id!r}")
                await acker["stream"].ack(event)
        late = [f for f in overdue if f not in orphans]
        if late:
            try:
                await finish(late, timed_out=True)
            except Exception:
                mlink.metrics["expiry_failures"] += 1
                log.exception("emitting %d overdue frames failed; retrying", len(late))

    async def forget_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        dropped = joins.drop_partitions(set(revoked))
        if dropped:  # not acked: whoever owns the partitions next replays them
            log.info("dropped %d unfinished frames of revoked partitions", dropped)

    app.timer(interval=max(0.2, settings.output_timeout_s / 5))(expire_pending)
    app.on_partitions_revoked.connect(forget_revoked)
    link_operator.__name__ = "link_operator"
    return app.agent(
        outputs_t,
        name=f"{settings.name}-link-operator",
    )(count_crashes(mlink, "link-operator")(link_operator))
