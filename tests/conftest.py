"""Shared fixtures: one embedded Tansu broker per test session, topics on it, faust workers.

Only tests that request ``broker`` (directly or through ``topic_factory`` / ``faust_worker``)
start the broker, so the rest of the suite runs without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas at import with deprecated importlib.resources
    # calls (218 DeprecationWarnings): import it once here, quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401

from mlink.deploy.broker import EmbeddedBroker, pdeathsig_preexec
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the logs of the test's faust workers to the report of a failed test."""
    report = yield
    if report.failed:
        for worker in getattr(item, "_faust_workers", ()):
            code = worker.proc.poll()
            state = "running" if code is None else f"exit {code}"
            report.sections.append(
                (f"faust worker {worker.name} ({state}) log {worker.log_path}", worker.log())
            )
    return report


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker on a free loopback port, shared by the whole session."""
    embedded = EmbeddedBroker(port=0).start()
    try:
        yield embedded
    finally:
        embedded.stop()


TopicFactory = Callable[..., str]


@pytest.fixture
def topic_factory(broker: EmbeddedBroker) -> TopicFactory:
    """``make(prefix="t", partitions=1, config=None) -> name``: a new, uniquely named topic."""

    def make(
        prefix: str = "t", partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        ensure_topics(broker.bootstrap, [TopicSpec(name, partitions, dict(config or {}))])
        return name

    return make


class FaustWorker:
    """A ``python -m faust -A <app> worker`` subprocess with its log in a file.

    Started in its own process group (and with a death signal, so it cannot outlive pytest);
    ``ready_seconds`` is the time from spawn to faust's ``[^Worker]: Ready`` log line.
    """

    READY_LINE = "[^Worker]: Ready"

    def __init__(self, app: str, env: Mapping[str, str], log_path: Path, name: str) -> None:
        self.app = app
        self.name = name
        self.log_path = log_path
        self.started = time.monotonic()
        self.ready_seconds: float | None = None
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        cmd = [sys.executable, "-m", "faust", "-A", app, "worker", "--without-web", "-l", "info"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(signal.SIGTERM),
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until the worker logs Ready; return seconds since spawn."""
        deadline = self.started + timeout
        while self.READY_LINE not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"faust worker {self.name} exited with {self.proc.returncode} before "
                    f"it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"faust worker {self.name} not ready after {timeout}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        if self.ready_seconds is None:
            self.ready_seconds = time.monotonic() - self.started
        return self.ready_seconds

    def assigned_partitions(self, topic: str) -> set[int]:
        """Partitions of ``topic`` in the worker's last logged assignment table."""
        tables = re.findall(
            rf"\|\s*{re.escape(topic)}\s*\|\s*\{{([^}}]*)\}}\s*\|", self.log(), flags=re.M
        )
        if not tables:
            return set()
        parts: set[int] = set()
        for chunk in tables[-1].split(","):
            chunk = chunk.strip()
            if "-" in chunk:
                lo, hi = chunk.split("-")
                parts.update(range(int(lo), int(hi) + 1))
            elif chunk:
                parts.add(int(chunk))
        return parts

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> int:
        """SIGKILL, as a crash would; return the exit code."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        return self.proc.wait()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (faust shuts down cleanly in ~1 s); SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        return self.proc.wait()


@pytest.fixture
def faust_worker(
    broker: EmbeddedBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaustWorker]]:
    """``start(app, env=None, name=None) -> FaustWorker`` on the session broker.

    ``MLINK_FAUST_BROKER`` is set to the broker URL. Every worker is stopped (SIGTERM) at the
    end of the test; when the test fails, each worker's log is shown in the failure report.
    """
    workers: list[FaustWorker] = []
    request.node._faust_workers = workers

    def start(
        app: str, env: Mapping[str, str] | None = None, name: str | None = None
    ) -> FaustWorker:
        name = name or f"w{len(workers)}"
        worker = FaustWorker(
            app,
            {"MLINK_FAUST_BROKER": broker.url, "F_DATADIR": str(tmp_path / "faust"), **(env or {})},
            tmp_path / f"faust-{name}.log",
            name,
        )
        workers.append(worker)
        return worker

    yield start

    for worker in workers:
        worker.stop()
