"""The output cache: hits skip the models, changes miss, writes are atomic, errors are named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlink.eval import outputs
from mlink.eval.outputs import OutputValidationError, collect_outputs, collect_workload
from mlink.topics.specs import BoxesSpec, VectorSpec

MEAN = VectorSpec(1, "linear")
BOXES = BoxesSpec()


class Counting:
    """A model that counts its calls. Unpicklable on purpose: its memory is then measured in this
    process (one extra call) instead of a child interpreter, which keeps these tests fast."""

    def __init__(self, fn: Callable[[np.ndarray], Any], key: str) -> None:
        self.fn = fn
        self.calls = 0
        self.model_key = key

    def __reduce__(self) -> Any:
        raise TypeError("Counting models stay in this process")

    def __call__(self, frame: np.ndarray) -> Any:
        self.calls += 1
        return self.fn(frame)


def mean_of(frame: np.ndarray) -> np.ndarray:
    return np.array([frame.mean() / 255.0], dtype=np.float32)


def one_box(frame: np.ndarray) -> np.ndarray:
    return np.array([[0.1, 0.2, 0.5, 0.6, frame.mean() / 255.0]], dtype=np.float32)


def no_box(frame: np.ndarray) -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def make_frames(n: int = 6, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        ("a" if i < n // 2 else "b", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        for i in range(n)
    ]


def models(**fns: Any) -> dict[str, tuple[Counting, Any]]:
    table = {"mean": (mean_of, MEAN), "box": (one_box, BOXES), "none": (no_box, BOXES)}
    return {
        name: (Counting(table[kind][0], key), table[kind][1]) for name, (kind, key) in fns.items()
    }


def calls(ms: dict[str, tuple[Counting, Any]]) -> dict[str, int]:
    return {name: fn.calls for name, (fn, _) in ms.items()}


def test_cache_hit_returns_identical_outputs_without_calling(tmp_path: Path) -> None:
    frames = make_frames()
    first = models(m=("mean", "m1"), b=("box", "b1"), z=("none", "z1"))
    wl1 = collect_workload("t", first, frames, cache_dir=tmp_path, progress=False)
    # one call per frame, one untimed warm-up, one to measure memory
    assert calls(first) == {"m": 8, "b": 8, "z": 8}

    again = models(m=("mean", "m1"), b=("box", "b1"), z=("none", "z1"))
    got = collect_outputs("t", again, frames, cache_dir=tmp_path, progress=False)
    assert calls(again) == {"m": 0, "b": 0, "z": 0}
    assert sorted(got.cache_hits) == ["b", "m", "z"] and got.computed == []
    wl2 = got.workload
    assert wl2.streams == wl1.streams == ["a"] * 3 + ["b"] * 3
    assert wl2.costs == wl1.costs
    for name in wl1.models:
        for x, y in zip(wl1.outputs[name], wl2.outputs[name], strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    assert wl2.outputs["z"][0].shape == (0, 5)


def test_changed_model_key_or_frames_miss(tmp_path: Path) -> None:
    frames = make_frames()
    collect_workload("t", models(m=("mean", "m1")), frames, cache_dir=tmp_path, progress=False)

    changed_arg = models(m=("mean", "m1(scale=2)"))
    collect_workload("t", changed_arg, frames, cache_dir=tmp_path, progress=False)
    assert calls(changed_arg) == {"m": 8}

    changed_frames = [(s, f.copy()) for s, f in frames]
    changed_frames[4][1][0, 0, 0] ^= 1
    same_model = models(m=("mean", "m1"))
    collect_workload("t", same_model, changed_frames, cache_dir=tmp_path, progress=False)
    assert calls(same_model) == {"m": 8}

    via_keys = models(m=("mean", "m1"))
    collect_workload(
        "t", via_keys, frames, cache_dir=tmp_path, model_keys={"m": "other"}, progress=False
    )
    assert calls(via_keys) == {"m": 8}


def test_adding_a_model_computes_only_that_model(tmp_path: Path) -> None:
    frames = make_frames()
    collect_workload("t", models(m=("mean", "m1")), frames, cache_dir=tmp_path, progress=False)
    both = models(m=("mean", "m1"), b=("box", "b1"))
    got = collect_outputs("t", both, iter(frames), cache_dir=tmp_path, progress=False)
    assert calls(both) == {"m": 0, "b": 8}
    assert got.cache_hits == ["m"] and got.computed == ["b"]


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    def broken_savez(fh: Any, **arrays: Any) -> None:
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(outputs.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        collect_workload(
            "t", models(m=("mean", "m1")), make_frames(), cache_dir=tmp_path, progress=False
        )
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_damaged_cache_file_is_recomputed(tmp_path: Path) -> None:
    frames = make_frames()
    got = collect_outputs("t", models(m=("mean", "m1")), frames, tmp_path, progress=False)
    got.cache_files["m"].write_bytes(b"not a zip")
    again = models(m=("mean", "m1"))
    with pytest.warns(UserWarning, match="unreadable"):
        collect_workload("t", again, frames, cache_dir=tmp_path, progress=False)
    assert calls(again) == {"m": 8}


def test_validation_error_names_model_and_frame(tmp_path: Path) -> None:
    frames = make_frames()
    third = frames[2][1]

    def bad_on_third(frame: np.ndarray) -> np.ndarray:
        return np.array([2.0, 3.0]) if np.array_equal(frame, third) else mean_of(frame)

    ms = {"good": (Counting(mean_of, "g"), MEAN), "flaky": (bad_on_third, MEAN)}
    with pytest.raises(OutputValidationError, match=r"'flaky'.*frame 2 \(stream 'a'\)") as err:
        collect_workload("t", ms, frames, cache_dir=tmp_path, progress=False)
    assert err.value.model == "flaky" and err.value.index == 2
    assert not list(tmp_path.rglob("*.npz"))


def test_costs_are_measured_and_cache_can_be_off() -> None:
    ms = models(m=("mean", "m1"), b=("box", "b1"))
    got = collect_outputs("t", ms, make_frames(4), cache_dir=None, progress=False)
    assert got.cache_files == {} and got.computed == ["m", "b"]
    for name, cost in got.workload.costs.items():
        assert set(cost) == {"ms", "memory_mb"}
        assert cost["ms"] > 0 and cost["memory_mb"] >= 0
        assert got.times_ms[name].shape == (4,)


def test_unpicklable_models_fall_back_to_in_process_memory() -> None:
    counter = {"n": 0}

    def closure(frame: np.ndarray) -> np.ndarray:
        counter["n"] += 1
        return mean_of(frame)

    wl = collect_workload("t", {"c": (closure, MEAN)}, make_frames(3), None, progress=False)
    assert counter["n"] == 3 + 1 + 1  # frames, warm-up, memory probe
    assert wl.costs["c"]["memory_mb"] >= 0


def test_bad_sources_and_keys_are_named() -> None:
    ms = models(m=("mean", "m1"))
    with pytest.raises(ValueError, match="yielded no frames"):
        collect_workload("t", ms, [], cache_dir=None, progress=False)
    with pytest.raises(TypeError, match=r"\(stream_id, frame\) pairs"):
        collect_workload("t", ms, [np.zeros((4, 4))], cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="not in models"):
        collect_workload("t", ms, make_frames(), None, model_keys={"x": "k"}, progress=False)


def test_default_model_key_uses_partial_args() -> None:
    import functools

    a = outputs.default_model_key("m", functools.partial(np.clip, a_min=0))
    b = outputs.default_model_key("m", functools.partial(np.clip, a_min=1))
    assert a != b and a.startswith("m|")
    assert outputs.default_model_key("m", Counting(mean_of, "explicit")) == "explicit"
