"""Tests for the msgpack codec (mlink.topics.codec).

The codec's two promises are checked adversarially: arrays round-trip bit for bit (dtype,
byte order, shape, NaN payloads), and no input bytes whatsoever make a decoder raise
anything but DecodeError.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlink.topics.codec import (
    ARRAY_EXT_CODE,
    DecodeError,
    decode,
    decode_any_record,
    decode_record,
    encode,
    encode_record,
)
from mlink.topics.limits import Limits
from mlink.topics.records import (
    RECORD_TYPES,
    ControlMessage,
    DeadLetter,
    Frame,
    FrameResult,
    ModelOutput,
    ModelResult,
    Plan,
    WireRecord,
)

DTYPES = [
    "<f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16",
    "<i8", ">i8", "<i4", ">i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1",
    "<M8[ns]", "<m8[s]", "|S3", "<U2",
]  # fmt: skip
FLOAT_DTYPES = ["<f2", "<f4", ">f4", "<f8", ">f8"]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def assert_bitwise_equal(actual: Any, expected: np.ndarray) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.dtype.str == expected.dtype.str
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def ext(payload: Any) -> bytes:
    """A message holding one array extension with a hand-made payload."""
    raw = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(ARRAY_EXT_CODE, raw), use_bin_type=True)


def sample_records() -> list[WireRecord]:
    plan = Plan(epoch=2, active=("detector", "pose"), probe=True, link_version=4)
    results = (
        ModelResult(model="detector", output=np.arange(6.0).reshape(2, 3), status="executed"),
        ModelResult(
            model="pose",
            output=np.array(np.nan, dtype="<f4"),
            status="synthesized",
            link_version=4,
            sources=("detector",),
        ),
    )
    return [
        Frame(
            stream_id="cam-1",
            frame_id="cam-1:9",
            seq=9,
            timestamp=1.5,
            encoding="raw",
            data=bytes(12),
            shape=(2, 2, 3),
            plan=plan,
        ),
        plan,
        ModelOutput(
            frame_id="cam-1:9",
            stream_id="cam-1",
            seq=9,
            model="detector",
            output=np.linspace(0, 1, 10, dtype=">f8"),
            epoch=2,
            elapsed_ms=3.25,
            produced_at=2.0,
        ),
        results[1],
        FrameResult(
            frame_id="cam-1:9",
            stream_id="cam-1",
            seq=9,
            epoch=2,
            results=results,
            degraded=True,
            emitted_at=2.5,
        ),
        ControlMessage(
            kind="budget",
            epoch=3,
            issued_at=4.0,
            active=("detector",),
            budget={"memory_mb": 5000, "ms": 30},
            probe_every=10,
            extra={"reason": "load", "levels": [1, 2.5, None]},
        ),
        DeadLetter(
            topic="mlink.frames",
            partition=0,
            offset=17,
            key=b"cam-1",
            value=b"\x93garbage",
            reason="truncated message",
            stage="planner",
            at=5.0,
        ),
    ]


SAMPLES = sample_records()


# ---------------------------------------------------------------------------- arrays


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from(DTYPES).map(np.dtype), shape=shapes))
def test_arrays_round_trip_bit_for_bit(array: np.ndarray) -> None:
    assert_bitwise_equal(decode(encode(array)), array)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FLOAT_DTYPES).map(np.dtype), shapes, st.data())
def test_every_float_bit_pattern_survives_including_nan_payloads(
    dtype: np.dtype[Any], shape: tuple[int, ...], data: st.DataObject
) -> None:
    raw = data.draw(st.binary(min_size=math.prod(shape) * dtype.itemsize).map(bytes))
    array = np.frombuffer(raw[: math.prod(shape) * dtype.itemsize], dtype=dtype).reshape(shape)
    assert_bitwise_equal(decode(encode(array)), array)


def test_signalling_nan_and_negative_zero_are_kept() -> None:
    bits = np.array([0x7FA00001, 0xFFC12345, 0x80000000, 0x7F800000], dtype="<u4")
    array = bits.view("<f4")
    back = decode(encode(array))
    assert_bitwise_equal(back, array)
    assert back.view("<u4").tolist() == bits.tolist()


@pytest.mark.parametrize(
    "array",
    [
        np.array(3.5),
        np.array(True),
        np.zeros((0,)),
        np.zeros((3, 0, 2), dtype="<i4"),
        np.zeros((), dtype=">f8"),
    ],
    ids=["0d-float", "0d-bool", "empty", "zero-size-3d", "0d-big-endian"],
)
def test_zero_dimensional_and_zero_size_arrays(array: np.ndarray) -> None:
    assert_bitwise_equal(decode(encode(array)), array)


def test_non_contiguous_views_arrive_as_writable_c_contiguous_arrays() -> None:
    base = np.arange(24, dtype="<i8").reshape(4, 6)
    for view in (base.T, base[::2, ::3], base[:, 1]):
        back = decode(encode(view))
        assert_bitwise_equal(back, np.ascontiguousarray(view))
        assert back.flags.c_contiguous and back.flags.writeable and back.flags.aligned
        back[...] = 0  # consumers may compute in place


def test_numpy_scalars_become_plain_python_numbers() -> None:
    values = [np.float32(1.5), np.float64(2.25), np.float16(0.5), np.int64(-3), np.uint8(7)]
    values += [np.bool_(True), np.int32(2**31 - 1)]
    back = decode(encode(values))
    assert back == [1.5, 2.25, 0.5, -3, 7, True, 2**31 - 1]
    assert [type(v) for v in back] == [float, float, float, int, int, bool, int]
    assert decode(encode(np.float32(0.1))) == float(np.float32(0.1)), "conversion is exact"
    kept = decode(encode(np.asarray(np.float32(1.5))))
    assert_bitwise_equal(kept, np.asarray(np.float32(1.5)))


def test_plain_structures_round_trip_with_tuples_as_lists() -> None:
    obj = {
        "a": (1, 2),
        "arrays": [np.ones(3, dtype="|u1"), {"deep": np.eye(2)}],
        "1": b"bytes",
        "s": "ünïcode",
        "none": None,
    }
    back = decode(encode(obj))
    assert back["a"] == [1, 2]
    assert_bitwise_equal(back["arrays"][0], np.ones(3, dtype="|u1"))
    assert_bitwise_equal(back["arrays"][1]["deep"], np.eye(2))
    assert back["1"] == b"bytes" and back["s"] == "ünïcode" and back["none"] is None


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (np.array([object()]), r"object arrays hold Python pointers"),
        (np.zeros(2, dtype="i4,f4"), r"structured and void dtypes are not supported"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), r"masked array"),
        (np.complex64(1j), r"numpy\.complex64.*np\.asarray"),
        (object(), r"cannot encode builtins\.object as msgpack"),
        ({1, 2}, r"cannot encode builtins\.set"),
        (2**64, r"cannot encode int 18446744073709551616: msgpack ints must fit in 64 bits"),
    ],
)
def test_unencodable_values_raise_saying_why(obj: Any, message: str) -> None:
    with pytest.raises((TypeError, OverflowError), match=message):
        encode(obj)


def test_records_must_go_through_encode_record() -> None:
    with pytest.raises(TypeError, match=r"use encode_record"):
        encode(SAMPLES[1])
    with pytest.raises(TypeError, match=r"encode_record\(\) takes a record"):
        encode_record({"v": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected must be a record class"):
        decode_record(encode_record(SAMPLES[1]), dict)  # type: ignore[type-var]


def test_large_array_round_trips_bit_for_bit() -> None:
    # speed lives in bench/codec.py; here only exactness at a realistic size
    big = np.random.default_rng(1).random(2_000_000)
    data = encode(big)
    with pytest.raises(DecodeError, match=r"16,000,022 bytes, over the record size limit"):
        decode(data)  # 16 MB is over the default 2 MiB
    assert_bitwise_equal(decode(data, limits=Limits(max_record_bytes=len(data))), big)


# ---------------------------------------------------------------------------- bad bytes


def _decodes_or_raises_decode_error(fn: Any, data: bytes) -> Any:
    try:
        return fn(data)
    except DecodeError as exc:
        assert str(exc), "a decode error must say what was wrong"
        return exc


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_garbage_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    _decodes_or_raises_decode_error(decode, data)
    result = _decodes_or_raises_decode_error(decode_any_record, data)
    assert isinstance(result, WireRecord | DecodeError)
    for cls in RECORD_TYPES.values():
        result = _decodes_or_raises_decode_error(lambda d, cls=cls: decode_record(d, cls), data)
        assert isinstance(result, cls | DecodeError)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_corrupted_records_only_ever_raise_decode_error(
    record: WireRecord, data: st.DataObject
) -> None:
    """Flip, insert and delete bytes in valid messages, to reach the deep validators."""
    buf = bytearray(encode_record(record))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif buf:
            del buf[pos]
    result = _decodes_or_raises_decode_error(decode_any_record, bytes(buf))
    assert isinstance(result, WireRecord | DecodeError)
    result = _decodes_or_raises_decode_error(lambda d: decode_record(d, type(record)), bytes(buf))
    assert isinstance(result, type(record) | DecodeError)


wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.integers(-(2**63), 2**64 - 1), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_records_with_a_wrong_field_only_ever_raise_decode_error(
    record: WireRecord, data: st.DataObject
) -> None:
    d = record.to_dict()
    name = data.draw(st.sampled_from(sorted(d)))
    if data.draw(st.booleans()):
        del d[name]
    else:
        d[name] = data.draw(wire_values)
    result = _decodes_or_raises_decode_error(lambda b: decode_record(b, type(record)), encode(d))
    assert isinstance(result, type(record) | DecodeError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(list, st.lists(wire_values, max_size=4)))
def test_garbage_array_payloads_only_ever_raise_decode_error(payload: Any) -> None:
    result = _decodes_or_raises_decode_error(decode, ext(payload))
    assert isinstance(result, np.ndarray | DecodeError)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*DTYPES, "float64", "=f8", "|O", "i4,f4", "(2,)<i4", "|V4", "|S0", "<U0"]),
    st.lists(st.integers(-2, 2**62), max_size=4),
    st.binary(max_size=64),
)
def test_plausible_array_headers_only_ever_raise_decode_error(
    dtype: str, shape: list[int], raw: bytes
) -> None:
    result = _decodes_or_raises_decode_error(decode, ext([dtype, shape, raw]))
    if isinstance(result, np.ndarray):
        assert result.dtype.str == dtype and list(result.shape) == shape
        assert result.tobytes() == raw


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1", r"bad numpy array extension: payload is not msgpack"),
        (["<f8", [1]], r"expected payload \[dtype, shape, data\], got list"),
        ({"dtype": "<f8"}, r"expected payload \[dtype, shape, data\], got dict"),
        ([8, [1], bytes(8)], r"dtype must be a str like '<f8', got int"),
        (["nope", [1], bytes(8)], r"unknown dtype 'nope'"),
        (["float64", [1], bytes(8)], r"dtype 'float64' is not canonical"),
        (["i4,f4", [1], bytes(8)], r"dtype 'i4,f4' is not canonical"),
        (["|O", [1], bytes(8)], r"dtype '\|O': object arrays"),
        (["|S0", [1], b""], r"zero-size items cannot be decoded"),
        (["<f8", [-1], bytes(8)], r"shape must be a list of at most 64 non-negative ints"),
        (["<f8", [True], bytes(8)], r"shape must be a list"),
        (["<f8", "1", bytes(8)], r"shape must be a list"),
        (["<f8", [1] * 65, bytes(8)], r"at most 64"),
        (["<f8", [1], "text"], r"data must be bytes, got str"),
        (["<f8", [2], bytes(8)], r"data is 8 bytes but dtype <f8 and shape \(2,\) need 16"),
        (["<f8", [], bytes(7)], r"data is 7 bytes but dtype <f8 and shape \(\) need 8"),
        (["<f8", [0, 2**62, 2**62], b""], r"cannot build shape"),
        (
            ["<f8", [1], msgpack.ExtType(ARRAY_EXT_CODE, encode(np.zeros(1))[3:])],
            r"payload: holds a nested msgpack extension \(type 42, .*arrays cannot nest",
        ),
        (["<f8", [msgpack.ExtType(7, b"")], bytes(8)], r"nested msgpack extension \(type 7, 0"),
    ],
)
def test_bad_array_payloads_say_what_is_wrong(payload: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(ext(payload))


def test_unknown_extension_type_is_a_decode_error() -> None:
    data = msgpack.packb([msgpack.ExtType(7, b"x")], use_bin_type=True)
    with pytest.raises(DecodeError, match=r"unknown msgpack extension type 7.*only 42"):
        decode(data)


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_every_truncation_of_a_valid_message_is_a_decode_error(record: WireRecord) -> None:
    data = encode_record(record)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_any_record(data[:cut])
        with pytest.raises(DecodeError):
            decode_record(data[:cut], type(record))
    assert decode_record(data, type(record)) == record


def test_empty_input_is_reported_as_truncated() -> None:
    with pytest.raises(DecodeError, match=r"truncated message"):
        decode(b"")


def test_trailing_bytes_are_a_decode_error() -> None:
    data = encode_record(SAMPLES[0])
    with pytest.raises(DecodeError, match=r"1 trailing bytes after a complete message"):
        decode_record(data + b"\x00", Frame)
    with pytest.raises(DecodeError, match=r"trailing bytes"):
        decode_any_record(data + data)


@pytest.mark.parametrize("value", [b'{"frame_id": "cam0:1"}', b"hello", b"\x01\x02"])
def test_json_or_text_is_named_as_not_msgpack(value: bytes) -> None:
    """Read as msgpack, JSON or text is one small int and trailing bytes: the reason said
    "trailing bytes" to a producer who had sent JSON (a new user's audit, stop 45)."""
    with pytest.raises(DecodeError, match=r"not msgpack: the value starts .*msgpack maps"):
        decode_any_record(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", r"not valid msgpack"),
        (b"\xa2\xff\xfe", r"not valid UTF-8"),
        (b"\x81\x91\x01\x01", r"list is not allowed for map key"),
        (b"\x81\x01\x01", r"int is not allowed for map key"),
        (b"\x91" * 5000 + b"\x01", r"not valid msgpack"),
        (b"\xdd\x00\x01\x86\xa1" + b"\x90" * 100_001, r"more than 100,000 msgpack objects"),
    ],
    ids=[
        "reserved-byte",
        "bad-utf8",
        "list-as-map-key",
        "int-map-key",
        "nested-too-deep",
        "too-many-objects",
    ],
)
def test_malformed_msgpack_is_a_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def frame_with_data(value: bytes) -> bytes:
    """A Frame message whose ``data`` field is the msgpack ``value``, however deeply it nests
    (msgpack.packb itself refuses to pack more than 511 levels)."""
    fields = {key: item for key, item in SAMPLES[0].to_dict().items() if key != "data"}
    head = encode(fields)
    assert head[0] == 0x80 | len(fields), "a fixmap: one more entry bumps its first byte"
    return bytes([head[0] + 1]) + head[1:] + encode("data") + value


def nested_array_extensions(depth: int) -> bytes:
    """An array extension whose payload is an array extension, ``depth`` times over."""
    value = encode(np.zeros(1))
    for _ in range(depth):
        value = msgpack.packb(msgpack.ExtType(ARRAY_EXT_CODE, value))
    return value


# Decodes stdin as the frame, control and results readers do, printing each outcome: a decoder
# that overflows the C stack kills this child, not pytest.
DECODE_IN_CHILD = """
import sys
from mlink.topics.codec import DecodeError, decode_any_record, decode_record
from mlink.topics.records import ControlMessage, Frame
data = sys.stdin.buffer.read()
for cls in (Frame, ControlMessage, None):
    try:
        decode_any_record(data) if cls is None else decode_record(data, cls)
        print("decoded")
    except DecodeError as exc:
        print(exc)
"""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (nested_array_extensions(200), r"arrays cannot nest"),
        (nested_array_extensions(5000), r"arrays cannot nest"),
        # Under 100,000 bytes, so msgpack's own nesting limit refuses these, not the item count.
        (b"\x91" * 99_000 + b"\xc0", r"not valid msgpack \(StackError"),
        (b"\x81\xa1k" * 33_000 + b"\xc0", r"not valid msgpack \(StackError"),
        (
            msgpack.packb(msgpack.ExtType(ARRAY_EXT_CODE, b"\x91" * 99_000 + b"\xc0")),
            r"bad numpy array extension: payload is not msgpack \(",
        ),
    ],
    ids=[
        "array-ext-200-deep",
        "array-ext-5000-deep",
        "lists-99000-deep",
        "maps-33000-deep",
        "lists-99000-deep-in-array-payload",
    ],
)
def test_deep_nesting_is_a_decode_error_not_a_crash(value: bytes, message: str) -> None:
    """Each nested array extension used to recurse through msgpack's C code: 200 levels, a
    record under 1 KB, overflowed the C stack and killed the worker with a segfault."""
    child = subprocess.run(
        [sys.executable, "-c", DECODE_IN_CHILD],
        input=frame_with_data(value),
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = child.stderr.decode(errors="replace")[-2000:]
    assert child.returncode == 0, f"the decoder crashed (exit {child.returncode}): {stderr}"
    outcomes = child.stdout.decode().splitlines()
    assert len(outcomes) == 3, outcomes
    for outcome in outcomes:
        assert re.search(message, outcome), outcome


@pytest.mark.parametrize("value", [None, "a str", 12])
def test_non_bytes_input_is_a_decode_error(value: Any) -> None:
    with pytest.raises(DecodeError, match=r"expected bytes to decode"):
        decode(value)
    with pytest.raises(DecodeError, match=r"expected bytes to decode"):
        decode_any_record(value)


def test_tombstones_are_named() -> None:
    with pytest.raises(DecodeError, match=r"Kafka tombstone"):
        decode_record(None, ControlMessage)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- record tags


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_wrong_record_type_is_a_decode_error_naming_both(record: WireRecord) -> None:
    data = encode_record(record)
    for cls in RECORD_TYPES.values():
        if cls is type(record):
            continue
        with pytest.raises(DecodeError) as info:
            decode_record(data, cls)
        message = str(info.value)
        assert f"expected a {cls.__name__} record (type {cls.TYPE!r})" in message
        assert f"is a {type(record).__name__} record (type {record.TYPE!r})" in message


def test_unknown_record_type_lists_the_known_ones() -> None:
    data = encode({"v": 1, "type": "heartbeat"})
    with pytest.raises(DecodeError, match=r"unknown record type 'heartbeat'; known types are "):
        decode_any_record(data)
    with pytest.raises(DecodeError, match=r"is a record of unknown type \(type 'heartbeat'\)"):
        decode_record(data, Frame)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], r"message is not a record: expected a record dict .* got list"),
        ({"type": "frame"}, r"missing or malformed schema version 'v'"),
        ({"v": 1}, r"missing or malformed record 'type' tag"),
        ({"v": 1, "type": 5}, r"missing or malformed record 'type' tag \(int 5\)"),
    ],
)
def test_messages_that_are_not_records(obj: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_any_record(encode(obj))
    with pytest.raises(DecodeError, match=message):
        decode_record(encode(obj), Frame)


def test_invalid_field_inside_valid_msgpack_is_a_decode_error_naming_the_field() -> None:
    d = SAMPLES[2].to_dict()
    d["output"] = [1.0, 2.0]
    with pytest.raises(DecodeError, match=r"ModelOutput\.output: expected a numpy ndarray"):
        decode_record(encode(d), ModelOutput)
    del d["model"]
    with pytest.raises(DecodeError, match=r"ModelOutput\.model: required field is missing"):
        decode_any_record(encode(d))
