"""Entry point for ``python -m faust -A mlink.deploy.worker_app worker``.

The pipeline config comes from ``MLINK_CONFIG`` (a YAML path) and the broker from
``MLINK_BROKER`` (or the config's ``broker``), so one command line serves every deployment; the
``mlink worker CONFIG`` command sets both and runs exactly this. The app is
:func:`mlink.operators.create_app` on the config's operator settings and models, with the
config's TLS/SASL settings. When ``MLINK_HEALTH`` names a file, the worker keeps it current
(:mod:`mlink.deploy.health`): ready once the control log is replayed and every model is built,
with a heartbeat from the worker's start, the epoch and the metrics port; ``mlink run`` waits on
it. It turns not ready while the consumer group has kept the worker from any partition for a
minute (it answers nothing: :mod:`mlink.operators.stuck_group`), and as soon as the worker
starts to stop, so a readiness probe never reads a stopping or exited
worker as ready (a SIGKILL leaves the file as it was: its heartbeat stops moving).
"""

from __future__ import annotations

import atexit
import os

from mlink.deploy.config import ConfigError, load_config
from mlink.deploy.health import HealthFile, json_logging_config
from mlink.deploy.processes import ORPHAN_GRACE_S, PARENT_ENV
from mlink.deploy.security import faust_settings
from mlink.operators import MLink, create_app, stuck_group
from mlink.operators.early_services import every_from_start
from mlink.operators.orphans import exit_when_orphaned
from mlink.operators.stop_deadline import say_why_it_crashed, when_stop_starts
from mlink.operators.stuck_group import unsynced_seconds
from mlink.operators.wiring import agent_crashes
from mlink.topics.signing import Signer

HEARTBEAT_S = 2.0

if os.environ.get(PARENT_ENV, "").isdigit():  # started by `mlink run`, a supervisor or a test
    exit_when_orphaned(int(os.environ[PARENT_ENV]), ORPHAN_GRACE_S)

_path = os.environ.get("MLINK_CONFIG")
if not _path:
    raise ConfigError("set MLINK_CONFIG to the pipeline config path (or use `mlink worker CONFIG`)")
config = load_config(_path)
if not config.broker:
    raise ConfigError(
        "no broker: set MLINK_BROKER=host:port or `broker:` in the config "
        "(`mlink broker` starts an embedded one)"
    )
mlink = MLink(config.operator_settings(), config.operator_models(), Signer.from_env())
extra = dict(faust_settings(config.security))
if config.runtime.json_logs:
    extra["logging_config"] = json_logging_config()
app = create_app(
    mlink,
    config.broker,
    partitions=config.topics.partitions,
    session_timeout_s=config.runtime.session_timeout_s,
    source_topic=config.source.topic,
    source_format=config.source.format,
    stop_deadline_s=config.runtime.stop_timeout_s,
    **extra,
)

_health_path = os.environ.get("MLINK_HEALTH")
if _health_path:
    health = HealthFile(_health_path, config.name)

    @every_from_start(app, HEARTBEAT_S)  # beats while the group keeps it from any partition
    async def heartbeat() -> None:
        if health.state.extra.get("stopping"):
            return
        # an agent that crashes over and over (faust restarts it) shows in `mlink run`'s summary
        crashes = agent_crashes(mlink.metrics)
        endpoint = getattr(mlink, "metrics_endpoint", None)
        health.update(
            ready=_serving(),
            metrics_port=endpoint.port if endpoint else None,
            epoch=mlink.state.epoch,
            extra={"agent_crashes": crashes, "group_unsynced_s": round(unsynced_seconds(), 1)},
        )

    @app.task
    async def report_ready() -> None:
        await mlink.ready()
        await heartbeat()  # ready at once, not at the next beat

    when_stop_starts(
        app, lambda: health.update(ready=False, extra={**health.state.extra, "stopping": True})
    )


def _serving() -> bool:
    """Ready (the control log replayed, every model built) and not kept from partitions by
    its group for ``STUCK_AFTER_S``: such a worker answers nothing, so a readiness probe must
    not read it as ready (stop 47's audit: a worker ready before its group stopped settling
    stayed ready, with a fresh heartbeat)."""
    built = mlink.event("control").is_set() and mlink.event("models").is_set()
    return built and unsynced_seconds() < stuck_group.STUCK_AFTER_S


atexit.register(say_why_it_crashed, app)  # before logging's own exit hook: registered later
