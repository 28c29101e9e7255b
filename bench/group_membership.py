"""How long the broker keeps listing a worker that left its consumer group.

    PYTHONPATH=. python bench/group_membership.py [--for-s 200] [--kill]

Starts an embedded Tansu broker and one real worker on a small digits pipeline, stops the worker
(SIGTERM, or SIGKILL with ``--kill``) and asks the broker every 5 s how many members the group
has, as ``mlink status``, ``mlink exporter`` and the prefix check (``operators/prefix_owner``)
ask it. Kafka drops a member that leaves at once; docs/broker.md has what Tansu does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.group_members import group_members
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import APP, FAST_MODELS, worker_env, write_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--for-s", type=float, default=200.0, help="ask this long at most")
    parser.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, EmbeddedBroker() as broker:
        tmp = Path(scratch)
        path, config = write_config(
            tmp, "members", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
        )
        create_pipeline_topics(config, broker.bootstrap)
        worker = FaustWorker(APP, worker_env(path, broker.bootstrap, tmp / "f"), tmp / "w.log", "w")
        worker.wait_ready()
        print("running:", group_members(broker.bootstrap, config), flush=True)
        worker.kill() if args.kill else worker.stop()
        print("stopped with", "SIGKILL" if args.kill else "SIGTERM", flush=True)
        started = time.monotonic()
        while time.monotonic() - started < args.for_s:
            group = group_members(broker.bootstrap, config) or {}
            print(
                f"{time.monotonic() - started:6.1f} s  {group.get('state')}  "
                f"{group.get('workers')} members",
                flush=True,
            )
            if group.get("workers") == 0:
                break
            time.sleep(5.0)


if __name__ == "__main__":
    main()
