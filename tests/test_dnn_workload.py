"""The DNN workload on real frames: the networks load from their wheels, answer within their specs,
find the faces that are there, and YOLO matches NudeNet's own onnxruntime pipeline.

A few real frames only; the full 611-frame workload is a benchmark (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

_MISSING = [
    m
    for m in ("onnxruntime", "nudenet", "skimage", "facenet_pytorch")
    if not importlib.util.find_spec(m)
]
if _MISSING:
    pytest.skip(
        f"the dnn extra is not installed (missing {_MISSING}): run `make test`, or "
        "pip install -e '.[dnn]' && pip install --no-deps facenet-pytorch==2.6.0",
        allow_module_level=True,
    )

from mlink.deploy.config import load_config  # noqa: E402
from mlink.eval.workloads import dnn, photo_pan  # noqa: E402
from mlink.eval.workloads.mtcnn import MTCNN, nms  # noqa: E402
from mlink.eval.workloads.yolo import LABELS, YoloV8  # noqa: E402
from mlink.linkstore.training import torch_threads  # noqa: E402
from mlink.topics.specs import BoxesSpec  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "configs" / "dnn.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """As the workload runs them: MTCNN on two threads of a loaded 2-core machine is >10x slower."""
    with torch_threads(1):
        yield


@functools.cache
def real_frames() -> dict[str, np.ndarray]:
    """The first frame of the man-on-a-phone clip, and a frame of the astronaut pan with her
    face in full view (frame 42)."""
    carphone = next(dnn.frames(videos=["carphone_pristine"], photos=[], limit=1))[1]
    astronaut = list(photo_pan.pan("astronaut", 60))[42]
    return {"carphone": carphone, "astronaut": astronaut}


def test_frames_are_the_clips_then_the_photo_pans() -> None:
    got = list(dnn.frames(limit=2))
    streams = [s for s, _ in got]
    assert streams[:8] == [s for s in dnn.video.VIDEOS for _ in range(2)]
    assert streams[8:] == [f"pan_{p}" for p in dnn.PHOTOS for _ in range(2)]
    pans = [f for s, f in got if s.startswith("pan_")]
    assert all(f.shape == (360, 480, 3) and f.dtype == np.uint8 for f in pans)
    assert not np.array_equal(pans[0], pans[1])  # the camera moves


def test_interleaved_frames_are_every_stream_in_turn_with_the_same_frames() -> None:
    """Nine cameras at once: a live warm-up of the first frames sees every one of them."""
    together = list(dnn.frames(limit=2, interleave=True))
    streams = [*dnn.video.VIDEOS, *(f"pan_{p}" for p in dnn.PHOTOS)]
    assert [s for s, _ in together] == streams * 2
    apart = list(dnn.frames(limit=2))
    for name in streams:
        mine, theirs = ([f for s, f in got if s == name] for got in (together, apart))
        assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert list(dnn.video.round_robin([iter("ab"), iter(""), iter("xyz")])) == list("axbyz")


def test_pan_is_reproducible_and_reads_the_photo_from_its_wheel() -> None:
    a, b = list(photo_pan.pan("coffee", 3)), list(photo_pan.pan("coffee", 3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="choose from"):
        photo_pan.photo_path("nope")


def test_the_pan_source_is_one_stream_per_photo_in_order() -> None:
    """deploy/configs/pan.yaml's source: each photo's pan in turn, frames of 480x360."""
    got = list(photo_pan.frames(photo_frames=3, photos=["coffee", "chelsea"]))
    assert [s for s, _ in got] == ["pan_coffee"] * 3 + ["pan_chelsea"] * 3
    assert all(f.shape == (360, 480, 3) for _, f in got)
    assert np.array_equal(got[0][1], next(photo_pan.pan("coffee", 3)))
    config = load_config(CONFIG.parent / "pan.yaml")
    assert config.source.factory == "mlink.eval.workloads.photo_pan:frames"
    assert len(config.models) == 8 and config.topics.partitions == len(photo_pan.PHOTOS)


def test_default_set_mixes_architectures_on_overlapping_tasks() -> None:
    builds = {dnn.MODELS[n].build for n in dnn.DEFAULT_MODELS}
    assert {dnn.MtcnnFaces, dnn.MtcnnEyes, dnn.YoloBoxes, dnn.video.model} <= builds
    assert all(isinstance(dnn.spec(n), BoxesSpec) for n in dnn.DEFAULT_MODELS)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a model tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
def test_every_default_model_loads_offline_and_answers_within_its_spec() -> None:
    for name in dnn.DEFAULT_MODELS:
        model = dnn.model(name)
        for label, frame in real_frames().items():
            boxes = dnn.spec(name).validate(model(frame), f"{name} on {label}")
            assert np.all(np.diff(boxes[:, 4]) <= 0), f"{name}: boxes not best first"
    for name in ("mtcnn_faces_fast", "yolo_faces", "face_alt2_fast"):
        count = dnn.model(name, count=True)(real_frames()["carphone"])
        assert dnn.spec(name, count=True).validate(count, name)[0] >= 1  # the man's face


def test_mtcnn_finds_the_face_on_frames_known_to_hold_one() -> None:
    faces = dnn.model("mtcnn_faces")(real_frames()["carphone"])
    assert faces.shape[0] >= 1 and faces[0, 4] > 0.9
    x1, y1, x2, y2, _ = faces[0]  # the man's head fills the middle of the QCIF frame
    assert 0.2 < (x1 + x2) / 2 < 0.8 and 0.1 < (y1 + y2) / 2 < 0.7 and x2 - x1 > 0.15

    # The astronaut's face is centred near (225, 117) on the 512x512 photo; frame 42's window
    # (centre (242, 164), 424 px wide, shown 1.133x as large) puts it near (220, 127).
    frame = real_frames()["astronaut"]
    found = MTCNN().detect(frame[:, :, ::-1].copy())
    assert found.boxes.shape[0] == 1 and found.boxes[0, 4] > 0.99
    centre = (found.boxes[0, :2] + found.boxes[0, 2:4]) / 2
    assert np.allclose(centre, [220, 127], atol=15)
    left, right = found.landmarks[0, 0], found.landmarks[0, 1]
    assert left[0] < right[0] and abs(left[1] - right[1]) < 10  # two level eyes, left first
    eyes = dnn.model("mtcnn_eyes")(frame)
    assert eyes.shape[0] == 2


def test_yolo_matches_nudenets_own_onnxruntime_pipeline() -> None:
    from nudenet import NudeDetector

    reference = NudeDetector()  # its own session, pre- and post-processing, pixel boxes
    ours = YoloV8(320)
    for label, frame in real_frames().items():
        height, width = frame.shape[:2]
        want = sorted(
            (d["class"], *d["box"]) for d in reference.detect(frame) if d["score"] >= 0.25
        )
        got = ours.detect(frame)
        pixels = got.boxes[:, :4] * [width, height, width, height]
        mine = sorted(
            (LABELS[c], int(x1), int(y1), int(x2 - x1), int(y2 - y1))
            for c, (x1, y1, x2, y2) in zip(got.classes, pixels, strict=True)
        )
        assert want, f"NudeNet finds nothing on {label}; pick a frame it fires on"
        assert [w[0] for w in want] == [m[0] for m in mine], label
        assert np.allclose([w[1:] for w in want], [m[1:] for m in mine], atol=1), label
    faces = dnn.model("yolo_faces")(real_frames()["astronaut"])
    assert faces.shape[0] == 1 and faces[0, 4] > 0.5


def test_models_pickle_and_keys_name_what_outputs_depend_on() -> None:
    frame = real_frames()["carphone"]
    for name in ("mtcnn_faces_fast", "yolo_faces"):
        model = dnn.model(name)
        again = pickle.loads(pickle.dumps(model))  # the memory probe runs models in a child
        assert np.array_equal(model(frame), again(frame))
        assert again.model_key == model.model_key and f"v{dnn.VERSION}" in model.model_key
    assert dnn.model("yolo_faces").model_key != dnn.model("yolo_faces", size=416).model_key
    assert "onnxruntime" in dnn.model("yolo_faces").model_key
    assert "torch" in dnn.model("mtcnn_faces").model_key


def test_bad_names_and_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        dnn.model("nope")
    with pytest.raises(TypeError, match="its parameters are"):
        dnn.model("mtcnn_faces", size=3)
    with pytest.raises(ValueError, match="multiple of 32"):
        YoloV8(300)
    with pytest.raises(ValueError, match="unknown"):
        dnn.model("yolo_faces", classes=("CATS",))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 4, 4]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]  # [3] is inside [0] but IoU 0.25
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [0, 2]  # ... and min-overlap 1


def test_config_matches_the_workload() -> None:
    config = load_config(CONFIG)
    assert config.model_names == list(dnn.DEFAULT_MODELS)
    for model in config.models:
        assert model.factory == "mlink.eval.workloads.dnn:model"
        assert model.args == {"name": model.name}
        assert model.output == dnn.spec(model.name).to_dict()
    assert config.source.factory == "mlink.eval.workloads.dnn:frames"
    defaults = dnn.DnnFrames()
    assert config.source.args == {"every": defaults.every, "photo_frames": defaults.photo_frames}
    assert config.topics.partitions == len(dnn.video.VIDEOS) + len(dnn.PHOTOS)


def test_the_live_config_is_the_bench_config_with_cameras_interleaved() -> None:
    bench, live = load_config(CONFIG), load_config(CONFIG.with_name("dnn-live.yaml"))
    assert live.models == bench.models and live.budget == bench.budget
    assert live.source.args == {**bench.source.args, "interleave": True}
    assert live.links.store != bench.links.store and live.topics.prefix != bench.topics.prefix
    assert live.topics.partitions == bench.topics.partitions
