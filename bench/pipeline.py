"""Pipeline throughput and frame-to-result latency, next to the raw broker in the same run.

    python bench/pipeline.py [--config deploy/configs/digits.yaml] [--frames 600] [--workers 1]

1. Raw broker: the same frames (same encoding and size) produced with kafka-python and read
   back by a consumer group on the same embedded broker: messages/s and produce-to-consume
   latency. This is the ceiling any Kafka pipeline on this broker and machine can reach.
2. The pipeline: workers start, a warm-up stream runs until the first budgeted active set is
   live (links trained), then ``--frames`` frames are produced as fast as possible; frames/s is
   results received over the time from the first produce to the last result, latency is frame
   timestamp to result received. The digits models cost ~10 ms per frame in total, so this
   measures the pipeline, not the models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.config import load_config, with_broker
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.runner import ResultCollector, WorkerProcess, read_control
from mlink.deploy.source import FrameProducer, iter_source
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.topics.codec import decode_record
from mlink.topics.records import Frame


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def raw_broker(bootstrap: str, frames: list, encoding: str, partitions: int) -> dict:
    from kafka import KafkaConsumer

    topic = f"raw-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, partitions)])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{topic}",
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        fetch_max_wait_ms=50,
    )
    consumer.poll(timeout_ms=6000)  # join the group before timing
    start = time.time()
    with FrameProducer(bootstrap, topic, encoding=encoding) as producer:
        for i, (stream, image) in enumerate(frames):
            producer.send(stream, i, image)
    latencies, seen = [], 0
    deadline = time.time() + 120
    while seen < len(frames) and time.time() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            now = time.time()
            for record in records:
                latencies.append((now - decode_record(record.value, Frame).timestamp) * 1000)
                seen += 1
    elapsed = time.time() - start
    consumer.close()
    return {"messages": seen, "per_s": seen / elapsed, "latency_ms": percentiles(latencies)}


def paced_latency(prod_args: tuple, frames: list, rate: float, collector: ResultCollector) -> dict:
    """Latency when frames arrive at a steady ``rate`` below capacity (no queue builds up)."""
    bootstrap, topic, encoding = prod_args
    with FrameProducer(bootstrap, topic, encoding=encoding) as prod:
        ids = set()
        start = time.monotonic()
        for i, (stream, image) in enumerate(frames):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ids.add(prod.send(f"paced-{stream}", i, image).frame_id)
    collector.wait_for(ids, 120)
    lat = [
        (collector.received_at[f] - collector.results[f].timestamp) * 1000
        for f in ids
        if f in collector.received_at
    ]
    return {"rate": rate, "frames": len(ids), "results": len(lat), "latency_ms": percentiles(lat)}


def pipeline(
    config_path: Path,
    bootstrap: str,
    frames: list,
    warmup: list,
    workers: int,
    paced_rate: float = 50.0,
    paced_frames: int = 300,
) -> dict:
    config = with_broker(load_config(config_path), bootstrap)
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(
            update={
                "links": config.links.model_copy(update={"store": str(Path(tmp) / "links")}),
                "topics": config.topics.model_copy(
                    update={"prefix": f"bench-{uuid.uuid4().hex[:6]}"}
                ),
            }
        )
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        create_pipeline_topics(config)
        logs = Path(".mlink-runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
        procs = [
            WorkerProcess(path, bootstrap, logs / f"worker-{i}.log", f"w{i}")
            for i in range(workers)
        ]
        collector = ResultCollector(bootstrap, config.topics.names().results)
        try:
            ready = [p.wait_ready() for p in procs]
            names = config.topics.names()
            with FrameProducer(bootstrap, names.frames, encoding=config.source.encoding) as prod:
                for i, (stream, image) in enumerate(warmup):
                    prod.send(f"warm-{stream}", i, image)
                    time.sleep(1 / 30)
            deadline = time.time() + 180
            while read_control(bootstrap, config)[0].epoch < 1 and time.time() < deadline:
                time.sleep(1)
            state = read_control(bootstrap, config)[0]
            warm_ids = set(collector.results)
            start = time.time()
            with FrameProducer(bootstrap, names.frames, encoding=config.source.encoding) as prod:
                ids = {
                    prod.send(stream, i, image).frame_id for i, (stream, image) in enumerate(frames)
                }
            complete = collector.wait_for(ids, 300)
            paced = paced_latency(
                (bootstrap, names.frames, config.source.encoding),
                frames[:paced_frames],
                paced_rate,
                collector,
            )
            done = {f: collector.received_at[f] for f in ids if f in collector.received_at}
            elapsed = max(done.values()) - start
            latencies = [
                (collector.received_at[f] - collector.results[f].timestamp) * 1000 for f in done
            ]
            executed = np.mean(
                [sum(r.status == "executed" for r in collector.results[f].results) for f in done]
            )
            return {
                "frames": len(ids),
                "results": len(done),
                "complete": complete,
                "per_s": len(done) / elapsed,
                "latency_ms": percentiles(latencies),
                "epoch": state.epoch,
                "active": list(state.active),
                "models_executed_per_frame": float(executed),
                "models": len(config.models),
                "warmup_results": len(warm_ids),
                "worker_ready_s": ready,
                "duplicates": collector.duplicates,
                "paced": paced,
            }
        finally:
            collector.close()
            for p in procs:
                p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("deploy/configs/digits.yaml"))
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config)
    source = list(iter_source(config.source))
    frames = [source[i % len(source)] for i in range(args.frames)]
    warmup = source[: args.warmup]
    with EmbeddedBroker() as broker:
        raw = raw_broker(broker.bootstrap, frames, config.source.encoding, config.topics.partitions)
        pipe = pipeline(args.config, broker.bootstrap, frames, warmup, args.workers)
    report = {"config": str(args.config), "raw_broker": raw, "pipeline": pipe}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"raw broker (kafka-python produce + consume, same frames): {raw['per_s']:.0f} msg/s, "
        f"latency p50 {raw['latency_ms']['p50']:.1f} ms, p99 {raw['latency_ms']['p99']:.1f} ms"
    )
    print(
        f"pipeline ({args.workers} worker, {pipe['models']} models, "
        f"{pipe['models_executed_per_frame']:.1f} executed per frame at epoch {pipe['epoch']}): "
        f"{pipe['per_s']:.1f} frames/s, latency p50 {pipe['latency_ms']['p50']:.0f} ms, "
        f"p99 {pipe['latency_ms']['p99']:.0f} ms ({pipe['results']}/{pipe['frames']} results, "
        "sent as one burst, so latency includes the queue)"
    )
    paced = pipe["paced"]
    print(
        f"pipeline at a steady {paced['rate']:.0f} frames/s: latency p50 "
        f"{paced['latency_ms']['p50']:.0f} ms, p99 {paced['latency_ms']['p99']:.0f} ms "
        f"({paced['results']}/{paced['frames']} results)"
    )


if __name__ == "__main__":
    main()
