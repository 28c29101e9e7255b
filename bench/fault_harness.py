"""The fault matrix's harness, kept apart from its scenarios so that each scenario reads as its
fault alone, and every row is counted the same way whatever the fault.

``bench/faults.py`` holds the scenarios and the command line; this module starts the supervised
workers, feeds them frames and turns what came back into a ``Row``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from kafka import KafkaProducer

from mlink.deploy.config import PipelineConfig, load_config
from mlink.deploy.processes import WorkerProcess
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.supervisor import WorkerSupervisor
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.codec import encode_record
from mlink.topics.frames import encode_frame

__all__ = [
    "DIGIT_MODEL",
    "ROOT",
    "TRIGGER",
    "Pipeline",
    "Row",
    "config_data",
    "images",
    "model",
    "pipeline",
    "wait_epoch",
]

ROOT = Path(__file__).resolve().parent.parent
DIGIT_MODEL = "mlink.eval.workloads.digits:model"
TRIGGER = 201  # frames whose first pixel is this make the misbehaving model misbehave


@dataclass(slots=True)
class Row:
    fault: str
    sent: int = 0
    results: int = 0
    lost: int = 0
    duplicated: int = 0
    degraded: int = 0
    worker_restarts: int = 0
    crash_loops: int = 0
    dead_letters: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.crash_loops == 0


def images(n: int, start: int = 0, trigger_at: set[int] | None = None) -> list[np.ndarray]:
    """8x8 grey frames; those at ``trigger_at`` carry the misbehaving model's trigger pixel."""
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        image = rng.integers(0, 200, (8, 8), dtype=np.uint8)
        if trigger_at and i in trigger_at:
            image.flat[0] = TRIGGER
        out.append(image)
    return out


@dataclass
class Pipeline:
    """One supervised pipeline on a broker, with a result collector and a raw producer."""

    config: PipelineConfig
    supervisor: WorkerSupervisor
    collector: ResultCollector
    producer: KafkaProducer
    bootstrap: str
    sent: list[str] = field(default_factory=list)
    seq: int = 0
    dead_seen: int = 0
    stream_seqs: dict[str, int] = field(default_factory=dict)

    def dead_letters(self) -> int:
        """Dead letters on the pipeline's topic so far (its end offsets)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(self.bootstrap))
        try:
            topic = self.names.dead_letter
            parts = consumer.partitions_for_topic(topic) or set()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return int(sum(ends.values()))
        finally:
            consumer.close()

    @property
    def names(self) -> Any:
        return self.config.topics.names()

    def send(
        self,
        n: int,
        streams: int = 4,
        trigger_at: set[int] | None = None,
        per_stream: bool = False,
    ) -> list[str]:
        """``n`` good frames round-robin over ``streams`` cameras (so every partition works).

        ``per_stream``: number each camera's frames 0, 1, 2... as a real camera does (a stream
        schedule runs a model on ``seq % period``); else every frame carries the global count."""
        ids = []
        for image in images(n, self.seq, trigger_at and {self.seq + i for i in trigger_at}):
            stream = f"cam{self.seq % streams}"
            seq = self.seq
            if per_stream:
                seq = self.stream_seqs[stream] = self.stream_seqs.get(stream, -1) + 1
            frame = encode_frame(image, stream, seq)
            self.producer.send(self.names.frames, key=stream.encode(), value=encode_record(frame))
            ids.append(frame.frame_id)
            self.seq += 1
        self.producer.flush(30)
        self.sent += ids
        return ids

    def raw(self, topic: str, value: bytes, key: bytes = b"poison") -> None:
        self.producer.send(topic, key=key, value=value).get(30)

    def row(self, fault: str, ids: list[str], timeout: float = 120.0, note: str = "") -> Row:
        self.collector.wait_for(set(ids), timeout)
        got = [f for f in ids if f in self.collector.results]
        total = self.dead_letters()  # read once: a second read could count a letter twice
        dead, self.dead_seen = total - self.dead_seen, total
        return Row(
            fault=fault,
            sent=len(ids),
            results=len(got),
            lost=len(ids) - len(got),
            duplicated=sum(self.collector.duplicate_ids[f] for f in ids),
            degraded=sum(self.collector.results[f].degraded for f in got),
            worker_restarts=self.supervisor.restarts,
            crash_loops=self.supervisor.crash_loops,
            dead_letters=dead,
            note=note,
        )


def model(name: str, output: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "factory": DIGIT_MODEL,
        "args": {"name": name},
        "output": output,
        "batch": True,
        "cost": {"ms": 2.0},
        **extra,
    }


def config_data(tmp: Path, *, models: list[dict[str, Any]], warmup: int, **links: Any) -> dict:
    uid = uuid.uuid4().hex[:8]
    return {
        "name": f"faults-{uid}",
        "source": {"factory": "mlink.eval.workloads.digits:frames"},
        "models": models,
        "budget": {"fraction": 0.6},
        "links": {
            "store": str(tmp / "links"),
            "warmup_frames": warmup,
            "probe_every": 10,
            "epochs": 20,
            "hold_s": 20,
            **links,
        },
        "topics": {"prefix": f"faults.{uid}", "partitions": 2},
        "runtime": {"output_timeout_s": 30},
    }


@contextlib.contextmanager
def pipeline(
    bootstrap: str, tmp: Path, data: dict, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[Pipeline]:
    path = tmp / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    create_pipeline_topics(config, bootstrap)
    logs = ROOT / ".mlink-runs" / data["name"]
    extra = env or {}

    def make(slot: int, generation: int) -> WorkerProcess:
        name = f"worker-{slot}.{generation}"
        return WorkerProcess(path, bootstrap, logs / f"{name}.log", name, env=extra)

    supervisor = WorkerSupervisor(make, workers, backoff_initial_s=0.5, backoff_max_s=5.0)
    collector = ResultCollector(bootstrap, config.topics.names().results)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
    try:
        supervisor.wait_ready()
        yield Pipeline(config, supervisor, collector, producer, bootstrap)
    finally:
        producer.close()
        collector.close()
        supervisor.stop()


def wait_epoch(p: Pipeline, epoch: int, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_control(p.bootstrap, p.config)[0].epoch >= epoch:
            return True
        time.sleep(0.5)
    return False


def send_until_epoch(p: Pipeline, epoch: int, timeout: float = 120.0) -> tuple[list[str], bool]:
    """Keep frames coming (4 every half second, as a camera would) until the control state is
    at ``epoch``: a plan that waits for training data gets it. The ids sent, and whether it got
    there."""
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_control(p.bootstrap, p.config)[0].epoch >= epoch:
            return ids, True
        ids += p.send(4)
        time.sleep(0.5)
    return ids, False
