"""The worker supervisor with stand-in processes: a dead worker is restarted with backoff, a
worker that never becomes ready is a crash loop, one killed while serving is a recovery."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlink.deploy.supervisor import WorkerSupervisor


class Stand:
    """What the supervisor needs of a worker process: ``proc``, ``health_path``, ``stop``."""

    def __init__(self, path: Path, code: str) -> None:
        self.health_path = path
        self.log_path = path.with_suffix(".log")
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        self.started = time.monotonic()

    def log_tail(self, lines: int = 30) -> str:
        return f"stand-in {self.proc.pid}"

    def ready(self) -> None:
        state = {
            "worker": "w",
            "pid": self.proc.pid,
            "ready": True,
            "started_at": time.time(),
            "last_heartbeat": time.time(),
        }
        self.health_path.write_text(json.dumps(state))

    def wait_ready(self, timeout: float = 10.0) -> float:
        return 0.0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def wait(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_worker_that_cannot_start_is_restarted_with_backoff_and_reported(tmp_path) -> None:
    made: list[float] = []

    def make(slot: int, generation: int) -> Stand:
        made.append(time.monotonic())
        return Stand(tmp_path / f"w{slot}.{generation}.json", "raise SystemExit(3)")

    supervisor = WorkerSupervisor(make, 1, backoff_initial_s=0.1, backoff_max_s=0.4, poll_s=0.02)
    try:
        assert wait(lambda: supervisor.restarts >= 4)
        assert supervisor.crash_loops == 1
        gaps = [b - a for a, b in itertools.pairwise(made)]
        assert gaps[2] > gaps[0]  # the delay doubles
    finally:
        supervisor.stop()


def test_a_worker_killed_while_serving_is_a_recovery_not_a_loop(tmp_path) -> None:
    made: list[Stand] = []

    def make(slot: int, generation: int) -> Stand:
        worker = Stand(tmp_path / f"w{slot}.{generation}.json", "import time; time.sleep(60)")
        worker.ready()
        made.append(worker)
        return worker

    supervisor = WorkerSupervisor(make, 1, backoff_initial_s=0.05, poll_s=0.02)
    try:
        for n in range(1, 5):
            assert wait(lambda n=n: len(made) == n)
            time.sleep(0.1)  # serving
            os.kill(made[-1].proc.pid, 9)
            assert wait(lambda n=n: supervisor.restarts == n)
        assert supervisor.crash_loops == 0
    finally:
        supervisor.stop()


def test_waiting_for_ready_outlasts_a_worker_that_dies_once_while_starting(tmp_path) -> None:
    def make(slot: int, generation: int) -> Stand:
        if generation == 0:  # a broker not yet answering, a model that failed to load once
            return Stand(tmp_path / f"w{slot}.0.json", "raise SystemExit(1)")
        worker = Stand(tmp_path / f"w{slot}.{generation}.json", "import time; time.sleep(60)")
        worker.ready()
        return worker

    supervisor = WorkerSupervisor(make, 2, backoff_initial_s=0.05, poll_s=0.02)
    try:
        assert supervisor.wait_ready(timeout=30) == [0.0, 0.0]
        assert supervisor.restarts == 2
        assert supervisor.crash_loops == 0
    finally:
        supervisor.stop()


def test_waiting_for_ready_ends_on_a_crash_loop_with_the_workers_log(tmp_path) -> None:
    def make(slot: int, generation: int) -> Stand:
        return Stand(tmp_path / f"w{slot}.{generation}.json", "raise SystemExit(3)")

    supervisor = WorkerSupervisor(make, 1, backoff_initial_s=0.05, backoff_max_s=0.1, poll_s=0.02)
    try:
        with pytest.raises(RuntimeError, match=r"worker 0 is in a crash loop[\s\S]*stand-in"):
            supervisor.wait_ready(timeout=60)
    finally:
        supervisor.stop()


def test_waiting_for_ready_times_out_on_a_worker_that_never_says_so(tmp_path) -> None:
    def make(slot: int, generation: int) -> Stand:
        return Stand(tmp_path / f"w{slot}.{generation}.json", "import time; time.sleep(60)")

    supervisor = WorkerSupervisor(make, 1, poll_s=0.02)
    try:
        with pytest.raises(TimeoutError, match="worker 0 not ready"):
            supervisor.wait_ready(timeout=0.5)
    finally:
        supervisor.stop()
