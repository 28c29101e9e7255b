"""Fuzzing every decoder a worker runs on untrusted bytes (issue 9, part 9).

For random bytes, for valid records with bytes flipped, inserted, deleted or cut, for wire
dicts with fields replaced by anything msgpack can carry, and for frames with mutated images:

- only :class:`DecodeError` (or a subclass) escapes ``decode_record`` for every record type,
  ``decode_any_record`` and ``decode_frame``;
- memory per input is bounded: the peak traced allocation is at most a small multiple of the
  input size plus a constant (for frames: plus the largest image the limits allow);
- time per input is bounded, generously, since the machine may be loaded.

The runs are deterministic (``derandomize=True``) and sized so the file takes well under 30 s.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import cv2
import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlink.topics.codec import MAX_ITEMS, decode_any_record, decode_record, encode, encode_record
from mlink.topics.frames import decode_frame
from mlink.topics.limits import Limits
from mlink.topics.records import (
    RECORD_TYPES,
    ControlMessage,
    DeadLetter,
    DecodeError,
    Frame,
    FrameResult,
    ModelOutput,
    ModelResult,
    Plan,
    PlanNotice,
    WireRecord,
)

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PEAK_FACTOR = 8  # bytes allocated per input byte, at most (copies of bytes and arrays)
# Plus at most MAX_ITEMS Python objects (an empty dict and its slot: 72 bytes), and exception
# objects, messages and small caches: what an input of any size may cost beyond its bytes.
PEAK_CONSTANT = MAX_ITEMS * 80 + 1_000_000
SECONDS_PER_INPUT = 10.0  # generous, under tracemalloc on a loaded 2-core machine


def bounded(fn: Callable[[], Any], size: int, extra: int = 0) -> Any:
    """Run ``fn``; only DecodeError may escape; memory and time stay within the bounds."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = fn()
    except DecodeError as exc:
        assert str(exc), "a decode error must say what was wrong"
        result = exc
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= PEAK_FACTOR * size + PEAK_CONSTANT + extra, (peak, size)
    assert elapsed < SECONDS_PER_INPUT, elapsed
    return result


def decode_everything(data: bytes) -> None:
    """Every record decoder on the same bytes."""
    result = bounded(lambda: decode_any_record(data), len(data))
    assert isinstance(result, WireRecord | DecodeError)
    for cls in RECORD_TYPES.values():
        result = bounded(lambda cls=cls: decode_record(data, cls), len(data))
        assert isinstance(result, cls | DecodeError)


def samples() -> list[WireRecord]:
    plan = Plan(epoch=3, active=("digit", "pose"), probe=True, link_version=2)
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    ok, png = cv2.imencode(".png", image)
    assert ok
    executed = ModelResult(model="digit", output=np.linspace(0, 1, 10), status="executed")
    synthesized = ModelResult(
        model="pose",
        output=np.ones((2, 5), "<f4"),
        status="synthesized",
        link_version=2,
        sources=("digit",),
        agreement=0.9,
    )
    return [
        Frame(
            stream_id="cam",
            frame_id="cam:1",
            seq=1,
            timestamp=1.0,
            encoding="png",
            data=png.tobytes(),
            shape=(4, 4, 3),
            plan=plan,
        ),
        Frame(
            stream_id="cam",
            frame_id="cam:2",
            seq=2,
            timestamp=1.0,
            encoding="raw",
            data=image.tobytes(),
            shape=(4, 4, 3),
        ),
        plan,
        PlanNotice(
            frame_id="cam:1", stream_id="cam", seq=1, plan=plan, timestamp=1.0, planned_at=2.0
        ),
        ModelOutput(
            frame_id="cam:1",
            stream_id="cam",
            seq=1,
            model="digit",
            output=np.eye(3),
            epoch=3,
            elapsed_ms=1.5,
            produced_at=2.0,
            error="boom\ntraceback",
        ),
        executed,
        FrameResult(
            frame_id="cam:1",
            stream_id="cam",
            seq=1,
            epoch=3,
            results=(executed, synthesized),
            degraded=False,
            emitted_at=3.0,
            probe=True,
        ),
        ControlMessage(
            kind="agreement",
            epoch=3,
            issued_at=1.0,
            budget={"fraction": 0.3},
            extra={"live_agreement": {"pose": 0.8}, "probes": 10},
        ),
        DeadLetter(
            topic="mlink.frames",
            partition=0,
            offset=9,
            key=b"cam",
            value=b"\x93garbage",
            reason="truncated",
            stage="planner",
            at=1.0,
        ),
    ]


SAMPLES = samples()
assert {type(r) for r in SAMPLES} == set(RECORD_TYPES.values()), "a sample of every record type"


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "repeat"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:  # msgpack type bytes: containers, lengths, ext
            buf[pos] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xC1, 0xC7, 0xC9, 0xDD, 0xDF, 0xFF])
            )
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "cut":
            del buf[pos:]
        elif op == "repeat":
            buf[pos:pos] = buf[pos : pos + draw(st.integers(1, 16))] * draw(st.integers(1, 50))
    return bytes(buf)


mutated_records = st.sampled_from(SAMPLES).flatmap(lambda r: mutated(encode_record(r)))

wire = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def records_with_odd_fields(draw: st.DrawFn) -> bytes:
    d = draw(st.sampled_from(SAMPLES)).to_dict()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(d)))
        d[name] = draw(wire)
    return encode(d)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    decode_everything(data)


@FUZZ
@given(mutated_records)
def test_mutated_records(data: bytes) -> None:
    decode_everything(data)


@FUZZ
@given(records_with_odd_fields())
def test_records_with_odd_fields(data: bytes) -> None:
    decode_everything(data)


@settings(FUZZ, max_examples=6)
@given(
    st.sampled_from([b"\x90", b"\x80", b"\xa2ab", b"\xc4\x01x", b"\x91\x90", b"\xcb" + bytes(8)]),
    st.integers(MAX_ITEMS // 2, 2 * MAX_ITEMS),
    st.booleans(),
)
def test_amplifying_messages(item: bytes, count: int, as_map: bool) -> None:
    """Many small objects: the most Python memory per input byte msgpack can be asked for."""
    header = b"\xdf" if as_map else b"\xdd"
    n = count // 2 if as_map else count
    data = header + n.to_bytes(4, "big") + item * count
    for decoder in (decode_any_record, lambda d: decode_record(d, Frame)):
        result = bounded(lambda decoder=decoder: decoder(data), len(data))
        assert isinstance(result, DecodeError)


# -- frames ---------------------------------------------------------------------------------

FRAME_LIMITS = Limits(max_pixels=64 * 64)


def _image_bytes(encoding: str, h: int, w: int, c: int) -> bytes:
    image = np.random.default_rng(h * 31 + w).integers(0, 256, (h, w, c), dtype=np.uint8)
    ok, buf = cv2.imencode(".png" if encoding == "png" else ".jpg", image)
    assert ok
    return buf.tobytes()


@st.composite
def fuzzed_frames(draw: st.DrawFn) -> Frame:
    encoding = draw(st.sampled_from(["png", "jpeg", "raw"]))
    h, w = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    c = draw(st.sampled_from([1, 3]))
    if encoding == "raw":
        data = draw(st.binary(max_size=64)) if draw(st.booleans()) else bytes(h * w * c)
    else:
        data = draw(mutated(_image_bytes(draw(st.sampled_from(["png", "jpeg"])), h, w, c)))
    shape = draw(
        st.none()
        | st.just((h, w, c))
        | st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 100), max_size=4).map(tuple)
    )
    if encoding == "raw" and shape is None:
        shape = (h, w)
    return Frame(
        stream_id="s",
        frame_id="s:1",
        seq=1,
        timestamp=0.0,
        encoding=encoding,
        data=data,
        shape=shape,
    )


@FUZZ
@given(fuzzed_frames())
def test_frames(frame: Frame) -> None:
    image_bound = 2 * FRAME_LIMITS.max_image_bytes  # the decoded image and one working copy
    result = bounded(lambda: decode_frame(frame, FRAME_LIMITS), len(frame.data), image_bound)
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and result.shape[0] * result.shape[1] <= 64 * 64


@FUZZ
@given(st.sampled_from(SAMPLES[:2]).flatmap(lambda r: mutated(encode_record(r))))
def test_frames_from_mutated_wire_bytes(data: bytes) -> None:
    """The full path of a worker: bytes to Frame to pixels; only DecodeError escapes."""
    try:
        frame = decode_record(data, Frame)
    except DecodeError:
        return
    bounded(lambda: decode_frame(frame, FRAME_LIMITS), len(data), 2 * FRAME_LIMITS.max_image_bytes)


def test_the_fuzzers_reach_valid_records() -> None:
    """Sanity: an unmutated sample decodes, so the fuzzers start from real records."""
    for record in SAMPLES:
        assert decode_any_record(encode_record(record)) == record
    assert msgpack.unpackb(encode_record(SAMPLES[0]))["type"] == "frame"
