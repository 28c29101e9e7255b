"""Shared fixtures: one embedded Tansu broker per test session, topics on it, faust workers.

Only tests that request ``broker`` (directly or through ``topic_factory`` / ``faust_worker``)
start the broker, so the rest of the suite runs without it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from filelock import FileLock

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas at import with deprecated importlib.resources
    # calls (218 DeprecationWarnings): import it once here, quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.processes import FaustProcess
from tests.s3 import S3Server, s3_server

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


class FaustWorker(FaustProcess):
    """A ``python -m faust -A <app> worker`` subprocess of a test, run from the repository root
    so test apps import; adds what tests read from the log."""

    def __init__(self, app: str, env: Mapping[str, str], log_path: Path, name: str) -> None:
        super().__init__(app, env, log_path, name, cwd=REPO_ROOT)

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


# -- the Node client (clients/node) ----------------------------------------------------------

NODE = shutil.which("node")
NODE_CLIENT = REPO_ROOT / "clients" / "node"
NO_NODE = (
    "node is not on PATH: the Node client tests need Node >= 18 and npm "
    "(e.g. apt-get install nodejs npm)"
)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """clients/node with its npm packages installed: ``npm ci`` into the ignored
    ``clients/node/node_modules``, skipped while a stamp says it matches package-lock.json.
    Tests that use it skip only when ``node`` is missing."""
    if NODE is None:
        pytest.skip(NO_NODE)
    with FileLock(NODE_CLIENT / ".npm-ci.lock"):  # two test processes may both need it
        return _npm_ci()


def _npm_ci() -> Path:
    lock = NODE_CLIENT / "package-lock.json"
    stamp = NODE_CLIENT / "node_modules" / ".mlink-lock.sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        return NODE_CLIENT
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not: install npm to run the Node client tests")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"npm ci failed in {NODE_CLIENT}:\n{done.stdout}\n{done.stderr}"
    stamp.write_text(digest)
    return NODE_CLIENT


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible server (moto) on loopback, shared by the session."""
    with s3_server() as server:
        yield server
