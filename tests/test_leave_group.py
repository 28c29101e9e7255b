"""A lone worker that stops leaves its consumer group on the embedded broker: Tansu numbers a
group's first generation 0, aiokafka left only from generation 1 on, and the broker listed the
stopped worker for good (21 minutes in stop 46's audit): its prefix stayed refused, and `mlink
status` counted a worker that was not there. Real broker and worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlink.deploy.group_members import group_members
from tests.test_pipeline_e2e import FAST_MODELS, one_worker, write_config

LEFT_WITHIN_S = 60.0  # Kafka drops a member that leaves at once; Tansu did not in 195 s


def test_a_stopped_lone_worker_leaves_its_group(broker: Any, tmp_path: Path) -> None:
    path, config = write_config(
        tmp_path, "leave", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    collector.close()
    try:
        worker.wait_ready(timeout=180)
        assert (group_members(broker.bootstrap, config) or {}).get("workers") == 1
        assert "generation 0" in worker.log(), worker.log_tail()  # the case aiokafka skipped
        assert worker.stop() == 0
        assert "LeaveGroup request succeeded" in worker.log(), worker.log_tail()
        deadline = time.monotonic() + LEFT_WITHIN_S
        group: dict[str, Any] = {}
        while time.monotonic() < deadline:
            group = group_members(broker.bootstrap, config) or {}
            if group.get("workers") == 0:
                break
            time.sleep(2.0)
        assert group.get("workers") == 0, group
    finally:
        worker.stop()
