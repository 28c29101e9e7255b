"""Entry point for ``python -m faust -A mlink.deploy.worker_app worker``.

The pipeline config comes from ``MLINK_CONFIG`` (a YAML path) and the broker from
``MLINK_BROKER`` (or the config's ``broker``), so one command line serves every deployment; the
``mlink worker CONFIG`` command sets both and runs exactly this. The app is
:func:`mlink.operators.create_app` on the config's operator settings and models.
"""

from __future__ import annotations

import os

from mlink.deploy.config import ConfigError, load_config
from mlink.operators import MLink, create_app

_path = os.environ.get("MLINK_CONFIG")
if not _path:
    raise ConfigError("set MLINK_CONFIG to the pipeline config path (or use `mlink worker CONFIG`)")
config = load_config(_path)
if not config.broker:
    raise ConfigError(
        "no broker: set MLINK_BROKER=host:port or `broker:` in the config "
        "(`mlink broker` starts an embedded one)"
    )
mlink = MLink(config.operator_settings(), config.operator_models())
app = create_app(
    mlink,
    config.broker,
    partitions=config.topics.partitions,
    session_timeout_s=config.runtime.session_timeout_s,
    source_topic=config.source.topic,
    source_format=config.source.format,
)
