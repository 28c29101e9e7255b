"""The faust app of an MLink worker: a faust app with MLink's operators attached, nothing else.

It is :func:`~mlink.operators.attach` on a fresh app with the settings the operators were
measured with; ``mlink worker`` builds it from a YAML config (:mod:`mlink.deploy.worker_app`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import faust

from mlink.operators.attach import attach, backlog_settings
from mlink.operators.fetch_wait import cap_fetch_wait
from mlink.operators.frame_operator import source_reader
from mlink.operators.group_check import pipeline_assignor
from mlink.operators.log_limits import limit_client_repeats
from mlink.operators.runtime import MLink
from mlink.operators.stop_deadline import end_stuck_stop
from mlink.operators.wiring import raw_topic
from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.ingest import SourceFormat

__all__ = ["create_app", "worker_datadir"]


def create_app(
    mlink: MLink,
    bootstrap: str,
    *,
    partitions: int = 4,
    session_timeout_s: float = 10.0,
    credentials: Any = None,
    source_topic: str | None = None,
    source_format: SourceFormat = "frame",
    stop_deadline_s: float | None = None,
    **faust_settings: Any,
) -> faust.App:
    """A faust app (id = ``mlink.settings.name``) on ``bootstrap`` running every operator.

    ``session_timeout_s`` is short because Tansu holds every JoinGroup for half of it (see
    :mod:`mlink.deploy.broker`); ``stream_buffer_maxsize`` and ``broker_max_poll_records`` are
    small so that a backlog waits in Kafka rather than in the worker, and a paused frames topic
    (the warm-up hold) stops quickly: every frame already fetched when the hold starts still
    runs every model, so the buffer is what a backlog's warm-up overshoots by. Two batches keep
    the agent busy (a batch takes far longer than a fetch). The fetch wait is capped
    (:mod:`.fetch_wait`).
    ``source_topic`` (default: the pipeline's frames topic) is where frames are read, in
    ``source_format``. ``stop_deadline_s``: a process that runs this app alone exits this long
    after it starts to stop, however far the stop got (:mod:`.stop_deadline`; None: faust's own
    timeouts, up to about a minute with the broker gone). ``faust_settings`` override any faust
    setting; faust's ``datadir`` is :func:`worker_datadir`'s unless they give one.
    """
    servers = ";".join(f"kafka://{s}" for s in bootstrap_servers(bootstrap))
    settings: dict[str, Any] = {
        "broker": servers,
        "broker_session_timeout": session_timeout_s,
        "broker_heartbeat_interval": min(3.0, session_timeout_s / 3),
        "web_enabled": False,
        "store": "memory://",
        "topic_partitions": partitions,
        "consumer_auto_offset_reset": "earliest",
        "stream_wait_empty": False,
        **backlog_settings(mlink.settings),
        # results leave in batches: one produce request per few ms, not one per frame
        "producer_linger": 0.005,
        "producer_max_batch_size": 1 << 19,
        **mlink.limits.faust_settings(),
    }
    if "datadir" not in faust_settings:  # not faust's "<app id>-data" in the working directory
        settings["datadir"] = worker_datadir(mlink.settings.name)
    if credentials is not None:
        settings["broker_credentials"] = credentials
    # says so when another pipeline's workers share the group (the same name, another prefix)
    settings["PartitionAssignor"] = pipeline_assignor(source_topic or mlink.names.frames)
    settings.update(faust_settings)
    app = faust.App(mlink.settings.name, **settings)
    cap_fetch_wait(app)
    source = raw_topic(app, source_topic) if source_topic else None
    attach(app, mlink, source=source, reader=source_reader(source_format))
    app.mlink = mlink  # type: ignore[attr-defined]
    if stop_deadline_s is not None:
        end_stuck_stop(app, stop_deadline_s)

    @app.task
    async def limit_log_repeats() -> None:
        """A broker outage logged ~108 client ERROR lines a second (:mod:`.log_limits`)."""
        limit_client_repeats()

    return app


def worker_datadir(app_id: str) -> Path:
    """faust's data directory for the app ``app_id`` (its ``datadir`` setting), never in the
    working directory, where faust's own default (``<app id>-data``) left a stray directory in
    the user's project at every worker start.

    In order: faust's own override, ``FAUST_DATADIR`` or ``F_DATADIR`` (``faust --datadir``
    sets them; ``mlink run`` puts it beside its worker logs); else ``mlink/faust/<app id>`` in
    the user's cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``); else, when that cannot
    be created (no home, a read-only one in a container), ``mlink-<uid>/faust/<app id>`` in the
    temp directory. The default is created here, as faust creates only its last component.
    faust's ``APP_DATADIR`` variable still wins over all of these (faust reads it over the
    setting). The workers keep nothing in it that outlives them (``store="memory://"``: faust
    makes empty ``v1/tables`` directories), so any of these is safe to delete.
    """
    override = os.environ.get("FAUST_DATADIR") or os.environ.get("F_DATADIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    try:  # a relative XDG_CACHE_HOME is to be ignored (XDG base directory spec)
        cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        path = cache / "mlink" / "faust" / app_id
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: Path.home() without a home
        mine = Path(tempfile.gettempdir()) / f"mlink-{getattr(os, 'getuid', lambda: 'user')()}"
        mine.mkdir(mode=0o700, exist_ok=True)  # the user's own, in a directory all users share
        path = mine / "faust" / app_id
        path.mkdir(parents=True, exist_ok=True)
    return path
