"""A faust app of a user's own, with MLink's operators attached beside its own agent.

Run it like any faust app::

    MLINK_EXAMPLE_BROKER=kafka://localhost:9092 \
        python -m faust -A examples.shop_app worker --without-web -l info

(``--without-web``: faust's worker command starts its web server on port 6066 whatever
``web_enabled`` says, so a second worker on the host would fail to bind.)

The README shows this file; ``tests/test_embedding.py`` runs it against the real broker.
"""

import os

import faust
import numpy as np
import torch

from mlink.operators import LinkSettings, MLink, Model, Settings, attach, backlog_settings
from mlink.topics import FrameResult, TopicNames, decode_record
from mlink.topics.specs import VectorSpec

PREFIX = os.environ.get("MLINK_EXAMPLE_PREFIX", "shop")


def brightness(frame: np.ndarray) -> np.ndarray:
    """Any callable from a frame (uint8 pixels) to an output is a model."""
    return np.array([frame.mean() / 255.0], dtype=np.float32)


class Darkness(torch.nn.Module):
    """So is a torch module: it gets the frame as a tensor, MLink handles eval() and no_grad."""

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return 1.0 - frame.float().mean().reshape(1) / 255.0


def contrast(frame: np.ndarray) -> np.ndarray:
    return np.array([frame.std() / 128.0], dtype=np.float32)


unit = VectorSpec(1, "linear", tolerance=0.05)  # agreement: within 0.05 of the real output
models = [  # declared costs stand in for real networks; undeclared ones are measured live
    Model(name="brightness", fn=brightness, spec=unit, cost={"ms": 2.0}),
    Model(name="darkness", fn=Darkness(), spec=unit, cost={"ms": 20.0}),
    Model(name="contrast", fn=contrast, spec=unit, cost={"ms": 10.0}),
]
topics = TopicNames.with_prefix(PREFIX)
settings = Settings(
    name=f"{PREFIX}-cams",
    budget={"fraction": 0.5},
    topics=topics,
    links=LinkSettings(
        store=os.environ.get("MLINK_EXAMPLE_STORE", "linkstore-data/shop"),
        warmup_frames=24,
        probe_every=10,
    ),
)
app = faust.App(
    f"{PREFIX}-cams",
    broker=os.environ.get("MLINK_EXAMPLE_BROKER", "kafka://localhost:9092"),
    broker_session_timeout=10,  # short group joins (and Tansu-friendly)
    web_enabled=False,  # and `worker --without-web`: the worker command starts it regardless
    store="memory://",
    **backlog_settings(settings),  # a backlog waits in Kafka, not in the worker's buffers
)
attach(app, MLink(settings, models))  # control replay, frame operator, trainer, controller

# The app's own agent, beside MLink's: an alert for every dark frame, from MLink's results.
alerts = app.topic(f"{PREFIX}.alerts", value_serializer="json")


@app.agent(app.topic(topics.results, value_serializer="raw"))
async def dark_frames(stream):
    async for value in stream:
        result = decode_record(value, FrameResult)
        darkness = next(r for r in result.results if r.model == "darkness")
        if darkness.output.size and float(darkness.output[0]) > 0.6:
            await alerts.send(value={"frame": result.frame_id, "how": darkness.status})
