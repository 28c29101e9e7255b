"""A faust app that relays verified records: the path a signing MLink agent takes.

Run by ``tests/test_signing.py`` as a real worker process. It reads raw records from
``MLINK_RELAY_IN``, verifies each one's ``mlink-signature`` header with the keys of
``MLINK_SIGNING_KEY``, and forwards it to ``MLINK_RELAY_OUT`` signed for that topic; a record that
does not verify is forwarded with key ``b"rejected"`` and the reason as its value. The app uses
:meth:`mlink.topics.limits.Limits.faust_settings`, so records near the record size limit pass.
"""

from __future__ import annotations

import os

import faust

from mlink.topics.limits import DEFAULT_LIMITS
from mlink.topics.signing import SignatureError, Signer

signer = Signer.from_env()
app = faust.App(
    os.environ.get("MLINK_FAUST_APP_ID", "mlink-relay"),
    broker=os.environ.get("MLINK_FAUST_BROKER", "kafka://127.0.0.1:9092"),
    broker_session_timeout=10.0,
    broker_heartbeat_interval=3.0,
    producer_max_batch_size=1,
    web_enabled=False,
    store="memory://",
    consumer_auto_offset_reset="earliest",
    **DEFAULT_LIMITS.faust_settings(),
)

IN, OUT = os.environ.get("MLINK_RELAY_IN", "relay-in"), os.environ.get("MLINK_RELAY_OUT", "out")
source = app.topic(IN, key_serializer="raw", value_serializer="raw")
sink = app.topic(OUT, key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def relay(stream):
    async for event in stream.events():
        key, value = event.key, event.value
        try:
            signer.verify(IN, key, value, event.headers)
        except SignatureError as exc:
            await sink.send(key=b"rejected", value=str(exc).encode())
            continue
        await sink.send(key=key, value=value, headers=signer.sign(OUT, key, value))
