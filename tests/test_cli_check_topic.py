"""`mlink check CONFIG` on a config whose frames are on Kafka (``source: {topic: ...}``) calls
every model on the topic's first frames, read from the broker the way a worker reads them but in
no consumer group; it says so when it cannot (no broker given, an empty topic) and exits 2 when
the user must fix something (a broker that does not answer, no such topic, records no worker can
read).

Each test runs the real `mlink` as a subprocess against the session's embedded broker.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaProducer

from mlink.deploy.kafka_admin import TopicSpec, ensure_topics
from mlink.deploy.kafka_wait import free_port
from mlink.deploy.source import FrameProducer
from mlink.eval.workloads import digits
from tests.digits_pipeline import digit_files
from tests.test_cli_errors import _mlink, _model_config, _refused

pytestmark = pytest.mark.broker


def _topic(broker: Any, partitions: int = 2) -> str:
    name = f"check-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [TopicSpec(name, partitions, {})])
    return name


def _topic_config(tmp_path: Path, topic: str, bad: dict | None = None, **source: Any) -> Path:
    """The two tiny models of `_model_config`, reading their frames from ``topic``."""
    path = _model_config(tmp_path, bad or {})
    data = yaml.safe_load(path.read_text())
    data["source"] = {"topic": topic, **source}
    path.write_text(yaml.safe_dump(data))
    return path


def _send_frames(broker: Any, topic: str, count: int) -> list[np.ndarray]:
    images = list(digits.frames(count))
    with FrameProducer(broker.bootstrap, topic) as producer:
        for seq, image in enumerate(images):
            producer.send(f"cam-{seq % 2}", seq, image)
    return images


@pytest.fixture(autouse=True)
def _no_broker_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLINK_BROKER", raising=False)  # `mlink` gets a copy of os.environ


def _check(path: Path, *argv: str) -> Any:
    return _mlink("check", str(path), *argv, cwd=path.parent)


def _said(done: Any) -> str:
    return " ".join((done.stdout + done.stderr).split())


def _groups(bootstrap: str) -> list[dict[str, Any]]:
    """Every consumer group the broker knows."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return admin.list_groups()
    finally:
        admin.close()


def test_every_model_is_called_on_the_topics_first_frames(broker: Any, tmp_path: Path) -> None:
    """Read without a trace: no consumer group joined, so nothing committed either."""
    topic = _topic(broker)
    _send_frames(broker, topic, 5)
    groups = _groups(broker.bootstrap)
    done = _check(_topic_config(tmp_path, topic), "--broker", broker.bootstrap)
    said = _said(done)
    assert done.returncode == 0, said
    assert "on 3 frame(s)" in said and "not run" not in said and "not called" not in said
    assert said.count(" ok ") >= 2 and "Traceback" not in said
    assert _groups(broker.bootstrap) == groups


def test_a_model_that_fails_on_a_topic_frame_is_named(broker: Any, tmp_path: Path) -> None:
    """The models really get the frames: a fault on them fails the check as for a file."""
    topic = _topic(broker, partitions=1)
    _send_frames(broker, topic, 3)
    path = _topic_config(tmp_path, topic, {"args": {"fault": "raise"}})
    said = _refused(_check(path, "--broker", broker.bootstrap))
    assert "model 'bad' raised RuntimeError: cannot handle frame" in said
    assert "ok" in said  # `good` ran beside it


def test_the_configs_broker_is_used_when_none_is_passed(broker: Any, tmp_path: Path) -> None:
    topic = _topic(broker)
    _send_frames(broker, topic, 2)
    path = _topic_config(tmp_path, topic)
    data = yaml.safe_load(path.read_text())
    data["broker"] = broker.bootstrap
    path.write_text(yaml.safe_dump(data))
    done = _check(path)
    assert done.returncode == 0, _said(done)
    assert "on 2 frame(s)" in _said(done)  # fewer on the topic than asked for: what there is


def test_an_empty_topic_is_said_and_is_not_a_failure(broker: Any, tmp_path: Path) -> None:
    """No producer has written yet: the config may well be right, so exit 0, saying the models
    were not called and how to call them."""
    topic = _topic(broker)
    done = _check(_topic_config(tmp_path, topic), "--broker", broker.bootstrap)
    said = _said(done)
    assert done.returncode == 0, said
    assert f"source topic '{topic}' on {broker.bootstrap} is empty" in said
    assert "models were built but not called" in said and "not run" in said


def test_no_broker_given_is_said_and_is_not_a_failure(tmp_path: Path) -> None:
    done = _check(_topic_config(tmp_path, "cameras"))
    said = _said(done)
    assert done.returncode == 0, said
    assert "no broker is given" in said and "--broker" in said


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("missing", "has no topic"),
        ("nowhere", "did not answer within"),
    ],
)
def test_a_topic_that_cannot_be_read_is_refused(
    broker: Any, tmp_path: Path, where: str, says: str
) -> None:
    """A misspelt topic or a broker that does not answer: exit 2, no traceback, no long wait."""
    bootstrap = broker.bootstrap if where == "missing" else f"127.0.0.1:{free_port()}"
    path = _topic_config(tmp_path, f"nosuch-{uuid.uuid4().hex[:8]}")
    said = _refused(_check(path, "--broker", bootstrap))
    assert says in said and "models were built but not called" in said


@pytest.mark.parametrize(("fmt", "ok"), [("image", True), ("frame", False)])
def test_a_camera_topic_is_read_in_its_format(
    broker: Any, tmp_path: Path, fmt: str, ok: bool
) -> None:
    """Raw JPEGs (what a camera gateway writes) after one record that is no image: read as
    format ``image``, the junk is said to be dead-lettered and the models get the three images;
    read as our ``frame`` envelope, a worker would dead-letter every record: the check names
    the key to fix."""
    topic = _topic(broker)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send(topic, key=b"gate-0", value=b"GIF89a, not a JPEG").get(30)
    for path in digit_files(tmp_path / "cams", 3):
        producer.send(topic, key=b"gate-0", value=Path(path).read_bytes()).get(30)
    producer.close()
    done = _check(_topic_config(tmp_path, topic, format=fmt), "--broker", broker.bootstrap)
    said = _said(done)
    if ok:
        assert done.returncode == 0, said
        assert "on 3 frame(s)" in said
        assert f"1 of the first 4 records of '{topic}' would be dead-lettered" in said
        assert "neither JPEG nor PNG" in said
    else:
        said = _refused(done)
        assert "none of its first 4 record(s) is a frame of format 'frame'" in said
        assert "check source.format" in said
