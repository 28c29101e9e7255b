"""Every worker's control replay (the one controller that decides: :mod:`.controller_agent`).

The control topic (one partition) is the single source of truth: active sets with their epoch,
link versions, budget commands and live agreement. Every worker replays it from the beginning
into :class:`~mlink.operators.state.ControlState` with its own consumer (outside the consumer
group, so every worker sees all of it), and plans frames from that state only once the replay
has caught up. The controller is a group-managed agent on the same topic, so exactly one worker
decides; it decides from the replayed state (the budget, the latest link version, the epoch),
never from variables of its own, so a controller that fails over decides as the old one would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from mlink.operators.leave_group import leave_group_from_generation_zero
from mlink.operators.prefix_owner import ForeignWriters
from mlink.operators.runtime import MLink
from mlink.operators.settings import SettingsError
from mlink.operators.stream_decision import (
    live_forecast,
    model_shares,
    plan_estimate,
    plan_promise,
    state_forecast,
)
from mlink.operators.stuck_group import watch_join_rounds
from mlink.operators.wiring import Outbox, groupless_consumer, kafka_client_kwargs
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.control import MAX_EPOCH_STEP
from mlink.topics.pipeline_header import other_writer
from mlink.topics.records import ControlMessage

__all__ = ["ControlLog", "attach_control_replay", "prefetch_links", "refuses_newest_plan"]

log = logging.getLogger("mlink.control")
REPLAY_GIVE_UP_S = 10.0  # a broker's end offset can overshoot (Tansu); never wait for ever
MAX_REASONS = 100  # distinct reasons counted while replaying; the rest as "other reasons"


class ControlLog:
    """What the replay has applied so far, so the controller can wait for a given offset."""

    def __init__(self) -> None:
        self.position = -1  # offset of the last message handled
        self.rejected: OrderedDict[int, str] = OrderedDict()  # offset -> reason
        self.changed = asyncio.Condition()
        # the highest epoch of an active set read, applied or refused: a restart on an edited
        # config refuses the plans made for the old models, and the controller's next plan
        # is numbered past them, so one epoch never names two plans in results and logs
        self.epoch_heard = 0

    def heard(self, message: ControlMessage, applied_epoch: int) -> None:
        """Note ``message``'s epoch if it is an active set within reach of the applied one
        (a forged epoch far ahead must not move the numbering)."""
        epoch = message.epoch
        plan = message.kind == "active_set" and type(epoch) is int
        if plan and applied_epoch < epoch < applied_epoch + MAX_EPOCH_STEP:
            self.epoch_heard = max(self.epoch_heard, epoch)

    async def wait_past(self, offset: int, timeout: float = 30.0) -> bool:
        """Until the replay has handled ``offset``; False after ``timeout`` seconds."""
        return await self.wait_until(lambda: self.position >= offset, timeout)

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Until ``done()`` holds, asked now and after each message the replay handles; False
        after ``timeout`` seconds."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(done), timeout)
            except TimeoutError:
                return False
        return True


def refuses_newest_plan(mlink: MLink) -> bool:
    """Whether this worker refused the newest plan on the control topic and so serves an older
    one, or none: a worker on a config with other models while workers on the old config still
    hold the controller (a rolling restart). Such a worker is not warming up, and must not hold
    its frames back for links: the links its group trains are not for it."""
    control_log = getattr(mlink, "control_log", None)
    return control_log is not None and control_log.epoch_heard > mlink.state.epoch


def _apply(mlink: MLink, message: ControlMessage) -> str | None:
    """Fold one message into the state; the reason it was rejected, or None.

    Only :meth:`ControlState.apply` decides whether a message is refused, and it refuses one
    whole. What follows an applied message refreshes this worker's own views of the state
    (gauges, the content tally, the predicted estimates): a failure there does not un-apply a
    message every worker applied alike, so it is logged and counted, the views are cleared
    (:func:`_clear_views`) and the replay carries on, as faust would kill the worker for an
    exception out of it.
    """
    try:
        outcome = mlink.state.apply(message)
    except Exception as exc:  # apply never raises; if it ever did, the replay must go on
        return f"{type(exc).__name__}: {exc}"
    if outcome.rejected:
        return outcome.reason
    try:
        _refresh_views(mlink, message, outcome.plan_changed)
    except Exception:
        mlink.metrics["control_view_failures"] += 1
        log.exception(
            "control message %r of epoch %s is applied, but this worker's views of it failed; "
            "they are cleared until the next plan",
            message.kind,
            message.epoch,
        )
        _clear_views(mlink)
    return None


def _refresh_views(mlink: MLink, message: ControlMessage, changed: bool) -> None:
    """Bring the gauges, the content tally and ``mlink.predicted`` up to an applied message."""
    prom = mlink.prom
    prom.epoch.set(mlink.state.epoch)
    prom.link_version.set(mlink.state.link_version or 0)
    prom.links_pinned.set(mlink.state.pinned_links or 0)
    if message.kind == "agreement":
        for model, value in mlink.state.live_agreement.items():
            prom.live_agreement.labels(model).set(value)
        if (forecast := state_forecast(mlink.state)) is not None:
            prom.forecast.labels("probes").set(forecast)
    if changed and message.kind == "active_set":
        _refresh_plan_views(mlink, message)


def _refresh_plan_views(mlink: MLink, message: ControlMessage) -> None:
    """The views of a new plan: its forecasts, its content tally and its predicted estimates.
    No probe has reported on it yet, so no model's live agreement is shown (an earlier plan's
    would keep an alert firing on a model this plan runs on every frame)."""
    prom = mlink.prom
    prom.live_agreement.clear()
    if "objective" not in message.extra:  # a plan with no estimate (a warm-up again, relearn)
        for basis in ("plan", "bound", "probes"):  # none left over from the plan before
            with contextlib.suppress(KeyError):
                prom.forecast.remove(basis)
    if (estimate := plan_estimate(message.extra)) is not None:
        prom.forecast.labels("plan").set(estimate)
        promise = plan_promise(message.extra)
        if promise is not None:
            prom.forecast.labels("bound").set(promise)
        else:  # a plan that promises no bound: none left over from the plan before
            with contextlib.suppress(KeyError):
                prom.forecast.remove("bound")
        # no probes under this plan yet: its forecast bound, where the plan carries one; a
        # plan the probes cannot correct (the paper's links) has none, as `mlink status` says
        # (it read as the plan's estimate, which an alert on it could never leave: an SRE)
        unprobed = promise if promise is not None else live_forecast(message.extra, {}, 0)
        if unprobed is not None:
            prom.forecast.labels("probes").set(unprobed)
        else:
            with contextlib.suppress(KeyError):
                prom.forecast.remove("probes")
    prom.content_forecast(mlink.content.plan(mlink.state.content, mlink.state.epoch))
    prom.plan_costs(message.extra)
    predicted = message.extra.get("predicted", {})
    synthesized = message.extra.get("predicted_synthesized", {})  # stream plans
    if isinstance(predicted, dict) and isinstance(synthesized, dict):
        predicted = {**predicted, **synthesized}
    mlink.predicted = model_shares(predicted, mlink.specs)
    log.info(
        "now at epoch %d: active=%s links=v%s",
        mlink.state.epoch,
        list(mlink.state.active),
        mlink.state.link_version,
    )


def _clear_views(mlink: MLink) -> None:
    """Views that failed to refresh say nothing rather than something half-replaced: no
    content tally or predicted estimates (results carry only live agreement) and no forecast
    gauges, until the next plan refreshes them. Never raises: it runs in the replay's handler."""
    mlink.predicted = {}
    mlink.content.plan(None, mlink.state.epoch)  # no table: nothing left to divide
    with contextlib.suppress(Exception):  # gauges that fail to clear stay as they are
        mlink.prom.content_forecast(None)
        mlink.prom.live_agreement.clear()
        for basis in ("plan", "bound", "probes"):
            with contextlib.suppress(KeyError):
                mlink.prom.forecast.remove(basis)
        mlink.prom.plan_costs({})


async def _say_started(control_out: Outbox, mlink: MLink) -> None:
    """One ``worker_started`` record, so that a pipeline started later on this topics.prefix
    finds this one before it has planned anything: the check above reads only what the control
    topic holds, and a pipeline still in its first warm-up had written nothing, so a second one
    started beside it and both answered every frame (stop 46's audit)."""
    message = ControlMessage(kind="worker_started", epoch=mlink.state.epoch, issued_at=time.time())
    try:
        await control_out.send(b"worker_started", encode_record(message))
    except Exception as exc:  # advisory: the pipeline works without it
        log.warning("could not announce this worker on %s: %s", control_out.name, exc)


def attach_control_replay(app: faust.App, mlink: MLink) -> ControlLog:
    """Replay the control topic into ``mlink.state`` in every worker (a background task).
    Every MLink app passes here, so here its workers are also made to leave their consumer
    group when they stop (:mod:`mlink.operators.leave_group`) and to say when the group never
    settles (:mod:`mlink.operators.stuck_group`)."""
    leave_group_from_generation_zero()
    watch_join_rounds()
    control_log = ControlLog()
    mlink.control_log = control_log  # type: ignore[attr-defined]
    topic = mlink.names.control
    own = mlink.settings.name
    foreign = ForeignWriters(own, topic)  # another pipeline on this topics.prefix
    control_out = Outbox(app, mlink, topic)

    async def replay_control() -> None:
        ready = mlink.event("control")
        consumer = groupless_consumer(app, mlink)
        await consumer.start()
        unchecked = [topic, mlink.names.samples]  # until seen: faust's agents create them
        try:
            await require_one_partition(consumer, unchecked)
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            give_up = time.monotonic() + REPLAY_GIVE_UP_S
            prefetched: int | None = None
            skipped: Counter[str] = Counter()  # reasons for the log's messages refused here
            next_check = time.monotonic()
            if end == 0:
                ready.set()
            while True:
                batches = await consumer.getmany(tp, timeout_ms=500)
                for message in batches.get(tp, []):
                    if writer := other_writer(message.headers, own):  # said once per pipeline
                        foreign.seen(writer, message.timestamp, live=ready.is_set())
                        problem = None
                    else:
                        problem = _replay_one(mlink, message)
                    if problem is not None:
                        control_log.rejected[message.offset] = problem
                        while len(control_log.rejected) > 1000:
                            control_log.rejected.popitem(last=False)
                        if ready.is_set():
                            log.warning(
                                "skipping control message at offset %s: %s",
                                message.offset,
                                problem,
                            )
                        else:  # history: one line at the end, not one per message each restart
                            known = problem in skipped or len(skipped) < MAX_REASONS
                            skipped[problem if known else "other reasons"] += 1
                    async with control_log.changed:
                        control_log.position = message.offset
                        control_log.changed.notify_all()
                if not ready.is_set():
                    caught_up = await consumer.position(tp) >= end
                    if caught_up or time.monotonic() > give_up:
                        if not caught_up:
                            log.warning("control replay stopped short of offset %d", end)
                        await foreign.check(kafka_client_kwargs(app))  # raises: in use
                        await _say_started(control_out, mlink)
                        if (version := mlink.state.link_version) is not None:
                            prefetched = version  # under way before any frame is planned:
                            prefetch_links(mlink, version)  # MLink.loaded waits for it
                        _say_skipped(skipped)
                        ready.set()
                if unchecked and time.monotonic() >= next_check:  # a metadata request
                    next_check = time.monotonic() + 5.0
                    with contextlib.suppress(KafkaError):  # a broker away: the next check
                        await require_one_partition(consumer, unchecked)
                version = mlink.state.link_version
                if ready.is_set() and version is not None and version != prefetched:
                    prefetched = version
                    prefetch_links(mlink, version)
        finally:
            await consumer.stop()

    app.task(replay_control)
    return control_log


def _say_skipped(skipped: Counter[str]) -> None:
    """One line for the messages of the log refused while replaying it: a pipeline whose
    models changed keeps the old plans and probe reports, and a line per message at every
    restart buried the log (thousands of probe reports naming a removed model)."""
    if not skipped:
        return
    common = "; ".join(f"{n} x {why}" for why, n in skipped.most_common(3))
    more = len(skipped) - 3
    log.warning(
        "skipped %d control messages of the log this worker cannot apply (made for other "
        "models, or malformed): %s%s",
        sum(skipped.values()),
        common,
        f"; and {more} other reasons" if more > 0 else "",
    )


async def require_one_partition(consumer: AIOKafkaConsumer, unchecked: list[str]) -> None:
    """Raise :class:`SettingsError` when the control or samples topic has more than one
    partition; ``unchecked`` loses the topics seen with one. Every worker replays partition 0
    of the control topic, so a plan keyed to another was never seen, and the pipeline ran
    every model forever with no error (a topic that a broker auto-created, 4 partitions on
    Tansu, because the app started before ``ensure_topics``). A topic that does not exist yet
    stays unchecked: faust's agents make a broker that auto-creates create it."""
    await consumer.topics()  # metadata for every topic
    for topic in list(unchecked):
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            continue
        unchecked.remove(topic)
        if len(partitions) > 1:
            raise SettingsError(
                f"topic {topic} has {len(partitions)} partitions; MLink needs exactly one "
                "(every worker replays partition 0). The broker probably auto-created it when "
                "the app started before the topics did: delete it (kafka-python: "
                f"KafkaAdminClient(bootstrap_servers=...).delete_topics([{topic!r}])) and "
                "create the pipeline's topics first (mlink.deploy.kafka_admin.ensure_topics, "
                "or `mlink worker`, which does)"
            )


def prefetch_links(mlink: MLink, version: int) -> asyncio.Future[Any]:
    """Load the plan's link version off the event loop as soon as the plan is known; else the
    first frame that names it loads it on the loop (reading, hashing and decoding a version
    there stalls every agent and the heartbeats). A version that fails is logged by the loader
    and remembered; frames then fall back as they would have."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(mlink.executor("links"), mlink.links, version)
    mlink.loading = {version: future}  # the newest only: frames wait for the plan's version
    return future


def _replay_one(mlink: MLink, record: Any) -> str | None:
    try:
        if mlink.signer.enabled:
            mlink.signer.verify(record.topic, record.key, record.value, record.headers or [])
        message = decode_record(record.value, ControlMessage, limits=mlink.limits)
    except Exception as exc:
        return f"undecodable: {exc}"
    control_log = getattr(mlink, "control_log", None)
    if control_log is not None:
        control_log.heard(message, mlink.state.epoch)
    problem = _apply(mlink, message)
    if control_log is not None:  # above mlink_epoch: this worker refused the newest plans
        mlink.prom.epoch_heard.set(max(control_log.epoch_heard, mlink.state.epoch))
    return problem
