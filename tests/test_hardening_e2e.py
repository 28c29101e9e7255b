"""No record can crash a worker or lose a frame (real broker, real faust worker).

Every poison record of issue 9 goes onto the frames topic between good frames, and every forged
control message onto the control topic: each bad record ends as a dead letter (or, for a valid
frame whose pixels cannot be decoded, as a dead letter plus a degraded result), every good frame
sent after it gets its result, the worker stays up, the control plane still obeys a real budget
change, and a restarted worker replays the whole log without crashing. With a signing key, an
unsigned control message is refused and a signed one obeyed.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any

import msgpack
import pytest
from kafka import KafkaProducer

from mlink.deploy.pipeline_status import dead_letter_report
from mlink.deploy.runner import ResultCollector, read_control, set_budget
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.topics.codec import ARRAY_EXT_CODE, encode, encode_record
from mlink.topics.frames import encode_frame
from mlink.topics.records import ControlMessage
from mlink.topics.signing import SIGNING_KEY_ENV, Signer
from tests.test_codec import nested_array_extensions
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    IMAGES,
    dead_letters,
    wait_results,
    wait_until,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker


def png_claiming(width: int, height: int) -> bytes:
    """A real single-colour greyscale PNG of ``width`` x ``height``: a few hundred kB that
    decode to width * height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + black pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def frame_dict(**overrides: Any) -> dict[str, Any]:
    good = encode_frame(IMAGES[0], "poison", 0, 0.0).to_dict()
    good.update(overrides)
    return good


def poison_records() -> dict[str, bytes]:
    png = encode_frame(IMAGES[1], "x", 0, 0.0, "png").data
    return {
        "garbage": b"\xc1 is never valid msgpack",
        "negative shape": encode(
            frame_dict(frame_id="poison:1", encoding="raw", data=bytes(64), shape=[-8, 8])
        ),
        "2**32 x 2**32 raw frame": encode(
            frame_dict(frame_id="poison:2", encoding="raw", data=b"", shape=[2**32, 2**32])
        ),
        "20000 x 20000 PNG": encode(
            frame_dict(
                frame_id="poison:3", encoding="png", data=png_claiming(20000, 20000), shape=None
            )
        ),
        "PNG declared as JPEG": encode(
            frame_dict(frame_id="poison:4", encoding="jpeg", data=png, shape=None)
        ),
        "3 MB record": b"\x00" * (3 * 1024 * 1024),
        "ref frame to /etc/passwd": encode(
            frame_dict(frame_id="poison:5", encoding="ref", data=b"/etc/passwd", shape=None)
        ),
        "colliding int map keys": msgpack.packb({i: i for i in range(50_000)}),
        "newline in an id": encode(frame_dict(frame_id="poison:6\nINFO forged log line")),
        # segfaulted the worker before the codec refused extensions inside array payloads
        "array extensions nested 200 deep": encode(
            frame_dict(
                frame_id="poison:7",
                data=msgpack.ExtType(ARRAY_EXT_CODE, nested_array_extensions(199)),
            )
        ),
    }


# frames that are valid records whose pixels cannot be decoded: they entered, so they also get
# a (degraded) result besides their dead letter
UNDECODABLE = {
    "2**32 x 2**32 raw frame": "poison:2",
    "20000 x 20000 PNG": "poison:3",
    "PNG declared as JPEG": "poison:4",
    "ref frame to /etc/passwd": "poison:5",
}


def forged_control(epoch_now: int) -> dict[str, dict[str, Any]]:
    base = {"v": 1, "type": "control", "issued_at": time.time()}

    def active_set(epoch: int, active: list[str], extra: dict[str, Any] | None = None) -> dict:
        plan = {**base, "kind": "active_set", "epoch": epoch, "active": active, "link_version": 1}
        return plan if extra is None else {**plan, "extra": extra}

    def content(runs: int, overall: dict[str, float], rows: dict[str, list[float]]) -> dict:
        table = {"detectors": [], "runs": runs, "overall": overall, "by_signature": rows}
        return {"content": {**table, "seen": [True, False, False, False]}}

    return {
        "agreement of 5": {
            **base,
            "kind": "agreement",
            "epoch": epoch_now,
            "extra": {"live_agreement": 5, "probes": 5},
        },
        "epoch 2**64-1": active_set(2**64 - 1, ["parity_logreg"]),
        "unknown model": active_set(epoch_now + 1, ["not_a_model"]),
        "epoch jump": active_set(epoch_now + 10**7, ["parity_logreg"]),
        "content table with an agreement of 5": active_set(
            epoch_now + 1,
            ["parity_logreg"],
            content(1, {"parity_logreg": 5.0}, {"parity_logreg": [5.0, 5.0, 5.0, 5.0]}),
        ),
        # divided by zero after it was applied, in every worker's replay, before stop 36
        "content table without runs or models": active_set(
            epoch_now + 1, ["parity_logreg"], content(0, {}, {})
        ),
        # laid out a cycle of lcm(10**6, 49**2) frames to price it (GBs) before stop 36
        "schedule with a period of 10**6": active_set(
            epoch_now + 1,
            ["parity_logreg", "value_gbr"],
            {
                "schedule": {
                    "periods": {"ge5_forest": 10**6, "parity_logreg": 1, "value_gbr": 1},
                    "probe_every": 49,
                    "probe_stride": 3,
                }
            },
        ),
        "negative budget": {**base, "kind": "budget", "epoch": 0, "budget": {"ms": -5.0}},
        "unknown budget key": {**base, "kind": "budget", "epoch": 0, "budget": {"gpus": 2.0}},
    }


def test_poison_records_and_forged_control_never_crash_a_worker(
    broker: Any, faust_worker: Any, tmp_path: Any
) -> None:
    path, config = write_config(
        tmp_path, "poison", FAST_MODELS, partitions=2, warmup_frames=12, output_timeout_s=10.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    env = worker_env(path, broker.bootstrap, tmp_path / "faust")
    worker = faust_worker(APP, env, "w0")
    collector = ResultCollector(broker.bootstrap, names.results)
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    good: list[str] = []
    seq = [0]

    def good_frame() -> None:
        frame = encode_frame(IMAGES[seq[0] % len(IMAGES)], "good", seq[0])
        seq[0] += 1
        producer.send(names.frames, key=b"good", value=encode_record(frame)).get(10)
        good.append(frame.frame_id)

    def send(topic: str, value: bytes) -> tuple[str, int, int]:
        meta = producer.send(topic, key=b"poison", value=value).get(10)
        return meta.topic, meta.partition, meta.offset

    try:
        worker.wait_ready()
        for _ in range(16):  # warm-up: links train, the first active set goes live
            good_frame()
        wait_until(
            "links", lambda: read_control(broker.bootstrap, config)[0].epoch >= 1, 120, worker
        )
        sent: dict[str, tuple[str, int, int]] = {}
        for what, value in poison_records().items():
            sent[what] = send(names.frames, value)
            good_frame()
        epoch = read_control(broker.bootstrap, config)[0].epoch
        for what, message in forged_control(epoch).items():
            sent[what] = send(names.control, msgpack.packb(message))
            good_frame()
        wait_results(collector, set(good), 120, [worker])
        # the control plane still obeys a real budget change after all that
        set_budget(broker.bootstrap, config, {"fraction": 0.9})
        wait_until(
            "a real budget change",
            lambda: read_control(broker.bootstrap, config)[0].epoch > epoch,
            60,
            worker,
        )
        deadline = time.monotonic() + 60
        while len(dead_letters(broker.bootstrap, config)) < len(sent):
            assert time.monotonic() < deadline, [
                d.reason for d in dead_letters(broker.bootstrap, config)
            ]
            time.sleep(0.5)
        letters = {
            (d.topic, d.partition, d.offset): d for d in dead_letters(broker.bootstrap, config)
        }
        for what, place in sent.items():
            assert place in letters, f"no dead letter for {what!r} at {place}"
            assert "\n" not in letters[place].reason, "a reason must not forge log lines"
        report = dead_letter_report(broker.bootstrap, config)  # what `mlink status` shows
        assert report["count"] == len(letters)
        newest = sorted(letters.values(), key=lambda d: d.at)[-len(report["recent"]) :]
        assert [(d["stage"], d["reason"]) for d in report["recent"]] == [
            (d.stage, d.reason) for d in newest
        ]
        for what, frame_id in UNDECODABLE.items():
            result = collector.results.get(frame_id)
            assert result is not None and result.degraded, what
            assert all(r.error for r in result.results), what
        assert all(not collector.results[f].degraded for f in good)
        assert worker.proc.poll() is None, "the worker died"
        assert "Traceback" not in worker.log() or "Agent" not in worker.log()  # no agent crash

        # a worker restarted now replays every forged message and still comes up and plans
        worker.stop()
        again = faust_worker(APP, env, "w1")
        again.wait_ready()
        before = len(good)
        for _ in range(6):
            good_frame()
        wait_results(collector, set(good[before:]), 90, [again])
        state, _ = read_control(broker.bootstrap, config)
        assert state.requested_budget == {"fraction": 0.9}
    finally:
        producer.close()
        collector.close()


def test_with_a_signing_key_unsigned_control_is_refused_and_signed_control_obeyed(
    broker: Any, faust_worker: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "k" * 32
    path, config = write_config(
        tmp_path, "signed", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=10.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    env = {**worker_env(path, broker.bootstrap, tmp_path / "faust"), SIGNING_KEY_ENV: key}
    worker = faust_worker(APP, env, "signed")
    collector = ResultCollector(broker.bootstrap, names.results)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    monkeypatch.setenv(SIGNING_KEY_ENV, key)  # read_control / set_budget sign and verify
    try:
        worker.wait_ready()
        ids = []
        for seq in range(10):
            frame = encode_frame(IMAGES[seq], "s", seq)
            producer.send(names.frames, key=b"s", value=encode_record(frame)).get(10)
            ids.append(frame.frame_id)
        wait_until(
            "links", lambda: read_control(broker.bootstrap, config)[0].epoch >= 1, 120, worker
        )
        epoch = read_control(broker.bootstrap, config)[0].epoch
        unsigned = ControlMessage(
            kind="budget", epoch=0, issued_at=time.time(), budget={"fraction": 0.9}
        )
        meta = producer.send(names.control, key=b"budget", value=encode_record(unsigned)).get(10)
        deadline = time.monotonic() + 60
        while not any(d.offset == meta.offset for d in dead_letters(broker.bootstrap, config)):
            assert time.monotonic() < deadline, "the unsigned control message was not refused"
            time.sleep(0.5)
        letter = next(d for d in dead_letters(broker.bootstrap, config) if d.offset == meta.offset)
        assert "unsigned" in letter.reason
        assert read_control(broker.bootstrap, config)[0].epoch == epoch  # nothing changed
        set_budget(broker.bootstrap, config, {"fraction": 0.9})  # signed with the key
        wait_until(
            "the signed budget",
            lambda: read_control(broker.bootstrap, config)[0].epoch > epoch,
            60,
            worker,
        )
        assert Signer.from_env().enabled
        wait_results(collector, set(ids), 60, [worker])
    finally:
        producer.close()
        collector.close()
