"""The faust app of one MLink-stream worker: thin agents around the pure operator logic.

Data flows one way::

    frames --planner--> planned --model operators--> outputs --link operator--> results
                 \\__________ plan notices __________/                \\--> samples --trainer
    control <--controller (budget, link versions)        every worker replays control

Start order inside a worker (faust starts agents together, so the order is enforced by waiting):
the control replay catches up first; only then does the planner stamp frames, so a restarted
worker never plans from an empty state. Stop order is the reverse (faust stops agents before the
producer, which flushes).

Every agent decodes records itself from raw bytes: anything it cannot read or validate goes to the
dead-letter topic with the reason, topic, partition and offset, and the agent carries on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from mlink.deploy.config import PipelineConfig
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.selection import InfeasibleBudget
from mlink.linkstore.store import LinkStore, StoreError
from mlink.operators.controller import config_budget, decide, load_links
from mlink.operators.fetch_wait import cap_fetch_wait
from mlink.operators.joiner import JoinBuffer, PendingFrame, assemble_result, is_training_sample
from mlink.operators.live import LiveAgreement, probe_agreement
from mlink.operators.model_runner import ModelRunner
from mlink.operators.state import ControlState
from mlink.operators.trainer import LinkTrainer
from mlink.topics.codec import decode_any_record, decode_record, encode_record
from mlink.topics.frames import decode_frame
from mlink.topics.records import (
    ControlMessage,
    DeadLetter,
    DecodeError,
    Frame,
    FrameResult,
    ModelOutput,
    PlanNotice,
)
from mlink.topics.specs import SpecError

log = logging.getLogger("mlink.worker")
LIVE_REPORT_EVERY = 5  # probe frames per live-agreement report on the control topic
METRICS_EVERY_S = 30.0
EMPTY = np.zeros(0, dtype=np.float32)


class Pipeline:
    """Per-process state shared by the agents: control state, models, links, metrics."""

    def __init__(self, config: PipelineConfig, bootstrap: str) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.names = config.topics.names()
        self.specs = config.specs()
        self.models = config.model_names
        self.state = ControlState(self.models, config.links.probe_every)
        self.store = LinkStore(config.links.store)
        self.metrics: Counter[str] = Counter()
        self.completed: OrderedDict[str, None] = OrderedDict()
        self.images: OrderedDict[str, np.ndarray] = OrderedDict()
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.runners: dict[str, ModelRunner] = {}
        self.control_ready: asyncio.Event | None = None
        self.models_ready: asyncio.Event | None = None
        self.controller_epoch = 0
        self.trainer = LinkTrainer(
            self.specs,
            self.store,
            config.links.train_config(),
            config.links.warmup_frames,
            config.links.retrain_every,
            config.links.ensemble,
        )

    # -- shared helpers ---------------------------------------------------------------------
    def ready_event(self) -> asyncio.Event:
        if self.control_ready is None:
            self.control_ready = asyncio.Event()
        return self.control_ready

    def models_event(self) -> asyncio.Event:
        if self.models_ready is None:
            self.models_ready = asyncio.Event()
        return self.models_ready

    async def build_models(self) -> None:
        """Build every model (in parallel, off the loop) before any frame is planned, so a slow
        factory (loading weights, fitting) never counts against a frame's output deadline."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await asyncio.gather(
            *(loop.run_in_executor(self.executor(m), self.runner, m) for m in self.models)
        )
        log.info("built %d models in %.1f s", len(self.models), time.perf_counter() - started)
        self.models_event().set()

    def executor(self, name: str) -> ThreadPoolExecutor:
        """One thread per model: models run off the event loop so heartbeats keep flowing."""
        if name not in self.executors:
            self.executors[name] = ThreadPoolExecutor(1, thread_name_prefix=f"mlink-{name}")
        return self.executors[name]

    def runner(self, name: str) -> ModelRunner:
        if name not in self.runners:
            cfg = self.config.model(name)
            self.runners[name] = ModelRunner(name, cfg.build(), cfg.spec, cfg.batch)
        return self.runners[name]

    def image(self, frame: Frame) -> np.ndarray:
        """Decoded pixels, cached so the models of one worker decode each frame once."""
        cached = self.images.get(frame.frame_id)
        if cached is None:
            cached = decode_frame(frame)
            self.images[frame.frame_id] = cached
            while len(self.images) > 512:
                self.images.popitem(last=False)
        return cached

    def linkset(self, version: int | None) -> LinkSet | None:
        if version is None:
            return None
        try:
            return load_links(self.store, version).linkset
        except StoreError as exc:
            log.error("cannot load link version %s: %s", version, exc)
            return None

    def mark_completed(self, frame_id: str) -> None:
        self.completed[frame_id] = None
        while len(self.completed) > 200_000:
            self.completed.popitem(last=False)


def build_app(config: PipelineConfig, bootstrap: str) -> faust.App:
    """A faust app running every MLink operator of ``config`` against ``bootstrap``."""
    pipe = Pipeline(config, bootstrap)
    rt = config.runtime
    cap_fetch_wait()
    app = faust.App(
        config.name,
        broker=f"kafka://{bootstrap}",
        broker_session_timeout=rt.session_timeout_s,
        broker_heartbeat_interval=min(3.0, rt.session_timeout_s / 3),
        web_enabled=False,
        store="memory://",
        topic_partitions=config.topics.partitions,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
    )
    app.pipeline = pipe  # type: ignore[attr-defined]
    names = pipe.names

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    frames_t, planned_t, outputs_t = topic(names.frames), topic(names.planned), topic(names.outputs)
    results_t, control_t = topic(names.results), topic(names.control)
    samples_t, dead_t = topic(names.samples), topic(names.dead_letter)

    async def dead_letter(event: Any, stage: str, reason: object) -> None:
        message = event.message
        key = event.key if isinstance(event.key, bytes) else None
        value = event.value if isinstance(event.value, bytes) else b""
        record = DeadLetter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=key,
            value=value,
            reason=str(reason),
            stage=stage,
            at=time.time(),
        )
        pipe.metrics["dead_letters"] += 1
        log.warning(
            "dead letter from %s at %s[%s]@%s: %s",
            stage,
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        await dead_t.send(key=key, value=encode_record(record))

    @app.task
    async def build_models() -> None:
        await pipe.build_models()

    # -- control replay: every worker, the whole control topic -----------------------------
    @app.task
    async def replay_control() -> None:
        ready = pipe.ready_event()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=200
        )
        await consumer.start()
        try:
            tp = TopicPartition(names.control, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            give_up = time.monotonic() + 10.0  # a broker's end offset can overshoot (Tansu)
            if end == 0:
                ready.set()
            while True:
                batches = await consumer.getmany(tp, timeout_ms=500)
                for message in batches.get(tp, []):
                    try:
                        control = decode_record(message.value, ControlMessage)
                        if pipe.state.apply(control):
                            log.info(
                                "now at epoch %d: active=%s links=v%s",
                                pipe.state.epoch,
                                list(pipe.state.active),
                                pipe.state.link_version,
                            )
                    except (DecodeError, ValueError) as exc:
                        log.warning(
                            "ignoring bad control message at offset %s: %s", message.offset, exc
                        )
                if not ready.is_set():
                    caught_up = await consumer.position(tp) >= end
                    if caught_up or time.monotonic() > give_up:
                        if not caught_up:
                            log.warning("control replay stopped short of offset %d", end)
                        ready.set()
        finally:
            await consumer.stop()

    # -- planner -------------------------------------------------------------------------------
    @app.agent(frames_t, name=f"{config.name}-planner")
    async def planner(stream: faust.StreamT) -> None:
        await pipe.ready_event().wait()
        await pipe.models_event().wait()
        async for event in stream.events():
            try:
                frame = decode_record(event.value, Frame)
            except DecodeError as exc:
                await dead_letter(event, "planner", exc)
                continue
            plan = pipe.state.plan(frame.seq)
            notice = PlanNotice(
                frame_id=frame.frame_id,
                stream_id=frame.stream_id,
                seq=frame.seq,
                plan=plan,
                timestamp=frame.timestamp,
                planned_at=time.time(),
            )
            key = frame.frame_id.encode()
            await outputs_t.send(key=key, value=encode_record(notice))
            stamped = dataclasses.replace(frame, plan=plan)
            await planned_t.send(key=frame.stream_id.encode(), value=encode_record(stamped))
            pipe.metrics["frames_planned"] += 1

    # -- model operators -----------------------------------------------------------------------
    def model_agent(name: str, reports_bad_input: bool) -> None:
        async def run_model(stream: faust.StreamT) -> None:
            loop = asyncio.get_running_loop()
            await pipe.models_event().wait()
            runner = pipe.runners[name]
            async for events in stream.take_events(rt.batch_size, within=rt.batch_wait_s):
                todo: list[tuple[Frame, np.ndarray]] = []
                for event in events:
                    try:
                        frame = decode_record(event.value, Frame)
                    except DecodeError as exc:
                        if reports_bad_input:
                            await dead_letter(event, "model-operator", exc)
                        continue
                    if frame.plan is None or name not in frame.plan.active:
                        continue  # inactive on this frame: never run
                    try:
                        todo.append((frame, pipe.image(frame)))
                    except DecodeError as exc:
                        # the frame entered, so it still gets a (degraded) result; the bad
                        # bytes are kept in the dead-letter topic, reported once per worker
                        if reports_bad_input:
                            await dead_letter(event, "model-operator", exc)
                        await send_output(frame, EMPTY, 0.0, f"frame decode failed: {exc}")
                if not todo:
                    continue
                outcomes = await loop.run_in_executor(
                    pipe.executor(name), runner.run, [image for _, image in todo]
                )
                for (frame, _), outcome in zip(todo, outcomes, strict=True):
                    output = outcome.output if outcome.output is not None else EMPTY
                    await send_output(frame, output, outcome.elapsed_ms, outcome.error)
                pipe.metrics[f"executed:{name}"] += len(todo)

        async def send_output(frame: Frame, output: np.ndarray, ms: float, error: str | None):
            record = ModelOutput(
                frame_id=frame.frame_id,
                stream_id=frame.stream_id,
                seq=frame.seq,
                model=name,
                output=output,
                epoch=frame.plan.epoch if frame.plan else 0,
                elapsed_ms=ms,
                produced_at=time.time(),
                error=error,
            )
            if error:
                log.warning("model %s failed on %s: %s", name, frame.frame_id, error)
            await outputs_t.send(key=frame.frame_id.encode(), value=encode_record(record))

        run_model.__name__ = f"run_{name}"
        app.agent(planned_t, name=f"{config.name}-model-{name}")(run_model)

    for i, model_name in enumerate(pipe.models):
        model_agent(model_name, reports_bad_input=i == 0)

    # -- link operator (joiner) ----------------------------------------------------------------
    def check_output(record: ModelOutput) -> str | None:
        if record.model not in pipe.specs:
            return f"unknown model {record.model!r}; this pipeline has {pipe.models}"
        if record.error is not None:
            return None
        try:
            pipe.specs[record.model].validate(record.output, model=record.model)
        except SpecError as exc:
            return f"invalid output: {exc}"
        return None

    async def finish(pending_frame: PendingFrame, timed_out: bool) -> None:
        plan = pending_frame.notice.plan if pending_frame.notice else None
        linkset = pipe.linkset(plan.link_version if plan else pipe.state.link_version)
        result = assemble_result(pending_frame, pipe.models, linkset, time.time(), timed_out)
        value = encode_record(result)
        key = pending_frame.frame_id.encode()
        await results_t.send(key=key, value=value)
        if is_training_sample(result, pending_frame.notice):
            await samples_t.send(key=key, value=value)
        pipe.metrics["results"] += 1
        pipe.metrics["degraded"] += int(result.degraded)
        for r in result.results:
            pipe.metrics[f"{r.status}:{r.model}"] += 1
        pipe.mark_completed(pending_frame.frame_id)

    joins = JoinBuffer()

    @app.agent(outputs_t, name=f"{config.name}-link-operator")
    async def link_operator(stream: faust.StreamT) -> None:
        # Manual acks: a frame's records are acked only once its result is out, so the committed
        # offset never passes an unfinished frame; after a crash the new owner replays them.
        manual = joins.stream = stream.noack()
        async for event in manual.events():
            try:
                record = decode_any_record(event.value)
                if not isinstance(record, PlanNotice | ModelOutput):
                    raise DecodeError(f"unexpected {type(record).__name__} on the outputs topic")
            except DecodeError as exc:
                await dead_letter(event, "link-operator", exc)
                await manual.ack(event)
                continue
            if isinstance(record, ModelOutput):
                problem = check_output(record)
                if problem:  # never joined: a stray bad record must not take a model's slot
                    await dead_letter(event, "link-operator", problem)
                    await manual.ack(event)
                    continue
            if record.frame_id in pipe.completed:
                pipe.metrics["late_records"] += 1
                await manual.ack(event)
                continue
            state = joins.add(record, event, time.time())
            if state.complete:
                await finish(state, timed_out=False)
                for held in joins.pop(record.frame_id):
                    await manual.ack(held)

    @app.timer(interval=max(0.2, rt.output_timeout_s / 5))
    async def expire_pending() -> None:
        for frame_id in joins.overdue(time.time(), rt.output_timeout_s):
            state = joins.frames[frame_id]
            held = joins.pop(frame_id)
            if state.notice is None:
                # outputs for a frame no planner ever saw: not a frame that entered the pipeline
                for event in held:
                    await dead_letter(event, "link-operator", f"no plan for frame {frame_id!r}")
            else:
                await finish(state, timed_out=True)
            for event in held:
                await joins.stream.ack(event)

    @app.timer(interval=METRICS_EVERY_S)
    async def log_metrics() -> None:
        """Counters of this worker (frames planned, executions per model, results, degraded,
        dead letters, late records), in the worker log."""
        if pipe.metrics:
            log.info("metrics: %s", dict(sorted(pipe.metrics.items())))

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        """Their records are not acked, so whoever owns the partitions next replays them."""
        dropped = joins.drop_partitions(set(revoked))
        if dropped:
            log.info("dropped %d unfinished frames of revoked partitions", dropped)

    # -- trainer -------------------------------------------------------------------------------
    live = LiveAgreement()

    async def report_live_agreement(result: FrameResult) -> None:
        """On a probe frame under a budgeted plan, score what the plan would have synthesized."""
        state = pipe.state
        linkset = pipe.linkset(state.link_version)
        if linkset is None or not state.active:
            return
        live.add((state.epoch, state.link_version), probe_agreement(result, linkset, state.active))
        if live.probes % LIVE_REPORT_EVERY:
            return
        message = ControlMessage(
            kind="agreement",
            epoch=state.epoch,
            issued_at=time.time(),
            link_version=state.link_version,
            extra={"live_agreement": live.means(), "probes": live.probes},
        )
        log.info(
            "live agreement at epoch %d over %d probes: %s",
            state.epoch,
            live.probes,
            {m: round(v, 3) for m, v in live.means().items()},
        )
        await control_t.send(key=b"agreement", value=encode_record(message))

    @app.agent(samples_t, name=f"{config.name}-trainer")
    async def trainer(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            try:
                result = decode_record(event.value, FrameResult)
            except DecodeError as exc:
                await dead_letter(event, "trainer", exc)
                continue
            if pipe.trainer.add(result):
                await report_live_agreement(result)
            if not pipe.trainer.ready():
                continue
            started = time.perf_counter()
            version = await loop.run_in_executor(
                pipe.executor("trainer"), pipe.trainer.train_and_save
            )
            log.info(
                "trained links v%d on %d samples in %.1f s",
                version,
                len(pipe.trainer.samples),
                time.perf_counter() - started,
            )
            announce = ControlMessage(
                kind="link_version",
                epoch=pipe.state.epoch,
                issued_at=time.time(),
                link_version=version,
            )
            await control_t.send(key=b"link_version", value=encode_record(announce))

    # -- controller ----------------------------------------------------------------------------
    @app.agent(control_t, name=f"{config.name}-controller")
    async def controller(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        budget = config_budget(config)
        async for event in stream.events():
            try:
                message = decode_record(event.value, ControlMessage)
            except DecodeError as exc:
                await dead_letter(event, "controller", exc)
                continue
            pipe.controller_epoch = max(pipe.controller_epoch, message.epoch)
            if message.kind == "budget":
                budget = dict(message.budget)
            elif message.kind != "link_version":
                continue
            version = pipe.store.current()
            if version is None:
                log.info("budget %s noted; waiting for the first links", budget)
                continue
            try:
                links = await loop.run_in_executor(
                    pipe.executor("controller"), load_links, pipe.store, version
                )
                epoch = max(pipe.controller_epoch, pipe.state.epoch) + 1
                decision = await loop.run_in_executor(
                    pipe.executor("controller"), decide, config, links, budget, epoch
                )
            except (InfeasibleBudget, StoreError, ValueError) as exc:
                log.error("controller keeps the current plan: %s", exc)
                continue
            pipe.controller_epoch = epoch
            await control_t.send(key=b"active_set", value=encode_record(decision))

    return app
