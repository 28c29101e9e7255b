"""A faust app that reads ints from one topic and forwards them doubled to another.

Run by ``tests/test_broker.py`` as a real worker process::

    python -m faust -A tests.faust_apps.echo_app worker --without-web -l info

Everything a test varies comes from the environment, so each test gets its own app id (consumer
group) and topics on the session's embedded broker:

- ``MLINK_FAUST_BROKER``: faust broker URL, ``kafka://127.0.0.1:PORT``
- ``MLINK_FAUST_APP_ID``: app id = consumer group id
- ``MLINK_ECHO_IN`` / ``MLINK_ECHO_OUT``: the pre-created source and sink topics
- ``MLINK_FAUST_SESSION_TIMEOUT`` / ``MLINK_FAUST_HEARTBEAT``: seconds, 10 and 3 by default
  (for timing experiments; Tansu holds each JoinGroup for half the session timeout)
- ``MLINK_FAUST_SECURITY``: optional JSON of a ``security:`` section
  (:class:`mlink.deploy.security.SecurityConfig`), turned into ``broker_credentials``

Records: raw bytes keys, JSON int values; the output keeps the input key.
"""

from __future__ import annotations

import os

import faust

from mlink.deploy.security import SecurityConfig, faust_settings

security = SecurityConfig.model_validate_json(os.environ.get("MLINK_FAUST_SECURITY", "{}"))

app = faust.App(
    os.environ.get("MLINK_FAUST_APP_ID", "mlink-echo"),
    broker=os.environ.get("MLINK_FAUST_BROKER", "kafka://127.0.0.1:9092"),
    # The settings Tansu needs (see the "faust settings that Tansu needs" section of
    # mlink.deploy.broker).
    broker_session_timeout=float(os.environ.get("MLINK_FAUST_SESSION_TIMEOUT", "10")),
    broker_heartbeat_interval=float(os.environ.get("MLINK_FAUST_HEARTBEAT", "3")),
    producer_max_batch_size=1,
    web_enabled=False,
    store="memory://",
    consumer_auto_offset_reset="earliest",
    **faust_settings(security),
)

source = app.topic(os.environ.get("MLINK_ECHO_IN", "echo-in"), value_serializer="json")
sink = app.topic(os.environ.get("MLINK_ECHO_OUT", "echo-out"), value_serializer="json")


@app.agent(source)
async def double(stream):
    async for key, value in stream.items():
        await sink.send(key=key, value=value * 2)
