"""The trainer agent: probe-frame results in, link versions and live agreement out.

It consumes the single-partition samples topic (so one worker trains), buffers every complete
probe result, trains links once the warm-up is collected (and again every ``retrain_every`` new
probes), saves a link-store version and announces it on the control topic. On every probe frame
under a budgeted plan it also scores what the plan would have synthesized against the real
outputs: the live agreement per model, published on the control topic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from mlink.linkstore.liveguard import DECAY, option_keys
from mlink.operators.live import LiveAgreement, probe_agreement
from mlink.operators.relearn import relearning
from mlink.operators.runtime import MLink
from mlink.operators.sample_history import SampleHistory, read_samples
from mlink.operators.training_process import (
    TrainingFailed,
    TrainingJob,
    TrainingProcess,
    TrainingSettings,
    TrainingStopped,
    run_until_stopped,
)
from mlink.operators.wiring import Outbox, count_crashes, dead_letters, raw_topic, verified_value
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.control import QUICK_KEY
from mlink.topics.pipeline_header import other_writer
from mlink.topics.records import ControlMessage, FrameResult

__all__ = ["announce_pending", "attach_trainer"]

log = logging.getLogger("mlink.trainer")


async def announce_pending(pending: list[int], send: Callable[[int], Awaitable[None]]) -> bool:
    """Announce the saved link versions in ``pending``, oldest first, removing each one sent;
    False when a send failed (the rest stay pending). The trainer counts a version as trained
    once it is saved, so an announcement lost to a broker hiccup would leave every worker
    waiting for links that exist: the trainer sends it again with its next sample."""
    while pending:
        try:
            await send(pending[0])
        except Exception:
            log.exception(
                "link version %d is saved but its announcement failed; sending it again with "
                "the next sample",
                pending[0],
            )
            return False
        pending.pop(0)
    return True


def attach_trainer(app: faust.App, mlink: MLink) -> Any:
    """Attach the trainer agent to ``app`` (on the samples topic)."""
    names, settings = mlink.names, mlink.settings
    samples_t = raw_topic(app, names.samples)
    control_t = Outbox(app, mlink, names.control)
    dead = dead_letters(app, mlink)
    live = LiveAgreement(DECAY if settings.links.stream else 1.0)
    trainer = mlink.trainer
    process: list[TrainingProcess] = []

    def training_process() -> TrainingProcess:
        """One warm training child per worker, started with the first sample."""
        if not process:
            child = TrainingSettings(processes=settings.links.training_processes)
            process.append(TrainingProcess(child))
            mlink.on_close(lambda: process[0].close(wait=False))
        return process[0]

    retry = {"added": 0, "at": 0, "backoff": 10}  # after a failure, retry with more data only
    unannounced: list[int] = []  # saved, but the announcement failed: sent again, never lost
    quick_versions: set[int] = set()  # quick first links (announced as such)
    stopping = threading.Event()  # set when the worker stops: a training thread ends early
    mlink.on_close(stopping.set)

    async def report_live(result: FrameResult) -> None:
        state = mlink.state
        if result.epoch != state.epoch:  # planned under another plan: its scores are not ours
            mlink.metrics["probes_of_another_plan"] += 1
            return
        shadow = {r.model: r.agreement for r in result.results if r.agreement is not None}
        if shadow:  # stream synthesis scored the probe where it ran (what the plan would make)
            scores = {m: float(v) for m, v in shadow.items()}
        else:
            loaded = mlink.links(state.link_version)
            if loaded is None or not state.active:
                return
            scores = probe_agreement(result, loaded.linkset, state.active)
        options = option_keys(state.schedule) if state.schedule is not None else None
        factors = state.plan_extra.get("corrections")
        live.add((state.epoch, state.link_version), scores, options, factors)
        if live.probes % settings.live_report_every:
            return
        message = ControlMessage(
            kind="agreement",
            epoch=state.epoch,
            issued_at=time.time(),
            link_version=state.link_version,
            extra=live.report(),
        )
        log.info(
            "live agreement at epoch %d over %d probes: %s",
            state.epoch,
            live.probes,
            {m: round(v, 3) for m, v in live.means().items()},
        )
        await control_t.send(b"agreement", encode_record(message))

    async def run_job(job: TrainingJob) -> int:
        """Train and save ``job`` (it names the store): in the training child, or on the
        trainer's thread."""
        if settings.links.train_in_child:
            outcome = await training_process().atrain(job)
        else:  # ends after the epoch under way once the worker stops (a thread cannot be killed)
            outcome = await asyncio.get_running_loop().run_in_executor(
                mlink.executor("trainer"), run_until_stopped, job, stopping
            )
        if outcome.version is None:  # a job that names a store is saved where it trains
            raise TrainingFailed("the training returned links it did not save")
        return outcome.version

    async def train() -> None:
        # above every version the control log named, even in a store that starts from 1 again
        state = mlink.state  # and above the lost version a relearn names (it may be a pin)
        lost = relearning(state.plan_extra, state.link_version, state.latest_links)
        trainer.number_after = max(trainer.number_after, state.latest_links or 0, lost or 0)
        # a copy: the agent adds the samples that come while it trains
        job = TrainingJob.from_trainer(trainer)
        taken, size = trainer.new_since_training, len(trainer.samples)
        cold = not trainer.trained_versions and state.latest_links is None
        quick = job.quick(settings.links.first_epochs) if cold and settings.links.stream else None
        if quick is not None:  # the hold ends with these; the full links replace them
            log.info(
                "training the first links on %d samples at %d epochs; the full training "
                "follows at once",
                size,
                quick.config.epochs,
            )
            await train_pass(quick, size, 0, quick=True)
        log.info("training links on %d samples", size)
        await train_pass(job, size, taken, quick=False)

    async def train_pass(job: TrainingJob, size: int, taken: int, *, quick: bool) -> None:
        """Train, save and announce ``job``; ``taken``: the new samples it trains on."""
        started = time.perf_counter()
        mlink.training.start(time.monotonic())  # a warm-up hold on this worker waits for it
        version = None
        try:
            version = trainer.saved(await run_job(job), taken, quick=quick)
        except TrainingStopped:  # the worker stops: its training process was closed under it
            log.info("link training on %d samples stopped with the worker", size)
            raise  # and no training after it (a new one would start a new training process)
        except Exception:  # e.g. a full disk: never retried on every sample
            mlink.metrics["training_failures"] += 1
            if quick:  # the full training of the same samples comes next anyway
                log.exception("the quick first links failed; training the full ones")
                return
            retry["at"] = retry["added"] + retry["backoff"]
            retry["backoff"] = min(retry["backoff"] * 2, 1000)
            log.exception("link training failed; retrying after new samples arrive")
            return
        finally:
            mlink.training.stop(time.monotonic(), saved=version is not None)
        if not quick:
            retry["backoff"] = 10
        log.info(
            "trained %slinks v%d on %d samples in %.1f s",
            "the quick first " if quick else "",
            version,
            size,
            time.perf_counter() - started,
        )
        if quick:
            quick_versions.add(version)
        unannounced.append(version)
        await announce()

    def due() -> bool:
        relearn = relearning(
            mlink.state.plan_extra, mlink.state.link_version, mlink.state.latest_links
        )
        return trainer.ready(relearn) and retry["added"] >= retry["at"]

    async def train_while_due() -> None:
        """Train until the samples that came during a training do not call for another: one
        training at a time, each on every sample buffered when it starts. The agent goes on
        taking samples meanwhile, so a backlog of probes is read (and scored live) at once,
        not three at a time between trainings."""
        try:
            while due():
                await train()
        except TrainingStopped:  # the worker stops (logged where it stopped)
            return

    running: list[asyncio.Task[None]] = []

    def start_training() -> None:
        if running and not running[0].done():
            return  # the one under way starts the next itself if the samples call for it
        running[:] = [asyncio.ensure_future(train_while_due())]
        running[0].add_done_callback(report_crash)

    def report_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # train() catches its own
            mlink.metrics["training_failures"] += 1
            log.error(
                "link training stopped; the next sample starts it again", exc_info=task.exception()
            )

    async def send_announcement(version: int) -> None:
        message = ControlMessage(
            kind="link_version",
            epoch=mlink.state.epoch,
            issued_at=time.time(),
            link_version=version,
            extra={QUICK_KEY: True} if version in quick_versions else {},
        )
        await control_t.send(b"link_version", encode_record(message))

    announcing = asyncio.Lock()  # the agent and a training that ends may both announce

    async def announce() -> None:
        async with announcing:
            await announce_unlocked()

    async def announce_unlocked() -> None:
        if not unannounced:
            return
        if not await announce_pending(unannounced, send_announcement):
            mlink.metrics["announce_failures"] += 1
            return
        keep = settings.links.keep_versions
        if keep:  # every version is announced: the old ones can go (the store's lock is held)
            try:
                state = mlink.state  # a pinned version is not the newest, and must stay
                protect = {v for v in (state.pinned_links, state.link_version) if v is not None}
                gone = await asyncio.get_running_loop().run_in_executor(
                    mlink.executor("trainer"), mlink.store.prune, keep, protect
                )
            except Exception:  # a store that cannot delete keeps its versions; links still work
                log.exception("could not delete old link versions (keeping %d)", keep)
                return
            if gone:
                log.info("deleted link versions %s (keeping the %d newest)", gone, keep)

    history = SampleHistory()

    async def read_back(upto: int) -> None:
        """The samples before offset ``upto``: another worker's (or none), not this one's."""
        try:
            read, added, passed = await read_samples(
                app, mlink, upto, trainer.samples.maxlen or 0, lambda r: trainer.add(r, new=False)
            )
        except Exception:  # the history is a head start, not a must
            log.warning("could not read back the samples before offset %d", upto, exc_info=True)
            return
        mlink.metrics["samples_read_back"] += added
        log.info(
            "read back %d samples before offset %d that this worker had not read (another "
            "worker's, or this one's before a restart), %d of them new to its buffer (%d passed "
            "over): %d buffered",
            read,
            upto,
            added,
            passed,
            len(trainer.samples),
        )

    async def trainer_agent(stream: faust.StreamT) -> None:
        await mlink.event("control").wait()
        try:
            async for event in stream.events():
                if history.gap_before(event.message.offset):
                    await read_back(event.message.offset)
                async with dead.guard(event, "trainer"):
                    await announce()  # one that failed before: before anything else
                    value = verified_value(mlink, event)
                    if other_writer(event.headers, settings.name):  # another pipeline's
                        mlink.metrics["samples_of_other_pipelines"] += 1  # (its control says so)
                        continue
                    result = decode_record(value, FrameResult, limits=mlink.limits)
                    mlink.metrics["samples_received"] += 1
                    state = mlink.state  # the newest version, here or before a handover
                    trainer.announced(state.latest_links, state.latest_quick)
                    if trainer.add(result):
                        retry["added"] += 1
                        if settings.links.train_in_child and not trainer.trained_versions:
                            training_process().warm()  # torch imported while the warm-up runs
                        await report_live(result)
                    if due():
                        start_training()
        except asyncio.CancelledError:  # the worker stops (a crash leaves a training to end)
            for task in running:
                task.cancel()
            raise

    trainer_agent.__name__ = "trainer"
    return app.agent(samples_t, name=f"{settings.name}-trainer")(
        count_crashes(mlink, "trainer")(trainer_agent)
    )
