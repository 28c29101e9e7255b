"""A rolling restart of the worker that trains, under its full first training.

    PYTHONPATH=. python bench/trainer_handover.py [CONFIG] [--backlog] [--kill]

Runs the config's pipeline (default deploy/configs/video-demo.yaml) on the embedded broker with
two workers and sends its source at its rate (``--backlog``: every frame at once, so the restart
lands in a backlog). As soon as the worker that holds the samples partition starts the full
first links (after the quick ones), it is stopped (SIGTERM; ``--kill``: SIGKILL, a crash) and
started again, as a rolling restart would. Prints when the full links came and from which
worker, how many samples the new holder read back (docs/model-execution.md, "The samples it had
are read back"), when each plan went live, and whether every frame came back once.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from pathlib import Path

from mlink.deploy.config import load_config
from mlink.deploy.pipeline_status import dead_letter_report
from mlink.deploy.processes import WorkerProcess
from mlink.deploy.runner import ResultCollector, broker_for
from mlink.deploy.source import FrameProducer, iter_source, send_all
from mlink.deploy.topics_setup import create_pipeline_topics

FULL = re.compile(r"trained links v(\d+) on (\d+) samples in ([\d.]+) s")
PLANNED = re.compile(r"^\[([\d-]+ [\d:]+),(\d+)\].*?now at epoch (\d+): .*?links=v(\d+)", re.M)
READ_BACK = re.compile(r"read back (\d+) samples before offset (\d+) .*?, (\d+) of them new")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, nargs="?", default="deploy/configs/video-demo.yaml")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--backlog", action="store_true", help="send every frame at once")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the trainer, not SIGTERM")
    args = parser.parse_args()
    config = load_config(args.config)
    logs = Path(tempfile.mkdtemp(prefix="trainer-handover-"))
    with broker_for(config) as (cfg, _):
        create_pipeline_topics(cfg)
        names = cfg.topics.names()

        def start(name: str) -> WorkerProcess:
            return WorkerProcess(args.config, cfg.broker, logs / f"{name}.log", name)

        workers = [start("w0"), start("w1")]
        for w in workers:
            w.wait_ready()
        collector = ResultCollector(
            cfg.broker, names.results, client=cfg.consumer_kwargs(), only_new=True
        )
        ids: list[str] = []
        frames = list(iter_source(cfg.source))

        def send() -> None:
            with FrameProducer.for_pipeline(cfg, cfg.broker) as producer:
                rate = None if args.backlog else cfg.source.rate
                send_all(producer, frames, rate, lambda f: ids.append(f.frame_id))

        sender = threading.Thread(target=send, daemon=True)
        began = time.monotonic()
        sender.start()
        try:
            deadline = began + args.timeout
            trainer = None
            while trainer is None and time.monotonic() < deadline:
                time.sleep(0.2)
                trainer = next((w for w in workers if "training links on" in w.log()), None)
            if trainer is None:
                raise SystemExit("no full training started")
            stopped_at = time.monotonic()
            print(f"full first training started at {stopped_at - began:.1f} s on {trainer.name}")
            code = trainer.kill() if args.kill else trainer.stop()
            how = "killed" if args.kill else "stopped"
            took = time.monotonic() - stopped_at
            print(f"{trainer.name} {how} in {took:.1f} s (exit {code})")
            workers.append(start(trainer.name + ".1"))
            workers[-1].wait_ready()
            print(f"{workers[-1].name} ready {time.monotonic() - stopped_at:.1f} s after the stop")
            others = [w for w in workers if w is not trainer]
            full = None
            while full is None and time.monotonic() < deadline:
                time.sleep(0.5)
                full = next(
                    ((w, m) for w in others if (m := FULL.search(w.log())) is not None), None
                )
            saved_after = time.monotonic() - stopped_at
            sender.join()
            complete = collector.wait_for(set(ids), max(1.0, deadline - time.monotonic()))
            for w in others:
                for found in READ_BACK.finditer(w.log()):
                    print(f"{w.name}: read back {found.group(1)} samples before offset "
                          f"{found.group(2)}, {found.group(3)} new to its buffer")  # fmt: skip
            if full is None:
                print("no full links after the stop")
            else:
                w, m = full
                print(
                    f"full links v{m.group(1)} from {w.name} on {m.group(2)} samples, trained in "
                    f"{m.group(3)} s, saved {saved_after:.0f} s after the stop"
                )
            plans = sorted(
                (m.group(1), int(m.group(3)), m.group(4), w.name)
                for w in workers
                for m in PLANNED.finditer(w.log())
            )
            firsts = {}
            for at, epoch, version, name in plans:  # each epoch's first worker to apply it
                firsts.setdefault(epoch, (at, version, name))
            wall = time.time() - (time.monotonic() - stopped_at)  # the stop, in wall time
            for epoch, (at, version, name) in sorted(firsts.items()):
                after = time.mktime(time.strptime(at, "%Y-%m-%d %H:%M:%S")) - wall
                print(
                    f"epoch {epoch} (links v{version}) applied by {name} {after:+.0f} s after stop"
                )
            answered = len(set(ids) & collector.results.keys())
            letters = dead_letter_report(cfg.broker, cfg).get("count")
            print(
                f"frames: {len(ids)} sent, {answered} answered ({'all' if complete else 'NOT all'})"
                f", {collector.duplicates_of(ids)} answered twice (deduplicated), "
                f"{letters} dead letters; the sender took {time.monotonic() - began:.0f} s in all"
            )
            print(f"worker logs: {logs}")
        finally:
            collector.close()
            for w in workers:
                w.stop()


if __name__ == "__main__":
    main()
