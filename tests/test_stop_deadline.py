"""A worker asked to stop after its broker is gone exits by its deadline and says why (its own
embedded broker, killed mid-test, and a real worker process); the pure part without a broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.operators.stop_deadline import STOP_DEADLINE_EXIT, end_stuck_stop
from tests.conftest import REPO_ROOT, FaustWorker
from tests.test_pipeline_e2e import APP, FAST_MODELS, worker_env, write_config

# faust's own stop with the broker gone took 65 s (mode's 60 s service timeout); the deadline
# here is 3 s, so anything well under a minute shows the deadline, not faust, ended the worker
DEADLINE_S = 3.0
ENDED_WITHIN_S = 40.0


def test_a_worker_whose_broker_is_gone_exits_by_its_stop_deadline(tmp_path: Path) -> None:
    with EmbeddedBroker(port=0) as broker:
        path, config = write_config(
            tmp_path, "stop", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
        )
        data = yaml.safe_load(path.read_text())
        data["runtime"]["stop_timeout_s"] = DEADLINE_S
        path.write_text(yaml.safe_dump(data))
        create_pipeline_topics(config, broker.bootstrap)
        env = worker_env(path, broker.bootstrap, tmp_path / "faust")
        worker = FaustWorker(APP, env, tmp_path / "w.log", "w0")
        try:
            worker.wait_ready()
        except BaseException:
            worker.stop()
            raise
    # the broker is gone now; the worker keeps retrying it until asked to stop
    asked = time.monotonic()
    try:
        code = worker.stop(timeout=ENDED_WITHIN_S)
        took = time.monotonic() - asked
    finally:
        worker.kill()
    log = worker.log()
    assert "a broker that does not answer" in log, worker.log_tail()
    assert code == STOP_DEADLINE_EXIT, (code, worker.log_tail())
    assert took < ENDED_WITHIN_S, took


def test_the_deadline_starts_when_the_app_starts_to_stop(tmp_path: Path) -> None:
    """In a process of its own: the deadline ends it mid-stop, with the reason, and not before."""
    script = textwrap.dedent(
        """
        import asyncio, logging, time
        from mlink.operators.stop_deadline import end_stuck_stop

        class App:
            async def on_stop(self):
                print("stopping", flush=True)
                await asyncio.sleep(30)  # a stop that hangs, as faust's on a dead broker

        logging.basicConfig()
        app = App()
        end_stuck_stop(app, 0.5)
        time.sleep(1.0)  # no stop asked: nothing happens
        print("alive", flush=True)
        asyncio.run(app.on_stop())
        print("unreachable", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == STOP_DEADLINE_EXIT, done
    assert done.stdout.split() == ["alive", "stopping"]
    assert "a broker that does not answer" in done.stderr


def _crashed_past_the_deadline(reason: str) -> subprocess.CompletedProcess[str]:
    """A process whose app crashed with ``reason`` (a Python expression) and whose stop then
    hangs past a 0.5 s deadline."""
    script = textwrap.dedent(
        f"""
        import asyncio, logging
        from aiokafka.errors import KafkaError
        from mlink.operators.stop_deadline import end_stuck_stop

        class App:
            crash_reason = {reason}

            async def on_stop(self):
                await asyncio.sleep(30)

        logging.basicConfig()
        app = App()
        end_stuck_stop(app, 0.5)
        asyncio.run(app.on_stop())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_a_crashed_worker_that_outlives_its_deadline_ends_with_the_crash_reason() -> None:
    """A worker that refused to start (another pipeline on its prefix) waited out the deadline
    and its last line blamed a broker that answered (stop 46's audit)."""
    done = _crashed_past_the_deadline(
        """RuntimeError("topics prefix p.control is in use by pipeline 'x'")"""
    )
    assert done.returncode == STOP_DEADLINE_EXIT, done
    last = done.stderr.strip().splitlines()[-1]
    assert "worker stopped: RuntimeError: topics prefix p.control is in use" in last, done.stderr
    assert "broker" not in done.stderr and "after the worker crashed" in done.stderr


def test_a_worker_that_crashed_on_a_gone_broker_says_the_broker_and_the_reason() -> None:
    """CI, stop 47: with the broker killed, faust crashed the app on a KafkaError before the
    deadline; the deadline said only "after the worker crashed", hiding that it was the
    broker."""
    done = _crashed_past_the_deadline(
        'KafkaError("Unable to get cluster metadata over all known brokers")'
    )
    assert done.returncode == STOP_DEADLINE_EXIT, done
    assert "a broker that does not answer" in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "worker stopped: KafkaError" in last and "cluster metadata" in last, done.stderr


def test_a_deadline_must_be_positive() -> None:
    class App:
        async def on_stop(self) -> None:
            return None

    with pytest.raises(ValueError, match="deadline_s must be > 0"):
        end_stuck_stop(App(), 0)
