"""The fault matrix: each fault against a live pipeline, one row per fault.

    python bench/faults.py [--only NAME[,NAME...]] [--json]

Every scenario runs real supervised workers (``mlink.deploy.supervisor``: a worker that dies is
restarted with backoff, as ``mlink run`` does) on an embedded Tansu broker, streams good frames
around the fault and counts, over the frames that entered: results (after dedupe by frame id),
lost (no result), duplicated (a second result), degraded, worker restarts and crash loops.
``tests/test_faults.py`` runs every scenario and checks each row: nothing lost, no crash loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import yaml
from kafka import KafkaProducer

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.config import PipelineConfig, load_config
from mlink.deploy.processes import WorkerProcess
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.supervisor import WorkerSupervisor
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.topics.codec import encode_record
from mlink.topics.frames import encode_frame

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the poison records and misbehaving models live in tests/
    sys.path.insert(0, str(ROOT))
DIGIT_MODEL = "mlink.eval.workloads.digits:model"
MISBEHAVING = "tests.misbehaving_models:misbehaving"
TRIGGER = 201  # frames whose first pixel is this make the misbehaving model misbehave
FAST = {
    "parity_logreg": {"kind": "vector", "size": 2, "task": "softmax"},
    "ge5_forest": {"kind": "vector", "size": 2, "task": "softmax"},
}


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

    def dead_letters(self) -> int:
        """Dead letters on the pipeline's topic so far (its end offsets)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","))
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

    def send(self, n: int, streams: int = 4, trigger_at: set[int] | None = None) -> list[str]:
        """``n`` good frames round-robin over ``streams`` cameras (so every partition works)."""
        ids = []
        for image in images(n, self.seq, trigger_at and {self.seq + i for i in trigger_at}):
            stream = f"cam{self.seq % streams}"
            frame = encode_frame(image, stream, self.seq)
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


# -- scenarios -------------------------------------------------------------------------------


def worker_killed(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    data = config_data(tmp, models=[model(m, o) for m, o in FAST.items()], warmup=10_000)
    with pipeline(broker.bootstrap, tmp, data, workers=2) as p:
        ids = p.send(20)
        for _ in range(3):
            victim = p.supervisor.workers[1]
            victim.signal(signal.SIGKILL)
            ids += p.send(20)
            time.sleep(4)
            p.supervisor.wait_ready()
        ids += p.send(20)
        return [p.row("worker SIGKILLed 3 times (2 workers)", ids, 180)]


def broker_restart(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """A durable broker (Tansu on an S3-compatible store) stopped and started mid-stream."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = {
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": endpoint,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        import boto3

        bucket = f"tansu-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        durable = EmbeddedBroker(storage_engine=f"s3://{bucket}/", env=s3, cluster_id="faults")
        durable.start()
        try:
            data = config_data(tmp, models=[model(m, o) for m, o in FAST.items()], warmup=10_000)
            with pipeline(durable.bootstrap, tmp, data) as p:
                ids = p.send(30)
                p.collector.wait_for(set(ids), 60)
                durable.stop()
                time.sleep(3)
                durable.start()
                ids += p.send(30)
                return [p.row("broker restart (Tansu on S3, durable)", ids, 180)]
        finally:
            durable.stop()
    finally:
        server.stop()


def misbehaving_model(fault: str, isolation: dict | None, note: str) -> Callable[..., list[Row]]:
    def scenario(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
        bad = {
            "name": "flaky",
            "factory": MISBEHAVING,
            "args": {"fault": fault, "trigger": TRIGGER},
            "output": {"kind": "vector", "size": 2, "task": "softmax"},
            "timeout_s": 2.0,
            "isolation": isolation,
            "cost": {"ms": 2.0},
        }
        models = [model(m, o) for m, o in FAST.items()] + [bad]
        data = config_data(tmp, models=models, warmup=10_000)
        env = {"PYTHONPATH": str(ROOT)}  # isolated children import tests.misbehaving_models
        with pipeline(broker.bootstrap, tmp, data, env=env) as p:
            ids = p.send(10) + p.send(40, trigger_at={0, 10, 20})
            p.collector.wait_for(set(ids), 240)
            time.sleep(5)  # time to restart an isolated model
            tail = p.send(10)
            row = p.row(f"{fault} model ({note})", ids + tail, 240)
            results = p.collector.results
            clean = not any(results[f].degraded for f in tail if f in results)
            row.note = f"frames after the fault {'clean' if clean else 'still degraded'}"
            return [row]

    return scenario


def poison_and_forged(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    from tests.test_hardening_e2e import UNDECODABLE, forged_control, poison_records

    data = config_data(tmp, models=[model(m, o) for m, o in FAST.items()], warmup=12)
    rows = []
    with pipeline(broker.bootstrap, tmp, data) as p:
        p.collector.wait_for(set(p.send(16)), 120)
        wait_epoch(p, 1)
        for what, value in poison_records().items():
            p.raw(p.names.frames, value)
            ids = p.send(5) + ([UNDECODABLE[what]] if what in UNDECODABLE else [])
            rows.append(p.row(f"poison: {what}", ids, 90))
        epoch = read_control(p.bootstrap, p.config)[0].epoch
        for what, message in forged_control(epoch).items():
            p.raw(p.names.control, msgpack.packb(message), key=b"forged")
            rows.append(p.row(f"forged control: {what}", p.send(5), 90))
    return rows


def disk_full(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """The link store on a tiny tmpfs, filled up: the first link saves fail with ENOSPC."""
    mount = tmp / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return [
            Row("disk full during a link save", note=f"not measurable here: {done.stderr.strip()}")
        ]
    try:
        filler = mount / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):  # fill it up
            f.write(b"\0" * (2 << 20))
        with open(filler, "r+b") as f:  # leave 16 kB: too little for a link version
            f.truncate(max(0, filler.stat().st_size - 16 * 1024))
        models = [model(m, o) for m, o in FAST.items()]
        data = config_data(tmp, models=models, warmup=12, store=str(mount / "links"), hold_s=5)
        with pipeline(broker.bootstrap, tmp, data) as p:
            ids = p.send(40)
            p.collector.wait_for(set(ids), 120)
            filler.unlink()  # space again: the next retry succeeds
            ids += p.send(40)
            linked = wait_epoch(p, 1, 90)
            ids += p.send(20)
            return [
                p.row(
                    "disk full during a link save",
                    ids,
                    120,
                    note="links saved once space returned" if linked else "no links yet",
                )
            ]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def held_backlog(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """A backlog arrives while the worker holds for its first links, again and again (1 s holds,
    slow training): the frames faust had fetched when a hold paused their partition are
    re-read, not lost."""
    models = [model(m, o) for m, o in FAST.items()]
    data = config_data(tmp, models=models, warmup=8, hold_s=1, epochs=200)
    with pipeline(broker.bootstrap, tmp, data) as p:
        ids = p.send(400)
        return [p.row("backlog during repeated warm-up holds", ids, 240)]


def tampered_bundle(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """The current link version's tensors are altered on disk, then a worker restarts."""
    data = config_data(
        tmp, models=[model(m, o) for m, o in FAST.items()], warmup=12, retrain_every=30
    )
    with pipeline(broker.bootstrap, tmp, data) as p:
        ids = p.send(16)
        p.collector.wait_for(set(ids), 120)
        wait_epoch(p, 1)
        tensors = next((tmp / "links").glob("v*/tensors.safetensors"))
        blob = bytearray(tensors.read_bytes())
        blob[-8:] = bytes(8)  # flip the last weights
        tensors.write_bytes(bytes(blob))
        p.supervisor.workers[0].signal(signal.SIGKILL)  # a fresh worker must load it again
        time.sleep(2)
        p.supervisor.wait_ready()
        ids += p.send(60)
        return [p.row("tampered link bundle (worker restarted)", ids, 180)]


SCENARIOS: dict[str, Callable[[EmbeddedBroker, Path], list[Row]]] = {
    "worker-killed": worker_killed,
    "broker-restart": broker_restart,
    "hung-isolated": misbehaving_model("hang", {"backoff_initial_s": 0.2}, "isolated, 2 s timeout"),
    "hung-thread": misbehaving_model("hang", None, "on a thread, 2 s timeout"),
    "leaking-isolated": misbehaving_model(
        "leak", {"max_rss_mb": 400, "backoff_initial_s": 0.2}, "isolated, 400 MB cap"
    ),
    "poison-and-forged": poison_and_forged,
    "disk-full": disk_full,
    "held-backlog": held_backlog,
    "tampered-bundle": tampered_bundle,
}


def run(names: list[str]) -> list[Row]:
    rows: list[Row] = []
    with EmbeddedBroker() as broker:
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.monotonic()
                for row in SCENARIOS[name](broker, Path(tmp)):
                    row.note = (row.note + f" ({time.monotonic() - started:.0f} s)").strip()
                    rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help=f"comma-separated scenarios of {sorted(SCENARIOS)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args.only.split(",") if args.only else list(SCENARIOS))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    columns = (
        "fault",
        "sent",
        "results",
        "lost",
        "duplicated",
        "degraded",
        "worker restarts",
        "crash loops",
        "note",
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * 9)
    for r in rows:
        print(
            f"| {r.fault} | {r.sent} | {r.results} | {r.lost} | {r.duplicated} | {r.degraded} "
            f"| {r.worker_restarts} | {r.crash_loops} | {r.note} |"
        )


if __name__ == "__main__":
    main()
