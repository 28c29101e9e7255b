"""What a faust user would write instead of MLink: one agent runs every model on every frame.

    MLINK_CONFIG=deploy/configs/digits.yaml MLINK_BROKER=127.0.0.1:9092 \
        python -m faust -A bench.naive_app worker --without-web

It reads the same frames topic and writes the same result records (every model ``executed``),
so ``bench/pipeline.py`` can time both on the same broker and frames. Models run one frame at a
time in a thread beside the event loop (so heartbeats flow), in the config's order.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import faust

from mlink.deploy.config import load_config
from mlink.deploy.processes import ORPHAN_GRACE_S, PARENT_ENV
from mlink.operators.orphans import exit_when_orphaned
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.frames import decode_frame
from mlink.topics.records import Frame, FrameResult, ModelResult

if os.environ.get(PARENT_ENV, "").isdigit():  # started by bench/pipeline.py: end with it
    exit_when_orphaned(int(os.environ[PARENT_ENV]), ORPHAN_GRACE_S)
config = load_config(os.environ["MLINK_CONFIG"])
names = config.topics.names()
app = faust.App(
    f"{config.name}-naive",
    broker=f"kafka://{os.environ['MLINK_BROKER']}",
    broker_session_timeout=10,
    web_enabled=False,
    store="memory://",
    consumer_auto_offset_reset="earliest",
    topic_partitions=config.topics.partitions,
)
frames_t = app.topic(
    os.environ.get("MLINK_NAIVE_SOURCE", names.frames), key_serializer="raw", value_serializer="raw"
)
results_t = app.topic(
    os.environ.get("MLINK_NAIVE_RESULTS", names.results),
    key_serializer="raw",
    value_serializer="raw",
)
models = {m.name: (m.build(), m.spec) for m in config.models}
pool = ThreadPoolExecutor(1)


def run_all(frame: Frame) -> FrameResult:
    image = decode_frame(frame)
    results = []
    for name, (model, spec) in models.items():
        start = time.perf_counter()
        output = spec.validate(model(image), name)
        ms = (time.perf_counter() - start) * 1000
        results.append(ModelResult(model=name, output=output, status="executed", elapsed_ms=ms))
    return FrameResult(
        frame_id=frame.frame_id,
        stream_id=frame.stream_id,
        seq=frame.seq,
        epoch=0,
        results=tuple(results),
        degraded=False,
        emitted_at=time.time(),
        timestamp=frame.timestamp,
    )


@app.agent(frames_t)
async def naive(stream):
    loop = asyncio.get_running_loop()
    async for value in stream:
        frame = decode_record(value, Frame)
        result = await loop.run_in_executor(pool, run_all, frame)
        await results_t.send(key=frame.stream_id.encode(), value=encode_record(result))
