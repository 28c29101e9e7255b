"""A worker under a long steady load: does its memory stay flat, and does every frame come back?

    python bench/soak.py [--config deploy/configs/digits.yaml] [--minutes 10] [--rate 60]
                         [--streams 20000] [--stream-synthesis] [--json]

One worker on the embedded broker warms up as in ``bench/pipeline.py`` until its first budgeted
plan is live; then frames arrive at ``--rate`` for ``--minutes``, the source cycled, each frame
from the next of ``--streams`` camera ids in turn (so per-stream state sees far more streams
than its bounds keep). Every ``--every`` seconds it samples the resident memory of the worker
and its child processes (``/proc``), the frames produced and the results back. It reports the
memory at the start of the soak and at its end, the slope over the second half (MB per minute),
results and duplicates, and latency per window. Bounded: it stops after ``--minutes`` plus a
drain of at most two minutes, on loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.config import load_config
from mlink.deploy.processes import WorkerProcess
from mlink.deploy.runner import ResultCollector, read_control
from mlink.deploy.source import FrameProducer, iter_source

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/soak.py` from anywhere: bench/ is not installed
    sys.path.insert(0, str(ROOT))

from bench.pipeline import RUNS, fresh_config, percentiles, warm_up  # noqa: E402

DRAIN_S = 120.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and every process below it, in MB (Linux ``/proc``)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):  # exited between listing and reading
            continue
    return total / 1024.0


def slope_mb_per_min(samples: list[dict[str, float]]) -> float:
    """Least-squares slope of memory over the second half of the soak."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return float("nan")
    t = np.array([s["t"] for s in half]) / 60.0
    mb = np.array([s["rss_mb"] for s in half])
    return float(np.polyfit(t, mb, 1)[0])


def soak(args: argparse.Namespace, bootstrap: str, tmp: Path) -> dict[str, Any]:
    config = load_config(args.config)
    source = list(iter_source(config.source))
    path, config = fresh_config(args.config, bootstrap, tmp, "soak")
    if args.stream_synthesis:
        config = config.model_copy(
            update={"links": config.links.model_copy(update={"stream": True})}
        )
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    logs = RUNS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    worker = WorkerProcess(path, bootstrap, logs / "worker-0.log", "soak")
    names = config.topics.names()
    collector = ResultCollector(bootstrap, names.results)
    try:
        worker.wait_ready(300)
        warm_up(bootstrap, config, source[: args.warmup])
        seqs: dict[str, int] = defaultdict(int)
        sent: dict[str, float] = {}
        start = time.monotonic()

        def sample() -> dict[str, float]:
            return {
                "t": time.monotonic() - start,
                "rss_mb": tree_rss_mb(worker.proc.pid),
                "produced": len(sent),
                "results": sum(f in collector.results for f in sent),
            }

        samples: list[dict[str, float]] = []
        end = start + args.minutes * 60
        next_sample = start
        with FrameProducer(bootstrap, names.frames, encoding=config.source.encoding) as producer:
            i = 0
            while time.monotonic() < end:
                delay = start + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stream = f"cam-{i % args.streams}"
                _, image = source[i % len(source)]
                frame = producer.send(stream, seqs[stream], image)
                seqs[stream] += 1
                sent[frame.frame_id] = time.monotonic() - start
                i += 1
                if time.monotonic() >= next_sample:
                    samples.append(sample())
                    next_sample += args.every
        complete = collector.wait_for(set(sent), DRAIN_S)
        samples.append(sample())
        back = [f for f in sent if f in collector.results]
        windows: dict[int, list[float]] = defaultdict(list)
        for f in back:
            r = collector.results[f]
            latency = (collector.received_at[f] - r.timestamp) * 1000
            windows[int(sent[f] // 60)].append(latency)
        return {
            "config": str(args.config),
            "stream_synthesis": bool(config.links.stream),
            "minutes": args.minutes,
            "rate": args.rate,
            "streams": args.streams,
            "produced": len(sent),
            "results": len(back),
            "complete": complete,
            "duplicates": collector.duplicates,
            "degraded": sum(collector.results[f].degraded for f in back),
            "epoch": read_control(bootstrap, config)[0].epoch,
            "rss_mb_start": samples[0]["rss_mb"],
            "rss_mb_end": samples[-1]["rss_mb"],
            "rss_mb_max": max(s["rss_mb"] for s in samples),
            "slope_mb_per_min": slope_mb_per_min(samples[:-1]),
            "latency_ms_by_minute": {m: percentiles(v) for m, v in sorted(windows.items())},
            "samples": samples,
        }
    finally:
        collector.close()
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("deploy/configs/digits.yaml"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=60.0, help="frames/s during the soak")
    parser.add_argument("--streams", type=int, default=20000, help="distinct camera ids")
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--stream-synthesis", action="store_true", help="links.stream: true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_dir:
        report = soak(args, broker.bootstrap, Path(tmp_dir))
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return
    print(
        f"{report['config']}, stream synthesis {report['stream_synthesis']}: "
        f"{report['produced']} frames in {report['minutes']:g} min at {report['rate']:g}/s over "
        f"{report['streams']} streams; {report['results']} results "
        f"({report['duplicates']} duplicates, {report['degraded']} degraded), epoch "
        f"{report['epoch']}"
    )
    print(
        f"worker memory: {report['rss_mb_start']:.0f} MB at the start, "
        f"{report['rss_mb_end']:.0f} MB at the end, {report['rss_mb_max']:.0f} MB at most; "
        f"{report['slope_mb_per_min']:+.2f} MB/min over the second half"
    )
    for minute, lat in report["latency_ms_by_minute"].items():
        print(f"  minute {minute}: latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")


if __name__ == "__main__":
    main()
