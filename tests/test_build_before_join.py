"""A worker builds its models before it joins its consumer group: one that joined first took
partitions from a running worker and left their cameras waiting through the build (45-57 s in
a helper's rollout audit, stop 45), and a stop during the build waited out the stop deadline
and blamed the broker. Real broker and workers."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from mlink.deploy.health import read_health
from mlink.deploy.topics_setup import create_pipeline_topics
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import APP, FAST_MODELS, one_worker, worker_env, write_config

JOINED = "Executing _on_partitions_assigned"  # faust's line when the group hands out partitions


def slow_build(seconds: float) -> dict[str, Any]:
    return {
        "name": "slow_build",
        "factory": "tests.misbehaving_models:slow_factory",
        "args": {"seconds": seconds},
        "output": {"kind": "vector", "size": 2, "task": "softmax"},
        "cost": {"ms": 1.0},
    }


def _config(tmp_path: Path, tag: str, build_s: float, **runtime: float) -> tuple[Path, Any]:
    return write_config(
        tmp_path,
        tag,
        FAST_MODELS,
        partitions=2,
        warmup_frames=8,
        output_timeout_s=5.0,
        extra_models=[slow_build(build_s)],
        runtime=runtime,
    )


def test_a_worker_joins_its_group_only_once_its_models_are_built(
    broker: Any, tmp_path: Path
) -> None:
    path, config = _config(tmp_path, "buildjoin", build_s=8.0)
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    collector.close()
    try:
        worker.wait_ready(timeout=180)
        log = worker.log()
        assert "built 4 models" in log and JOINED in log, worker.log_tail()
        assert log.index("built 4 models") < log.index(JOINED), worker.log_tail(80)
    finally:
        worker.stop()


def test_a_stop_during_the_build_ends_at_once_and_says_so(broker: Any, tmp_path: Path) -> None:
    path, config = _config(tmp_path, "buildstop", build_s=300.0, stop_timeout_s=90.0)
    worker, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    collector.close()
    try:
        deadline = time.monotonic() + 120
        while "building 4 models" not in worker.log() and time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.log_tail()
            time.sleep(0.5)
        assert "building 4 models" in worker.log(), worker.log_tail()
        time.sleep(2.0)  # inside the 300 s build
        stopped_at = time.monotonic()
        code = worker.stop(timeout=150)
        took = time.monotonic() - stopped_at
        log = worker.log()
        assert "still stopping" not in log, worker.log_tail(40)  # the stop deadline's message
        assert "stopped while building" in log, worker.log_tail(40)
        assert JOINED not in log, worker.log_tail(40)
        assert code == 0, (code, worker.log_tail(40))
        print(f"\nstopped {took:.1f} s after SIGTERM, mid-build")
    finally:
        worker.stop()


def test_a_running_worker_keeps_answering_while_a_new_one_builds(
    broker: Any, tmp_path: Path
) -> None:
    """The rollout's case: the new worker takes no partition while it builds."""
    path, config = _config(tmp_path, "buildroll", build_s=20.0)
    first, collector = one_worker(broker.bootstrap, path, config, tmp_path)
    second = None
    try:
        first.wait_ready(timeout=180)
        second = FaustWorker(
            APP, worker_env(path, broker.bootstrap, tmp_path / "faust-2"), tmp_path / "w2.log", "w2"
        )
        deadline = time.monotonic() + 120
        while "building 4 models" not in second.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "building 4 models" in second.log(), second.log_tail()
        time.sleep(5.0)
        assert JOINED not in second.log(), second.log_tail(60)  # still building, no partitions
        frames_topic = config.topics.names().frames
        assert first.assigned_partitions(frames_topic) == {0, 1}, first.log_tail(60)
        second.wait_ready(timeout=180)
        log = second.log()
        assert log.index("built 4 models") < log.index(JOINED), second.log_tail(80)
    finally:
        collector.close()
        first.stop()
        if second is not None:
            second.stop()


def test_a_worker_serves_metrics_and_beats_before_it_has_partitions(
    broker: Any, tmp_path: Path
) -> None:
    """faust starts an app's tasks and timers at its first assignment, so a worker whose group
    never gave it one (a group that never settles, docs/broker.md) served no metrics and froze
    its heartbeat (stop 47's audit). The endpoint is up during the build, before the join, and
    the health file beats and says how long the worker has waited for partitions."""
    path, config = _config(tmp_path, "early", build_s=15.0, metrics_port=0)
    health_path = tmp_path / "w.health.json"
    create_pipeline_topics(config, broker.bootstrap)
    env = {
        **worker_env(path, broker.bootstrap, tmp_path / "faust"),
        "MLINK_HEALTH": str(health_path),
    }
    worker = FaustWorker(APP, env, tmp_path / "w.log", "w0")
    try:
        deadline = time.monotonic() + 120
        while "metrics endpoint on" not in worker.log() and time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.log_tail()
            time.sleep(0.5)
        log = worker.log()
        assert "building 4 models" in log and JOINED not in log, worker.log_tail()
        url = re.search(r"metrics endpoint on (\S+)", log).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert "mlink_group_unsynced_seconds" in response.read().decode()
        worker.wait_ready(timeout=180)
        first = read_health(health_path)
        time.sleep(5.0)
        later = read_health(health_path)
        assert first and later and later.last_heartbeat > first.last_heartbeat
        assert later.extra.get("group_unsynced_s") == 0.0 and later.metrics_port
    finally:
        worker.stop()
