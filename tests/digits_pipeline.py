"""Small digits pipelines on the session's broker, for tests that feed frames from outside
(other languages, raw-image source topics): a config writer, a worker starter, real digit images
as files, and the provenance every result must carry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from kafka import KafkaConsumer, TopicPartition

from mlink.deploy.config import PipelineConfig, load_config
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.eval.workloads import digits
from mlink.topics.codec import decode_record
from mlink.topics.records import DeadLetter
from tests.conftest import FaustWorker

# The faust app of a pipeline worker (`mlink worker CONFIG` runs it).
WORKER_APP = "mlink.deploy.worker_app"
DIGIT_MODEL = "mlink.eval.workloads.digits:model"
# Declared costs make the active set predictable: a 0.3 budget fraction (12.6 of 42 ms) fits
# parity_logreg only, so the other two models are synthesized from it once links exist.
COSTS = {"ge5_forest": 20.0, "parity_logreg": 2.0, "value_gbr": 20.0}


def write_config(
    directory: Path, tag: str, source: dict[str, Any], warmup: int
) -> tuple[Path, PipelineConfig]:
    """A small digits pipeline (three models, two partitions) with a unique name and prefix."""
    uid = uuid.uuid4().hex[:8]
    data = {
        "name": f"node-{tag}-{uid}",
        "source": source,
        "models": [
            {
                "name": m,
                "factory": DIGIT_MODEL,
                "args": {"name": m},
                "output": digits.MODELS[m].spec.to_dict(),
                "batch": True,
                "cost": {"ms": cost},
            }
            for m, cost in COSTS.items()
        ],
        "budget": {"fraction": 0.3},
        "links": {
            "store": str(directory / "links"),
            "warmup_frames": warmup,
            "probe_every": 10,
            "epochs": 20,
        },
        "topics": {"prefix": f"node.{tag}.{uid}", "partitions": 2},
        "runtime": {"output_timeout_s": 5.0},
    }
    path = directory / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config(path)


def start_worker(
    faust_worker: Callable[..., FaustWorker], path: Path, config: PipelineConfig, bootstrap: str
) -> FaustWorker:
    create_pipeline_topics(config, bootstrap)
    env = {
        "MLINK_CONFIG": str(path),
        "MLINK_BROKER": bootstrap,
        "F_DATADIR": str(path.parent / "faust"),
    }
    worker = faust_worker(WORKER_APP, env)
    worker.wait_ready()
    return worker


def digit_files(directory: Path, count: int, ext: str = ".jpg") -> list[str]:
    """Real digit images as JPEG (or PNG) files, what a camera gateway would send."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(digits.frames(count)):
        ok, buf = cv2.imencode(ext, image)
        assert ok
        path = directory / f"digit-{i:03d}{ext}"
        path.write_bytes(buf.tobytes())
        paths.append(str(path))
    return paths


def wait_for_links(worker: FaustWorker, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while "now at epoch 1:" not in worker.log():
        assert worker.proc.poll() is None, f"worker died:\n{worker.log_tail()}"
        assert time.monotonic() < deadline, f"no links after {timeout} s:\n{worker.log_tail()}"
        time.sleep(0.2)


def check_provenance(lines: list[dict[str, Any]], config: PipelineConfig) -> None:
    """Every result names every model once, with a status and the provenance it implies."""
    models = set(config.model_names)
    for line in lines:
        assert set(line["models"]) == models, line["frame_id"]
        for name, entry in line["models"].items():
            assert entry["status"] in ("executed", "synthesized", "missing")
            if entry["status"] == "synthesized":
                assert entry["link_version"] is not None and entry["sources"], line
            else:
                assert entry["sources"] == [], line
            size = digits.MODELS[name].spec.size
            if entry["status"] != "missing":
                assert np.asarray(entry["output"]).shape == (size,), (name, entry["output"])


def make_camera_topic(broker: Any, partitions: int = 2) -> str:
    name = f"cams-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [TopicSpec(name, partitions, {})])
    return name


def read_dead_letters(bootstrap: str, topic: str, timeout: float = 20.0) -> list[DeadLetter]:
    """Every DeadLetter on ``topic`` up to its end offsets, without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=200).values():
                letters.extend(decode_record(r.value, DeadLetter) for r in batch)
        return letters
    finally:
        consumer.close()
