"""Pipeline throughput and latency, next to the raw broker, the compute bound and a naive faust
pipeline, all in the same run on the same embedded broker and frames.

    python bench/pipeline.py [--config deploy/configs/digits.yaml] [--frames 600]
                             [--workers 1,2] [--rate 50] [--json]

1. Raw broker: the same frames (same encoding and size) produced with kafka-python and read back
   by a consumer group: messages/s, the ceiling of any Kafka pipeline on this broker and machine.
2. MLink, for each worker count: a warm-up stream runs until the first budgeted active set is
   live (links trained), then ``--frames`` frames are produced at once (a burst: frames/s is
   results over the time from the first produce to the last result), then frames at a steady
   ``--rate`` (latency p50/p99, frame timestamp to result received). The compute bound is
   1000 / (ms of the models that ran per frame, from the results' own timings): what one core
   could do if the pipeline cost nothing.
3. Naive: ``bench/naive_app.py``, one faust agent running every model on every frame, on the
   same burst of frames.

Compute saved is given on two tables. ``compute_saved`` uses the models' own timings in the
worker, where the models of a frame run concurrently: a call's wall time then includes waiting for
the CPU, most on warm-up and probe frames where every model runs at once, so it overstates what a
budgeted frame saves. ``compute_saved_solo`` prices the same executed models on the naive
pipeline's timings of the same frames in the same run (each model alone, one after another): what
the work costs without contention, the table the throughput target is checked on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.config import PipelineConfig, load_config, with_broker
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.processes import FaustProcess, WorkerProcess
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.source import FrameProducer, iter_source
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.topics.codec import decode_record
from mlink.topics.records import Frame, FrameResult

RUNS = Path(".mlink-runs")


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def numbered(frames: list) -> list[tuple[str, int, Any]]:
    """``(stream, seq, image)`` with each stream's own sequence numbers, as a camera numbers its
    frames (a schedule plans by them: a global index would give an interleaved stream only every
    fourth seq)."""
    seqs: dict[str, int] = defaultdict(int)
    out = []
    for stream, image in frames:
        out.append((stream, seqs[stream], image))
        seqs[stream] += 1
    return out


def raw_broker(bootstrap: str, frames: list, encoding: str, partitions: int) -> dict[str, Any]:
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
        for stream, seq, image in numbered(frames):
            producer.send(stream, seq, image)
    seen, deadline = 0, time.time() + 120
    while seen < len(frames) and time.time() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                decode_record(record.value, Frame)  # a consumer decodes what it reads
                seen += 1
    elapsed = time.time() - start
    consumer.close()
    return {"messages": seen, "per_s": seen / elapsed}


def fresh_config(config_path: Path, bootstrap: str, tmp: Path, tag: str) -> tuple[Path, Any]:
    config = with_broker(load_config(config_path), bootstrap)
    config = config.model_copy(
        update={
            "links": config.links.model_copy(update={"store": str(tmp / f"links-{tag}")}),
            "topics": config.topics.model_copy(
                update={"prefix": f"bench-{tag}-{uuid.uuid4().hex[:6]}"}
            ),
        }
    )
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    create_pipeline_topics(config)
    return path, config


def burst(
    bootstrap: str,
    config: PipelineConfig,
    frames: list,
    collector: ResultCollector,
    tag: str,
    full_ms: float | None = None,
) -> dict[str, Any]:
    """Produce every frame at once; frames/s and latency of their results."""
    names = config.topics.names()
    start = time.time()
    with FrameProducer(bootstrap, names.frames, encoding=config.source.encoding) as producer:
        ids = {producer.send(f"{tag}{s}", seq, img).frame_id for s, seq, img in numbered(frames)}
    complete = collector.wait_for(ids, 600)
    done = {f: collector.received_at[f] for f in ids if f in collector.received_at}
    results = [collector.results[f] for f in done]
    elapsed = max(done.values()) - start if done else float("nan")
    return {
        "frames": len(ids),
        "results": len(done),
        "complete": complete,
        "per_s": len(done) / elapsed if done else 0.0,
        "latency_ms": percentiles([(done[r.frame_id] - r.timestamp) * 1000 for r in results]),
        "degraded": sum(r.degraded for r in results),
        "executed_frames": executed_frames(results),
        **costs(results, full_ms),
    }


def executed_frames(results: list[FrameResult]) -> dict[str, int]:
    """Per model, on how many of these frames it really ran."""
    counts: dict[str, int] = defaultdict(int)
    for res in results:
        for r in res.results:
            if r.status == "executed":
                counts[r.model] += 1
    return dict(counts)


def solo_saved(run: dict[str, Any], solo_ms: dict[str, float]) -> float:
    """Compute saved by ``run``'s burst priced on ``solo_ms`` (each model's ms alone)."""
    spent = sum(n * solo_ms.get(m, 0.0) for m, n in run["executed_frames"].items())
    return 1.0 - spent / (run["results"] * sum(solo_ms.values()))


def model_ms(result: FrameResult) -> float:
    """ms of the models that ran on this frame, from their own timings (a batched call's time
    is shared by the frames of its batch)."""
    return sum(r.elapsed_ms or 0.0 for r in result.results if r.status == "executed")


def costs(results: list[FrameResult], full_ms: float | None = None) -> dict[str, Any]:
    """The models' own timings: ms of what ran per frame, the compute bound, and the compute
    saved against ``full_ms``, the ms of every model per frame measured on warm-up frames (all
    models, full batches) of the same run."""
    ran = [model_ms(res) for res in results]
    ms = float(np.mean(ran)) if ran else float("nan")
    executed = [sum(r.status == "executed" for r in res.results) for res in results]
    out = {
        "model_ms_per_frame": ms,
        "compute_bound_per_s": 1000.0 / ms if ms > 0 else float("inf"),
        "models_executed_per_frame": float(np.mean(executed)) if executed else 0.0,
    }
    if full_ms:
        out["full_model_ms_per_frame"] = full_ms
        out["compute_saved"] = 1.0 - ms / full_ms
    return out


def paced(
    bootstrap: str, config: PipelineConfig, frames: list, rate: float, collector: ResultCollector
) -> dict[str, Any]:
    """Latency when frames arrive at a steady ``rate`` below capacity."""
    names = config.topics.names()
    with FrameProducer(bootstrap, names.frames, encoding=config.source.encoding) as producer:
        ids = set()
        start = time.monotonic()
        for i, (stream, seq, image) in enumerate(numbered(frames)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ids.add(producer.send(f"paced-{stream}", seq, image).frame_id)
    collector.wait_for(ids, 180)
    lat = [
        (collector.received_at[f] - collector.results[f].timestamp) * 1000
        for f in ids
        if f in collector.received_at
    ]
    latency = percentiles(lat)
    return {
        "rate": rate,
        "frames": len(ids),
        "results": len(lat),
        "latency_ms": latency,
        "p99_over_p50": latency["p99"] / latency["p50"] if lat else float("nan"),
    }


def warm_up(bootstrap: str, config: PipelineConfig, frames: list, timeout: float = 300) -> None:
    """Stream ``frames`` at 30 per second as the warm-up, then wait (up to ``timeout`` s) until
    the controller's first plan is live: what a benchmark measures starts after it."""
    names = config.topics.names()
    with FrameProducer(bootstrap, names.frames, encoding=config.source.encoding) as producer:
        for stream, seq, image in numbered(frames):
            producer.send(f"warm-{stream}", seq, image)
            time.sleep(1 / 30)
    deadline = time.time() + timeout
    while read_control(bootstrap, config)[0].epoch < 1 and time.time() < deadline:
        time.sleep(1)


def mlink_pipeline(
    config_path: Path,
    bootstrap: str,
    tmp: Path,
    frames: list,
    warmup: list,
    workers: int,
    rate: float,
    paced_frames: int,
) -> dict[str, Any]:
    path, config = fresh_config(config_path, bootstrap, tmp, f"w{workers}")
    logs = RUNS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-w{workers}"
    procs = [
        WorkerProcess(path, bootstrap, logs / f"worker-{i}.log", f"w{i}") for i in range(workers)
    ]
    collector = ResultCollector(bootstrap, config.topics.names().results)
    try:
        ready = [p.wait_ready(300) for p in procs]
        warm_up(bootstrap, config, warmup)
        state = read_control(bootstrap, config)[0]
        warm = [r for r in collector.results.values() if r.epoch == 0]
        full_ms = float(np.mean([model_ms(r) for r in warm])) if warm else None
        report = burst(bootstrap, config, frames, collector, "b", full_ms)
        report.update(
            workers=workers,
            epoch=state.epoch,
            active=list(state.active),
            models=len(config.models),
            worker_ready_s=ready,
            duplicates=collector.duplicates,
            paced=paced(bootstrap, config, frames[:paced_frames], rate, collector),
        )
        return report
    finally:
        collector.close()
        for p in procs:
            p.stop()


def naive_pipeline(config_path: Path, bootstrap: str, tmp: Path, frames: list) -> dict[str, Any]:
    path, config = fresh_config(config_path, bootstrap, tmp, "naive")
    env = {"MLINK_CONFIG": str(path), "MLINK_BROKER": bootstrap, "F_DATADIR": str(tmp / "naive")}
    logs = RUNS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-naive"
    proc = FaustProcess("bench.naive_app", env, logs / "naive.log", "naive", cwd=Path.cwd())
    collector = ResultCollector(bootstrap, config.topics.names().results)
    try:
        proc.wait_ready(300)
        report = burst(bootstrap, config, frames, collector, "n")
        timings: dict[str, list[float]] = defaultdict(list)
        for result in collector.results.values():
            for r in result.results:
                timings[r.model].append(r.elapsed_ms or 0.0)
        report["model_ms"] = {m: float(np.mean(t)) for m, t in timings.items()}
        return report
    finally:
        collector.close()
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("deploy/configs/digits.yaml"))
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--workers", default="1", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--rate", type=float, default=50.0, help="steady rate, frames/s")
    parser.add_argument("--paced-frames", type=int, default=300)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config)
    source = list(iter_source(config.source))
    frames = [source[i % len(source)] for i in range(args.frames)]
    warmup = source[: args.warmup]
    report: dict[str, Any] = {"config": str(args.config), "frames": args.frames}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        report["raw_broker"] = raw_broker(
            broker.bootstrap, frames, config.source.encoding, config.topics.partitions
        )
        report["mlink"] = [
            mlink_pipeline(
                args.config,
                broker.bootstrap,
                tmp,
                frames,
                warmup,
                int(w),
                args.rate,
                args.paced_frames,
            )
            for w in args.workers.split(",")
        ]
        if not args.no_naive:
            report["naive"] = naive_pipeline(args.config, broker.bootstrap, tmp, frames)
            for run in report["mlink"]:
                run["compute_saved_solo"] = solo_saved(run, report["naive"]["model_ms"])
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    raw = report["raw_broker"]["per_s"]
    print(f"{report['config']}: {report['frames']} frames per burst")
    print(f"raw broker (kafka-python produce + consume, same frames): {raw:.0f} msg/s")
    for run in report["mlink"]:
        paced_run = run["paced"]
        print(
            f"MLink, {run['workers']} worker(s), epoch {run['epoch']} "
            f"({run['models_executed_per_frame']:.1f} of {run['models']} models per frame): "
            f"{run['per_s']:.1f} frames/s = {run['per_s'] / raw:.1%} of the raw broker, "
            f"{run['per_s'] / run['compute_bound_per_s']:.1%} of the compute bound "
            f"({run['compute_bound_per_s']:.0f}/s at {run['model_ms_per_frame']:.2f} ms of models "
            f"per frame); compute saved {run.get('compute_saved', float('nan')):.1%} of "
            f"{run.get('full_model_ms_per_frame', float('nan')):.2f} ms (every model, warm-up); "
            f"{run['degraded']} degraded, "
            f"{run['duplicates']} duplicates"
        )
        print(
            f"  steady {paced_run['rate']:.0f} frames/s: latency p50 "
            f"{paced_run['latency_ms']['p50']:.0f} ms, p99 {paced_run['latency_ms']['p99']:.0f} ms "
            f"(p99/p50 {paced_run['p99_over_p50']:.1f}; {paced_run['results']}/"
            f"{paced_run['frames']} results)"
        )
    if "naive" in report:
        naive = report["naive"]
        first = report["mlink"][0]
        saved = first["compute_saved_solo"]
        print(
            f"naive faust pipeline (every model on every frame, one agent): "
            f"{naive['per_s']:.1f} frames/s at {naive['model_ms_per_frame']:.2f} ms of models "
            f"per frame; MLink/naive = {first['per_s'] / naive['per_s']:.2f}x; MLink's burst "
            f"saved {saved:.1%} priced on the naive run's timings of each model alone "
            f"(target 0.8 / (1 - saved) = {0.8 / (1 - saved):.2f}x)"
        )


if __name__ == "__main__":
    main()
