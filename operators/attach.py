"""Attaching MLink to a faust app: every operator at once, or each on its own.

A user's app keeps its own agents; :func:`attach` adds MLink's beside them::

    app = faust.App("shop-cameras", broker="kafka://localhost:9092")
    mlink = MLink(Settings(name="cams", budget={"fraction": 0.33}), models)
    attach(app, mlink)

Start order inside a worker: the models are built before the worker joins its consumer group
(:mod:`mlink.operators.model_builder`); faust starts agents together, so the rest is kept by
waiting: the control replay catches up before the first frame is planned, and the trainer and
controller wait for the replay. Stop order is the reverse (faust stops agents before
the producer, which it flushes).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import faust

from mlink.operators.control_operators import attach_control_replay
from mlink.operators.controller_agent import attach_controller
from mlink.operators.early_services import MetricsServer
from mlink.operators.frame_operator import FrameReader, attach_frame_operator, read_frame_record
from mlink.operators.model_builder import attach_model_builder
from mlink.operators.relearn import CLIENT_ID_PREFIX, model_set_id
from mlink.operators.runtime import MLink
from mlink.operators.settings import Settings
from mlink.operators.trainer_operator import attach_trainer

__all__ = ["Attached", "attach", "attach_metrics", "backlog_settings"]

log = logging.getLogger("mlink.worker")


@dataclass(slots=True)
class Attached:
    """The agents :func:`attach` added (None where not asked for)."""

    frame_operator: Any
    trainer: Any
    controller: Any


def backlog_settings(settings: Settings) -> dict[str, Any]:
    """faust settings that keep a backlog in Kafka rather than in the worker:
    ``faust.App(..., **backlog_settings(settings))``. The warm-up hold pauses the frames
    partitions once the warm-up is planned, and a frame already fetched still runs every model:
    with faust's defaults (500 records a fetch, 4096 buffered) a whole backlog of 100 frames ran
    every model with a warm-up of 24 (a new user's app). Two batches keep the agent busy."""
    batch = settings.batch_size
    return {"stream_buffer_maxsize": max(4, 2 * batch), "broker_max_poll_records": batch}


def buffer_warning(app: faust.App, settings: Settings) -> str | None:
    """Why the app buffers far more frames than :func:`backlog_settings` would, or None."""
    want = backlog_settings(settings)
    have = {k: getattr(app.conf, k, None) for k in want}
    if not any(v is None or v > 4 * want[k] for k, v in have.items()):
        return None
    return (
        f"app {app.conf.id} buffers up to {have['broker_max_poll_records']} records per fetch "
        f"and {have['stream_buffer_maxsize']} per stream: a backlog fetched before the warm-up "
        "hold pauses the frames runs every model; create the app with "
        "faust.App(..., **backlog_settings(settings)) (mlink.operators) to keep it in Kafka"
    )


def _warn_about_buffers(app: faust.App, settings: Settings) -> None:
    """Logged when the worker starts, in faust's log format (at import it came before it, a bare
    line at the top of the log that an embedding user missed)."""
    why = buffer_warning(app, settings)
    if why is None:
        return

    async def warn_about_buffers() -> None:
        log.warning(why)

    app.task(warn_about_buffers)


def _name_the_model_set(app: faust.App, mlink: MLink) -> None:
    """Give the app the Kafka client id `mlink worker` gives its workers, naming its model set,
    unless the app chose one: `mlink status` tells workers on another config by it, and an app
    built as the README shows read as one (a new user's audit, stop 45)."""
    chosen = vars(app.conf).get("_broker_client_id")  # read without marking the setting used
    if isinstance(chosen, str) and chosen.startswith("faust-"):  # faust's default
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            app.conf.broker_client_id = f"{CLIENT_ID_PREFIX}{model_set_id(mlink.specs)}"


def attach_metrics(app: faust.App, mlink: MLink, lag_every_s: float = 5.0) -> None:
    """The worker's counters in its log every ``metrics_every_s`` seconds; its Prometheus
    endpoint when ``Settings.metrics_port`` is set, from the app's start (call before it
    starts); consumer lag of the partitions it reads."""
    settings = mlink.settings

    async def log_metrics() -> None:
        if mlink.metrics:
            log.info("metrics: %s", dict(sorted(mlink.metrics.items())))

    async def measure_lag() -> None:
        """From the broker's end offsets: the fetcher's cached high-water mark stands still
        while fetching is paused, so during a warm-up hold the lag read 0 while ~150 frames
        waited (an SRE's audit). Partitions this worker no longer reads lose their series."""
        consumer = app.consumer
        held = sorted(consumer.assignment())
        try:
            ends = await consumer.highwaters(*held) if held else {}
        except Exception:  # lag is advisory: a broker away must not matter
            return
        lags = {}
        for tp in held:
            try:
                position = await consumer.position(tp)
            except Exception:  # a partition moving away
                continue
            if ends.get(tp) is not None and position is not None:
                lags[(tp.topic, tp.partition)] = ends[tp] - position
        mlink.prom.set_lags(lags)

    async def refresh_health() -> None:
        """Each model's health from its tracker: a crash of an idle isolated model, or a model
        the plan no longer calls, shows without waiting for a call; and whether the plan in
        force is from links for other models."""
        mlink.prom.model_states({m: r.health().state for m, r in dict(mlink.runners).items()})
        other = mlink.state.link_version in mlink.other_models  # a rolling restart's other side
        mlink.prom.links_for_other_models.set(float(other))

    app.timer(interval=settings.metrics_every_s)(log_metrics)
    app.timer(interval=lag_every_s)(measure_lag)
    app.timer(interval=lag_every_s)(refresh_health)
    app.add_dependency(MetricsServer(mlink))  # from the start: a worker may never get partitions


def attach(
    app: faust.App,
    mlink: MLink,
    *,
    trainer: bool = True,
    controller: bool = True,
    source: faust.TopicT | None = None,
    reader: FrameReader = read_frame_record,
) -> Attached:
    """Attach the control replay, the frame operator (planner + models + link operator), the
    trainer and the controller to ``app``. Every worker of the app runs all of them; the trainer
    and the controller consume single-partition topics, so one worker at a time does their job.
    """
    _warn_about_buffers(app, mlink.settings)
    _name_the_model_set(app, mlink)
    attach_control_replay(app, mlink)
    attach_metrics(app, mlink)  # its endpoint before the models' build and the group's join
    attach_model_builder(app, mlink)

    @app.on_before_shutdown.connect
    async def close_mlink(sender: Any, **_: Any) -> None:
        """Executors, isolated model processes and the training process stop with the app."""
        mlink.close()

    frames = attach_frame_operator(app, mlink, source=source, reader=reader)
    return Attached(
        frame_operator=frames,
        trainer=attach_trainer(app, mlink) if trainer else None,
        controller=attach_controller(app, mlink) if controller else None,
    )
