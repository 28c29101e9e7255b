"""The frame operator: plan, run the active models and synthesize the rest, in one agent.

One consumer of the frames topic per worker does the whole per-frame job in-process: it takes a
batch of frames from Kafka, plans each one from the replayed control state at that moment (so a
frame planned after the first links arrive runs the budgeted plan), runs each planned model once
on the frames that need it, synthesizes every other model through the frame's link version, and
emits exactly one result per frame, plus the probe frames' results as training samples. The
batch's Kafka events are acked only after its results are handed to the producer (which faust
flushes before it commits), so a crash replays them: delivery is at-least-once and consumers
dedupe by frame id.

Flow control falls out of the shape: at most one batch per worker is in flight, the rest of a
backlog waits in Kafka (faust prefetches at most ``stream_buffer_maxsize`` records), and nothing
queues between planning and execution.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust
import numpy as np

from mlink.operators.control_operators import attach_control_replay, refuses_newest_plan
from mlink.operators.dead_letters import DeadLetters
from mlink.operators.dispatch import run_cascades, run_planned
from mlink.operators.joiner import Executed, FrameWork, is_training_sample
from mlink.operators.model_errors import DECODE_FAILED
from mlink.operators.results import frame_results, record_result
from mlink.operators.runtime import MLink
from mlink.operators.warmup_failures import WarmupFailures
from mlink.operators.warmup_hold import hold_over
from mlink.operators.wiring import (
    Outbox,
    acks_when_answered,
    count_crashes,
    dead_letters,
    raw_topic,
)
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.frames import decode_frame
from mlink.topics.ingest import SourceFormat, frame_from_record
from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.records import Frame, FrameResult

__all__ = ["FrameReader", "attach_frame_operator", "read_frame_record", "source_reader"]

log = logging.getLogger("mlink.worker")
STAGE = "frame-operator"
EMPTY = np.zeros(0, dtype=np.uint8)

FrameReader = Callable[[Any, Limits], Frame]
"""Turns one faust event of the frames topic into a :class:`Frame` within the pipeline's limits
(raises to dead-letter)."""


def read_frame_record(event: Any, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """The default reader: the value is our msgpack ``Frame`` envelope."""
    return decode_record(event.value, Frame, limits=limits)


def source_reader(format: SourceFormat) -> FrameReader:
    """The reader of a source topic's format: ``"frame"`` (our envelope) or ``"image"`` (one
    encoded JPEG/PNG per record: ids from headers, or derived from topic, partition and offset
    so a replay yields the same ids; see :mod:`mlink.topics.ingest`)."""
    if format == "frame":
        return read_frame_record

    def read(event: Any, limits: Limits = DEFAULT_LIMITS) -> Frame:
        m = event.message
        ms = None if m.timestamp is None else round(m.timestamp * 1000)  # faust: seconds
        return frame_from_record(
            format, m.topic, m.partition, m.offset, event.key, event.value, m.headers, ms,
            limits=limits,
        )  # fmt: skip

    return read


async def _fetching(consumer: Any, tps: Sequence[Any], on: bool) -> None:
    """Pause (``on`` False) or resume fetching ``tps`` in the Kafka client itself.

    Not through faust's ``pause_partitions``: faust drops the records of a partition it
    paused that it had fetched but not yet handed to the stream, and counts them as a gap that
    is acknowledged, while the fetch position has moved past them, so the frames in flight
    would be lost. The client's own pause keeps its position and re-fetches them on resume;
    faust's flow control (which pauses a partition whose stream buffer is full) is untouched.
    """
    from aiokafka.structs import TopicPartition

    thread = consumer._thread
    client = thread._ensure_consumer()
    parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
    for part in parts:  # one by one: a partition revoked meanwhile cannot be paused
        try:
            await thread.call_thread(client.resume if on else client.pause, part)
        except Exception as exc:  # not assigned any more: its next owner fetches it
            log.debug("could not %s %s: %s", "resume" if on else "pause", part, exc)


def _buffered(stream: faust.StreamT) -> int:
    """Frames faust fetched for ``stream`` that its agent has not taken yet (0 if unknown)."""
    queue = getattr(stream.channel, "_queue", None)
    return queue.qsize() if queue is not None else 0


def record_position(event: Any) -> str:
    """Where a frame record sits in Kafka: what a redelivery repeats. Not its frame id: a source
    run again (``mlink produce``, a camera that restarts its counter) sends the same ids in new
    records, and those are new frames that need results."""
    message = event.message
    return f"{message.topic}/{message.partition}/{message.offset}"


class FrameBatch:
    """The work of one batch, step by step; each step contains its own failures."""

    def __init__(self, mlink: MLink, dead: DeadLetters, app: faust.App, topics: set[str]) -> None:
        self.mlink, self.dead, self.app, self.topics = mlink, dead, app, topics
        self.warmup_planned = 0
        self.hold_at = mlink.settings.links.warmup_frames
        self.warmup_epoch = 0  # the plan whose warm-up is being counted (0: the first one)
        self.warmup_base = 0  # warm-up frames planned before that plan's warm-up began
        self.holding = False
        self.refused_told = 0  # the newest refused plan's epoch this worker last warned of
        self.releaser: asyncio.Future[None] | None = None
        self.queued: Callable[[], int] = lambda: 0  # frames fetched, not yet taken by the agent
        self.warmup_failures = WarmupFailures()  # why warm-up frames were no samples

    async def frames(self, events: Sequence[Any], reader: FrameReader) -> list[tuple[Any, Frame]]:
        limits = self.mlink.limits
        good = await self.dead.decode(events, lambda e: reader(e, limits), STAGE)
        fresh = []
        for event, frame in good:
            if record_position(event) in self.mlink.completed:
                self.mlink.metrics["redelivered_frames"] += 1
                continue  # answered already by this worker: a redelivery, not a new frame
            fresh.append((event, frame))
        return fresh

    async def images(
        self, items: Sequence[tuple[Any, Frame]]
    ) -> list[tuple[np.ndarray | None, str | None]]:
        """Decoded pixels per frame (off the loop), or why a frame could not be decoded."""

        def decode_all() -> list[tuple[np.ndarray | None, str | None]]:
            out: list[tuple[np.ndarray | None, str | None]] = []
            for _, frame in items:
                try:
                    out.append((decode_frame(frame, self.mlink.limits), None))
                except Exception as exc:
                    out.append((None, f"{DECODE_FAILED}: {exc}"))
            return out

        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(self.mlink.executor("decode"), decode_all)
        for (event, _), (_, problem) in zip(items, decoded, strict=True):
            if problem is not None:  # kept for inspection; the frame still gets a result
                await self.dead.send(event, STAGE, problem)
        return decoded

    def hold_for_links(self) -> None:
        """Once the frames this worker planned and the ones already fetched for it make up its
        warm-up, stop fetching frames until the first links arrive (for as long as
        :func:`~mlink.operators.warmup_hold.hold_over` allows): a backlog then waits in Kafka
        for the budgeted plan instead of running every model while the links train. Fetching
        is paused rather than the agent blocked, because faust delivers every topic through one
        conductor and a blocked agent would also starve the trainer of the samples it needs.
        Frames fetched before the pause still run as warm-up, hence counting them; if they fall
        short (redeliveries, bad records), fetching resumes."""
        mlink, links = self.mlink, self.mlink.settings.links
        if (
            self.holding
            or not links.hold_s
            or not mlink.state.warming_up
            or self.warmup_planned + self.queued() < self.hold_at
        ):
            return
        if refuses_newest_plan(mlink):  # plans exist, for other models: none comes for this one
            self._say_refused()
            return
        consumer = self.app.consumer
        paused = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        self.holding = True
        mlink.prom.held_for_links.set(1)
        log.info(
            "planned %d warm-up frames, %d more fetched; waiting for the first links (paused %s)",
            self.warmup_planned - self.warmup_base,
            self.queued(),
            sorted(paused),
        )

        async def release() -> None:
            started, idle, told = time.monotonic(), 0, False
            epoch = mlink.state.epoch  # a new plan that warms up again (a relearn) starts over:
            try:  # its warm-up is counted anew, and its trainer waits for frames from it
                while (
                    mlink.state.warming_up
                    and mlink.state.epoch == epoch
                    and not refuses_newest_plan(mlink)
                    and not hold_over(time.monotonic(), started, links.hold_s, mlink.training)
                ):
                    training = mlink.training.since is not None
                    if training and not told and time.monotonic() - started >= links.hold_s:
                        told = True
                        log.info("still training the first links here; holding until they come")
                    await _fetching(consumer, paused, on=False)  # again: a rebalance resumes
                    planned = self.warmup_planned
                    await asyncio.sleep(0.2)
                    starved = self.warmup_planned < self.hold_at and not self.queued()
                    idle = idle + 1 if starved and planned == self.warmup_planned else 0
                    if idle >= 2:  # the fetched frames did not complete the warm-up
                        log.info(
                            "%d warm-up frames planned; fetching more", planned - self.warmup_base
                        )
                        break
            finally:
                await _fetching(consumer, paused, on=True)
                self.holding = False
                mlink.prom.held_for_links.set(0)
                mlink.metrics["held_for_links_s"] += round(time.monotonic() - started, 3)
            if refuses_newest_plan(mlink):
                self._say_refused()
            elif (
                mlink.state.warming_up
                and mlink.state.epoch == epoch
                and self.warmup_planned >= self.hold_at
            ):  # no links yet: more warm-up data, then wait again
                log.warning(
                    "no links after %.0f s; planning more warm-up frames",
                    time.monotonic() - started,
                )
                self.hold_at = self.warmup_planned + max(1, links.warmup_frames // 4)

        self.releaser = asyncio.ensure_future(release())

    def _say_refused(self) -> None:
        """Once per newest plan refused: why this worker runs every model and does not hold
        (a rolling restart onto a config with other models stalled its cameras 60 s at a
        time, for want of links its group's controller would never train for it)."""
        heard = self.mlink.control_log.epoch_heard  # type: ignore[attr-defined]
        if heard == self.refused_told:
            return
        self.refused_told = heard
        log.warning(
            "this worker refused the pipeline's newest plan (epoch %d; the log's 'skipped' or "
            "'skipping control message' lines say why), so it runs every model on its frames, "
            "without the warm-up hold, until a plan it can use comes: workers on another config "
            "hold the controller. Restart every worker on the same config",
            heard,
        )

    async def run(
        self, events: Sequence[Any], reader: FrameReader
    ) -> list[tuple[Any, FrameResult]]:
        mlink = self.mlink
        items = await self.frames(events, reader)
        if not items:
            return []
        await mlink.loaded()  # the plan's links, loading since the replay: usable by this plan?
        warming = mlink.state.warming_up
        plans = [mlink.plan(frame.seq) for _, frame in items]  # planned just before running
        schedule = mlink.state.schedule
        mlink.metrics["frames_planned"] += len(items)
        mlink.prom.frames.inc(len(items))
        mlink.prom.in_flight.set(len(items))
        if warming:
            if mlink.state.epoch != self.warmup_epoch:  # links lost: a new warm-up (relearn)
                self.warmup_epoch = mlink.state.epoch
                self.warmup_base = self.warmup_planned
                self.hold_at = self.warmup_planned + mlink.settings.links.warmup_frames
                self.warmup_failures.clear()
            self.warmup_planned += len(items)
            self.hold_for_links()
        decoded = await self.images(items)
        jobs = [
            (image, plan.active)
            for (image, _), plan in zip(decoded, plans, strict=True)
            if image is not None
        ]
        done = await run_planned(mlink, jobs)
        gated = iter(await run_cascades(mlink, schedule, jobs, done))
        ran = iter(done)
        works = []
        for (_, frame), plan, (image, problem) in zip(items, plans, decoded, strict=True):
            if image is None:
                outcomes = {m: Executed(None, None, problem) for m in plan.active}
            else:
                outcomes = next(ran)
                if extra := next(gated):  # a cascade ran them: they are expected like the rest
                    plan = dataclasses.replace(plan, active=tuple(sorted({*plan.active, *extra})))
            works.append(
                FrameWork(
                    frame.frame_id, frame.stream_id, frame.seq, frame.timestamp, plan, outcomes
                )
            )
        results = frame_results(mlink, works, schedule)
        if warming:
            # a warm-up frame on which a model failed is no training sample: it does not count
            # towards the warm-up, or the hold would wait hold_s for samples that never come
            # (one model failing on a warm-up frame held every frame 60 s, a broken one for good)
            unusable = [r for r in results if not is_training_sample(r)]
            self.warmup_planned -= len(unusable)
            mlink.metrics["warmup_frames_unusable"] += len(unusable)
            self.warmup_failures.add(unusable)
            samples = self.warmup_planned - self.warmup_base
            self.warmup_failures.say(samples, mlink.settings.links.warmup_frames)
        return [(event, result) for (event, _), result in zip(items, results, strict=True)]


def attach_frame_operator(
    app: faust.App,
    mlink: MLink,
    *,
    source: faust.TopicT | None = None,
    reader: FrameReader = read_frame_record,
) -> Any:
    """Attach the fused planner + model operators + link operator to ``app``.

    ``source`` defaults to the pipeline's frames topic (any topic of frames works, e.g. a
    camera topic, with a ``reader`` for its format). Returns the faust agent.
    """
    names = mlink.names
    results_t = Outbox(app, mlink, names.results)
    samples_t = Outbox(app, mlink, names.samples)
    dead = dead_letters(app, mlink)
    settings = mlink.settings
    source = source if source is not None else raw_topic(app, names.frames)
    batch = FrameBatch(mlink, dead, app, set(source.topics))

    if not hasattr(mlink, "control_log"):  # plans come from the replayed control log
        attach_control_replay(app, mlink)

    async def frame_operator(stream: faust.StreamT) -> None:
        batch.queued = lambda: _buffered(stream)
        if not mlink.event("models").is_set():
            await mlink.build_models()
        await mlink.ready()
        answered = acks_when_answered(stream)  # a batch a stop cuts short is not committed
        async for events in stream.take_events(settings.batch_size, within=settings.batch_wait_s):
            async with dead.guard(list(events), STAGE):
                try:
                    for event, result in await batch.run(events, reader):
                        await emit(event, result)
                finally:  # answered (or dead-lettered): an idle worker has none in flight
                    mlink.prom.in_flight.set(0)
            answered.update(id(e) for e in events)  # not reached when a stop cancels the batch

    async def emit(event: Any, result: FrameResult) -> None:
        async with dead.guard(event, STAGE):
            value = encode_record(result)
            key = result.stream_id.encode()
            await results_t.send(key, value)
            if is_training_sample(result):
                await samples_t.send(key, value)
            mlink.completed.add(record_position(event))
            record_result(mlink, result)

    frame_operator.__name__ = "frame_operator"
    return app.agent(
        source,
        name=f"{settings.name}-frame-operator",
    )(count_crashes(mlink, "frame-operator")(frame_operator))
