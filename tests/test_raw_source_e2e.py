"""A pipeline pointed at an existing raw-JPEG camera topic answers every frame (issue 10).

The camera side is a plain kafka-python producer in its own process that imports nothing of
ours: it writes JPEG and PNG files as record values keyed by camera id, as a camera gateway
would, plus one value that is not an image. The pipeline (``source: {topic, format: image}``)
must answer every image, with frame ids derived from topic, partition and offset, and
dead-letter the junk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlink.deploy.runner import ResultCollector
from tests.conftest import FaustWorker
from tests.digits_pipeline import (
    digit_files,
    make_camera_topic,
    read_dead_letters,
    start_worker,
    write_config,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Runs in a fresh interpreter: kafka-python and the standard library only.
CAMERA_PRODUCER = r"""
import json, sys
from pathlib import Path
from kafka import KafkaProducer

bootstrap, topic, *files = sys.argv[1:]
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
images = []
for i, path in enumerate(files):
    camera = f"gate-{i % 2}"
    meta = producer.send(topic, key=camera.encode(), value=Path(path).read_bytes()).get(30)
    images.append([camera, meta.partition, meta.offset, meta.timestamp])
junk = producer.send(topic, key=b"gate-0", value=b"GIF89a, not a JPEG").get(30)
producer.close()
assert not [m for m in sys.modules if m.split(".")[0] == "mlink"], "imported mlink"
print(json.dumps({"images": images, "junk": [junk.partition, junk.offset]}))
"""


def test_a_plain_producers_raw_images_each_get_a_result(
    broker: Any, faust_worker: Callable[..., FaustWorker], tmp_path: Path
) -> None:
    cams = make_camera_topic(broker)
    path, config = write_config(tmp_path, "raw", {"topic": cams, "format": "image"}, warmup=1000)
    names = config.topics.names()
    worker = start_worker(faust_worker, path, config, broker.bootstrap)
    files = digit_files(tmp_path, 8, ".jpg") + digit_files(tmp_path / "png", 4, ".png")
    collector = ResultCollector(broker.bootstrap, names.results)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CAMERA_PRODUCER, broker.bootstrap, cams, *files],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        sent = json.loads(done.stdout)
        expected = {f"{cams}:{p}:{o}": (camera, ts) for camera, p, o, ts in sent["images"]}
        assert len(expected) == len(files)
        if not collector.wait_for(set(expected), 120):
            missing = sorted(set(expected) - collector.results.keys())
            raise AssertionError(f"no result for {missing}\n{worker.log_tail()}")
        for frame_id, (camera, timestamp_ms) in expected.items():
            result = collector.results[frame_id]
            assert result.stream_id == camera  # the record key
            assert result.timestamp == pytest.approx(timestamp_ms / 1000)  # the Kafka timestamp
            assert {r.model for r in result.results} == set(config.model_names)
            assert all(r.status == "executed" for r in result.results), frame_id  # warming up
        partition, offset = sent["junk"]
        deadline = time.monotonic() + 30
        while True:
            letters = [
                d
                for d in read_dead_letters(broker.bootstrap, names.dead_letter)
                if (d.topic, d.partition, d.offset) == (cams, partition, offset)
            ]
            if letters or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(letters) == 1, "the junk record was not dead-lettered"
        assert letters[0].stage in ("frame-operator", "planner")  # fused or split layout
        assert "neither JPEG nor PNG" in letters[0].reason
        assert letters[0].value == b"GIF89a, not a JPEG" and letters[0].key == b"gate-0"
    finally:
        collector.close()
