"""A warm-up frame on which a model failed is no link training sample, so it does not count
towards the warm-up a worker holds its frames for (a model that raised on 2 of 20 warm-up
frames held every frame for links.hold_s, 60 s; one that always raises, for good)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import numpy as np

from mlink.operators import LinkSettings, MLink, Model, Settings
from mlink.operators.dead_letters import DeadLetters
from mlink.operators.frame_operator import FrameBatch
from mlink.topics.frames import encode_frame
from mlink.topics.specs import VectorSpec

UNIT = VectorSpec(1, "linear")


def event(offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic="f", partition=0, offset=offset))


def test_failed_warmup_frames_do_not_count_towards_the_warmup(tmp_path) -> None:
    def mean(frame: np.ndarray) -> np.ndarray:
        return np.array([frame.mean() / 255.0], np.float32)

    def flaky(frame: np.ndarray) -> np.ndarray:
        if frame[0, 0] == 255:
            raise RuntimeError("bad frame")
        return mean(frame)

    models = [Model(name="mean", fn=mean, spec=UNIT), Model(name="flaky", fn=flaky, spec=UNIT)]
    links = LinkSettings(store=str(tmp_path), warmup_frames=8, hold_s=0)
    mlink = MLink(Settings(name="w", budget={"fraction": 0.5}, links=links), models)
    dead = DeadLetters(lambda key, value: None, Counter())
    batch = FrameBatch(mlink, dead, app=None, topics={"f"})
    images = [np.full((4, 4), 255 if seq in (1, 2) else seq, np.uint8) for seq in range(4)]
    frames = {seq: encode_frame(image, "cam", seq) for seq, image in enumerate(images)}

    async def run() -> list:
        await mlink.build_models()
        return await batch.run([event(s) for s in frames], lambda e, _: frames[e.message.offset])

    results = asyncio.run(run())
    mlink.close()
    assert [r.degraded for _, r in results] == [False, True, True, False]
    assert batch.warmup_planned == 2  # the two frames that became training samples
    assert batch.warmup_failures.failed == {"flaky": 2}  # and the log says which model, why
    assert batch.warmup_failures.last_error["flaky"].endswith("bad frame")
