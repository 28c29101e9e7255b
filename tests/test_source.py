"""Frame sources without a broker, then producing frames to (and creating topics on) real Tansu."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlink.deploy.config import ConfigError, PipelineConfig, SourceConfig, parse_config
from mlink.deploy.kafka_admin import topic_partitions
from mlink.deploy.source import FrameProducer, iter_source, produce_frames, produce_source
from mlink.deploy.topics_setup import create_pipeline_topics, pipeline_topics
from mlink.eval.workloads import digits
from mlink.topics.codec import decode_record
from mlink.topics.frames import decode_frame
from mlink.topics.records import Frame

DIGITS = "mlink.eval.workloads.digits:frames"


def two_streams(n: int = 3) -> Iterator[tuple[str, np.ndarray]]:
    """A factory yielding (stream_id, frame) pairs of two interleaved streams."""
    for i in range(n):
        yield "left", np.full((4, 4), i, np.uint8)
        yield "right", np.full((4, 4), 100 + i, np.uint8)


def not_iterable() -> int:
    return 3


def _pipeline(prefix: str, partitions: int = 3, **source: object) -> PipelineConfig:
    return parse_config(
        {
            "name": "t",
            "source": source or {"factory": DIGITS},
            "models": [
                {
                    "name": name,
                    "factory": "mlink.eval.workloads.digits:model",
                    "args": {"name": name},
                    "output": digits.MODELS[name].spec.to_dict(),
                }
                for name in ("parity_logreg", "loops_knn")
            ],
            "budget": {"fraction": 0.5},
            "topics": {"prefix": prefix, "partitions": partitions},
        }
    )


# -- iter_source, no broker -------------------------------------------------------------------


def test_factory_source_yields_digits_with_the_config_stream_id() -> None:
    pairs = list(iter_source(SourceConfig(factory=DIGITS, stream_id="d", limit=5)))
    expected = list(digits.frames(limit=5))
    assert [sid for sid, _ in pairs] == ["d"] * 5
    for (_, image), want in zip(pairs, expected, strict=True):
        np.testing.assert_array_equal(image, want)


def test_factory_args_are_passed() -> None:
    assert len(list(iter_source(SourceConfig(factory=DIGITS, args={"limit": 3})))) == 3


def test_factory_pairs_keep_their_stream_ids() -> None:
    source = SourceConfig(factory=f"{__name__}:two_streams", args={"n": 2})
    assert [sid for sid, _ in iter_source(source)] == ["left", "right"] * 2


def test_factory_that_is_not_iterable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"not_iterable.*returned int"):
        list(iter_source(SourceConfig(factory=f"{__name__}:not_iterable")))


def test_image_glob_is_read_in_sorted_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = {
        "b.png": rng.integers(0, 256, (6, 5), dtype=np.uint8),
        "a.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "c.png": rng.integers(0, 256, (3, 9), dtype=np.uint8),
    }
    for name, image in images.items():
        assert cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "notes.txt").write_text("not matched")
    source = SourceConfig(images=str(tmp_path / "*.png"), stream_id="shots")
    pairs = list(iter_source(source))
    assert [sid for sid, _ in pairs] == ["shots"] * 3
    for (_, got), name in zip(pairs, ["a.png", "b.png", "c.png"], strict=True):
        np.testing.assert_array_equal(got, images[name])  # grayscale stays 2-D
    assert len(list(iter_source(source.model_copy(update={"limit": 2})))) == 2


def test_image_glob_matching_nothing_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="matches no files"):
        list(iter_source(SourceConfig(images=str(tmp_path / "*.png"))))


def _write_video(path: Path, n: int, level: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((24, 32, 3), level + 10 * i, np.uint8))
    writer.release()


def test_videos_are_streams_named_by_stem_in_order(tmp_path: Path) -> None:
    _write_video(tmp_path / "cam2.avi", 3, 0)
    _write_video(tmp_path / "cam1.avi", 2, 150)
    videos = [str(tmp_path / "cam2.avi"), str(tmp_path / "cam1.avi")]
    pairs = list(iter_source(SourceConfig(videos=videos)))
    assert [sid for sid, _ in pairs] == ["cam2"] * 3 + ["cam1"] * 2
    assert all(image.shape == (24, 32, 3) for _, image in pairs)
    assert abs(pairs[3][1].mean() - 150) < 3  # MJPEG is lossy
    assert len(list(iter_source(SourceConfig(videos=videos, limit=4)))) == 4


def test_video_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _write_video(tmp_path / "a" / "cam.avi", 1, 0)
    _write_video(tmp_path / "cam.avi", 1, 0)
    same_stem = [str(tmp_path / "a" / "cam.avi"), str(tmp_path / "cam.avi")]
    with pytest.raises(ConfigError, match="both be stream 'cam'"):
        list(iter_source(SourceConfig(videos=same_stem)))
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4"):
        list(iter_source(SourceConfig(videos=[str(tmp_path / "missing.mp4")])))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ConfigError, match="cannot open"):
        list(iter_source(SourceConfig(videos=[str(tmp_path / "bad.mp4")])))


def test_topic_source_has_nothing_to_read(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="already on Kafka"):
        iter_source(SourceConfig(topic="elsewhere"))
    config = _pipeline("t", topic="elsewhere")
    assert produce_source(config, "127.0.0.1:1") == 0  # never connects
    assert "already on Kafka" in capsys.readouterr().err


def test_produce_source_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLINK_BROKER", raising=False)
    with pytest.raises(ConfigError, match="MLINK_BROKER"):
        produce_source(_pipeline("t"), progress=False)


def test_pipeline_topics_layout() -> None:
    config = _pipeline("p", partitions=5)
    specs = {s.name: s for s in pipeline_topics(config)}
    counts = {name.removeprefix("p."): s.partitions for name, s in specs.items()}
    assert counts == {
        "frames": 5,
        "planned": 5,
        "outputs": 5,
        "results": 5,
        "control": 1,
        "samples": 1,
        "dead-letter": 1,
    }
    big = str(config.limits.limits().max_message_bytes)
    assert specs["p.control"].config == {"cleanup.policy": "compact", "max.message.bytes": big}
    for spec in specs.values():  # one size limit for every topic, the clients' own
        assert spec.config["max.message.bytes"] == big


# -- with the broker --------------------------------------------------------------------------


def _read_all(bootstrap: str, topic: str, n: int, group: str | None) -> list[tuple[bytes, Frame]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        session_timeout_ms=10000,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=20000,
    )
    try:
        if group is None:
            parts = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in parts])
        else:
            consumer.subscribe([topic])
        got: list[tuple[bytes, Frame]] = []
        for message in consumer:
            got.append((message.key, decode_record(message.value, Frame)))
            if len(got) == n:
                break
        return got
    finally:
        consumer.close()


@pytest.mark.broker
def test_produced_digits_come_back_exactly(broker, topic_factory) -> None:
    topic = topic_factory("frames", partitions=2)
    images = list(digits.frames(limit=20))
    ids = produce_frames(broker.bootstrap, topic, (("digits", im) for im in images))
    assert ids == [f"digits:{i}" for i in range(20)]

    got = _read_all(broker.bootstrap, topic, 20, group=f"g-{uuid.uuid4().hex[:8]}")
    assert len(got) == 20
    assert {key for key, _ in got} == {b"digits"}  # keyed by stream: one partition, in order
    assert [frame.frame_id for _, frame in got] == ids
    for (_, frame), image in zip(got, images, strict=True):
        np.testing.assert_array_equal(decode_frame(frame), image)


@pytest.mark.broker
def test_create_pipeline_topics_then_produce_source(broker) -> None:
    config = _pipeline(
        f"t{uuid.uuid4().hex[:8]}",
        partitions=3,
        factory=f"{__name__}:two_streams",
        args={"n": 4},
        rate=100.0,
    )
    names = config.topics.names()
    assert sorted(create_pipeline_topics(config, broker.bootstrap)) == sorted(names.all())
    for spec in pipeline_topics(config):
        assert topic_partitions(broker.bootstrap, spec.name) == spec.partitions
    assert create_pipeline_topics(config, broker.bootstrap) == []  # idempotent

    start = time.monotonic()
    assert produce_source(config, broker.bootstrap, limit=6, progress=False) == 6
    assert time.monotonic() - start >= 5 / 100  # paced at `rate`
    got = _read_all(broker.bootstrap, names.frames, 6, group=None)
    ids = sorted(frame.frame_id for _, frame in got)
    assert ids == sorted(f"{s}:{i}" for s in ("left", "right") for i in range(3))
    for key, frame in got:
        assert key == frame.stream_id.encode()
        base = 0 if frame.stream_id == "left" else 100
        np.testing.assert_array_equal(decode_frame(frame), np.full((4, 4), base + frame.seq))


@pytest.mark.broker
def test_frame_producer_sends_records_and_counts(broker, topic_factory) -> None:
    topic = topic_factory("fp")
    with FrameProducer(broker.bootstrap, topic, encoding="raw") as producer:
        frame = producer.send("s", 0, np.arange(6, dtype=np.uint8).reshape(2, 3), timestamp=1.0)
        producer.flush()
        assert producer.sent == 1
    [(key, got)] = _read_all(broker.bootstrap, topic, 1, group=None)
    assert key == b"s" and got == frame


def test_the_producer_refuses_exactly_what_the_configs_workers_refuse(broker) -> None:
    """Review: the producer used the default pixel limit whatever the config's ``limits`` said,
    so it refused frames the workers accept, or sent frames every worker dead-letters."""
    from mlink.deploy.source import FrameProducer
    from mlink.topics.frames import FrameTooLargeError

    config = _pipeline(f"t{uuid.uuid4().hex[:8]}", partitions=1)
    tight = config.model_copy(
        update={"limits": config.limits.model_copy(update={"max_pixels": 100})}
    )
    create_pipeline_topics(tight, broker.bootstrap)
    with FrameProducer.for_pipeline(tight, broker.bootstrap) as producer:
        assert producer.send("s", 0, np.zeros((10, 10), np.uint8)).frame_id == "s:0"
        with pytest.raises(FrameTooLargeError, match="100"):
            producer.send("s", 1, np.zeros((10, 11), np.uint8))
