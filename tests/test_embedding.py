"""MLink inside a user's own faust app: the README example runs against the real broker, and
the operators package stands alone (it loads nothing of deploy/ or eval/)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer

from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.runner import ResultCollector
from mlink.deploy.source import FrameProducer
from mlink.topics.names import TopicNames
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "shop_app.py"


def test_importing_the_operators_loads_nothing_from_deploy_or_eval() -> None:
    code = (
        "import sys, mlink.operators\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('mlink.deploy', 'mlink.eval')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_readme_shows_the_example_app_as_it_is() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    body = EXAMPLE.read_text().split('"""', 2)[2].lstrip("\n")  # the file without its docstring
    assert any(block == body for block in blocks), "README's example differs from the file"


def frames(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Grey frames of varying brightness and contrast from three cameras."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        level = rng.uniform(20, 235)
        spread = rng.uniform(2, 40)
        image = np.clip(rng.normal(level, spread, (48, 64)), 0, 255).astype(np.uint8)
        out.append((f"cam{i % 3}", image))
    return out


@pytest.mark.broker
def test_the_readme_app_runs_mlink_beside_its_own_agent(broker, faust_worker, tmp_path) -> None:
    prefix = f"shop{uuid.uuid4().hex[:6]}"
    names = TopicNames.with_prefix(prefix)
    ensure_topics(
        broker.bootstrap,
        [TopicSpec(t, 1 if t in (names.control, names.samples) else 2) for t in names.all()]
        + [TopicSpec(f"{prefix}.alerts", 1)],
    )
    worker = faust_worker(
        "examples.shop_app",
        {
            "MLINK_EXAMPLE_BROKER": broker.url,
            "MLINK_EXAMPLE_PREFIX": prefix,
            "MLINK_EXAMPLE_STORE": str(tmp_path / "links"),
        },
    )
    collector = ResultCollector(broker.bootstrap, names.results)
    try:
        worker.wait_ready()
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            warm = [producer.send(s, i, img).frame_id for i, (s, img) in enumerate(frames(30))]
            deadline = time.monotonic() + 120
            while "now at epoch 1" not in worker.log():
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.2)
            later = [
                producer.send(s, 100 + i, img).frame_id
                for i, (s, img) in enumerate(frames(60, seed=1))
            ]
        assert collector.wait_for(set(warm + later), 90), worker.log_tail()
        after = [collector.results[f] for f in later]
        synthesized = [r for res in after for r in res.results if r.status == "synthesized"]
        assert synthesized, "no output was synthesized after the links were trained"
        assert all(r.link_version is not None and r.sources for r in synthesized)
        # the app's own agent saw MLink's results and raised alerts for dark frames
        consumer = KafkaConsumer(
            f"{prefix}.alerts",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        )
        alerts = [m.value for m in consumer]
        consumer.close()
        assert alerts, "the app's own agent raised no alert"
        assert worker.proc.poll() is None
        # attach() named the app's model set in its Kafka client id, as `mlink worker` does, so
        # `mlink status` on a mirror config does not call it a worker on another config
        sets = asyncio.run(_model_sets(broker.bootstrap, f"{prefix}-cams"))
        assert list(sets) != ["unknown"] and sum(sets.values()) == 1, sets
    finally:
        collector.close()


async def _model_sets(bootstrap: str, group: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    from mlink.deploy.group_members import model_sets

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        replies = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = [m for r in replies for g in r.groups if g[1] == group for m in g[5]]
    return model_sets(m[1] or m[0] for m in members)


def test_example_file_is_importable_without_a_broker() -> None:
    """Building the app connects to nothing: importing the module is enough to inspect it."""
    code = f"import runpy; runpy.run_path({str(EXAMPLE)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(REPO_ROOT))
