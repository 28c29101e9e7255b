"""The consumers in docs/consumers.md, extracted from the page and run against results on the
session's broker, so the documentation cannot drift from what the pipeline writes.

Each snippet is run as written, except for the broker address, the topic and the group id,
which point it at this test's topic. It runs until it has printed a line for every model of
every result (the snippets, like any dashboard, never stop by themselves), then is killed.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from mlink.topics.codec import encode_record
from mlink.topics.records import FrameResult, ModelResult
from tests.conftest import NODE, REPO_ROOT

pytestmark = pytest.mark.broker

DOC = REPO_ROOT / "docs" / "consumers.md"


def snippet(language: str) -> str:
    """The one fenced code block of ``language`` on the page."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    assert len(blocks) == 1, f"docs/consumers.md should have one {language} block"
    return blocks[0]


def aimed(code: str, bootstrap: str, topic: str, *, earliest: str = "") -> str:
    """The snippet pointed at this test's broker, topic and a new consumer group, reading from
    the start (``earliest`` is how the snippet's language says so)."""
    for placeholder in ("localhost:9092", "mlink.results", '"dashboard"'):
        assert placeholder in code, f"the snippet no longer uses {placeholder}"
    return (
        code.replace("localhost:9092", bootstrap)
        .replace("mlink.results", topic)
        .replace('"dashboard"', f'"doc-{uuid.uuid4().hex[:8]}"{earliest}')
    )


def results() -> list[FrameResult]:
    out = []
    for seq in range(3):
        out.append(
            FrameResult(
                frame_id=f"cam-1:{seq}",
                stream_id="cam-1",
                seq=seq,
                epoch=1,
                results=(
                    ModelResult(
                        model="detector",
                        output=np.array([0.25, 0.75 + seq], np.float32),
                        status="executed",
                        elapsed_ms=3.0,
                    ),
                    ModelResult(
                        model="counter",
                        output=np.array([float(seq)], np.float32),
                        status="synthesized",
                        link_version=4,
                        sources=("detector",),
                        agreement=0.875,
                    ),
                    ModelResult(
                        model="pose",
                        output=np.zeros(0, np.float32),
                        status="missing",
                        error="timed out",
                    ),
                ),
                degraded=True,
                emitted_at=time.time(),
                timestamp=time.time() - 0.05,
            )
        )
    return out


@pytest.fixture
def results_topic(topic_factory: Any, broker: Any) -> tuple[str, list[FrameResult]]:
    topic = topic_factory("doc-results", partitions=2)
    sent = results()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        for result in sent:
            producer.send(topic, key=result.stream_id.encode(), value=encode_record(result)).get(30)
    finally:
        producer.close()
    return topic, sent


def read_lines(command: list[str], cwd: Path, count: int, timeout: float = 90.0) -> list[str]:
    """Start the consumer, collect ``count`` stdout lines, then kill it. kafkajs's own JSON log
    lines (it logs INFO to stdout) are left out."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    got: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=0.5).rstrip("\n")
            except queue.Empty:
                continue
            if not line.startswith('{"level":'):
                got.append(line)
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert len(got) == count, f"got {len(got)} of {count} lines: {got}\nstderr:\n{stderr}"
    return got


def expected(sent: list[FrameResult]) -> list[tuple[Any, ...]]:
    return sorted(
        (f.frame_id, r.model, r.status, r.link_version, r.agreement, r.output.tolist())
        for f in sent
        for r in f.results
    )


def test_the_python_consumer_reads_every_result_without_mlink(
    results_topic: tuple[str, list[FrameResult]], broker: Any, tmp_path: Path
) -> None:
    topic, sent = results_topic
    code = aimed(
        snippet("python"), broker.bootstrap, topic, earliest=', auto_offset_reset="earliest"'
    )
    code = "import sys\nsys.modules['mlink'] = None  # importing mlink would fail\n" + code
    script = tmp_path / "consumer.py"
    script.write_text(code)
    lines = read_lines([sys.executable, str(script)], tmp_path, count=9)
    printed = []
    for line in lines:
        frame_id, model, status, link_version, agreement, output = line.split(" ", 5)
        values = (ast.literal_eval(v) for v in (link_version, agreement, output))
        printed.append((frame_id, model, status, *values))
    assert sorted(printed) == expected(sent)


def test_the_node_consumer_reads_every_result(
    results_topic: tuple[str, list[FrameResult]], broker: Any, node_client: Path, tmp_path: Path
) -> None:
    topic, sent = results_topic
    (tmp_path / "node_modules").symlink_to(node_client / "node_modules")
    script = tmp_path / "consumer.mjs"
    script.write_text(aimed(snippet("js"), broker.bootstrap, topic))
    lines = read_lines([NODE, str(script)], tmp_path, count=9)  # type: ignore[list-item]
    printed = []
    for line in lines:
        frame_id, model, status, link_version, agreement, output = line.split(" ", 5)
        array = json.loads(output)
        assert array["shape"] == [len(array["data"])]
        values = (json.loads(link_version), json.loads(agreement), array["data"])
        printed.append((frame_id, model, status, *values))
    assert sorted(printed) == expected(sent)


def test_the_readme_shows_the_same_consumers() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for language in ("python", "js"):
        assert snippet(language) in readme, f"README's {language} consumer differs from the doc"
