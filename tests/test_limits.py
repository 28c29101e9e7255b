"""Resource limits: one Limits object for every client, bounded decoding, ids and budgets.

Each limit is tested where it bites: the client kwargs agree with one rule, decoding refuses
oversized or overly structured input before building it, array extensions never allocate more
than they carry, ids cannot forge log lines, and control messages hold only valid budgets and
bounded epochs.
"""

from __future__ import annotations

import math
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlink.topics.codec import (
    ARRAY_EXT_CODE,
    MAX_ITEMS,
    DecodeError,
    count_objects,
    decode,
    decode_record,
    encode,
    encode_record,
)
from mlink.topics.control import MAX_EPOCH, budget_problem
from mlink.topics.frames import DEFAULT_MAX_BYTES, encode_frame
from mlink.topics.ids import MAX_ID_CHARS, MAX_STREAM_ID_CHARS, MAX_TEXT_CHARS, id_problem
from mlink.topics.limits import DEFAULT_LIMITS, ENVELOPE_BYTES, Limits
from mlink.topics.records import (
    ControlMessage,
    DeadLetter,
    Frame,
    ModelOutput,
    ModelResult,
    Plan,
    RecordError,
)

# -- the limits object --------------------------------------------------------------------------


def test_one_record_size_drives_every_client_and_topic() -> None:
    limits = Limits(max_record_bytes=4 * 1024 * 1024)
    message = limits.max_message_bytes
    assert message == limits.max_record_bytes + ENVELOPE_BYTES
    assert limits.topic_config() == {"max.message.bytes": str(message)}
    assert limits.faust_settings() == {
        "producer_max_request_size": message,
        "consumer_max_fetch_size": message,
    }
    assert limits.kafka_producer_kwargs() == {"max_request_size": message}
    assert limits.aiokafka_producer_kwargs() == {"max_request_size": message}
    for kwargs in (limits.kafka_consumer_kwargs(), limits.aiokafka_consumer_kwargs()):
        assert kwargs["max_partition_fetch_bytes"] == message
        assert kwargs["fetch_max_bytes"] >= message


def test_the_defaults_are_coherent() -> None:
    limits = DEFAULT_LIMITS
    assert limits.max_record_bytes == 2 * 1024 * 1024
    # a frame's data leaves room for its envelope and for a dead letter wrapping it
    assert limits.max_frame_data_bytes == DEFAULT_MAX_BYTES
    assert limits.max_frame_data_bytes + 2 * ENVELOPE_BYTES == limits.max_record_bytes
    assert limits.ref_root is None, "ref frames are off by default"
    assert limits.max_pixels >= 4096 * 2160, "DCI 4K fits"
    assert limits.image_cache_bytes >= 4 * limits.max_pixels


def test_a_maximal_frame_fits_in_a_record_and_in_a_dead_letter() -> None:
    names = tuple(f"model-{i:03d}-" + "x" * 240 for i in range(200))  # 200 maximal names
    frame = Frame(
        stream_id="s" * MAX_STREAM_ID_CHARS,
        frame_id="f" * MAX_ID_CHARS,
        seq=2**64 - 1,
        timestamp=1.0,
        encoding="raw",
        data=bytes(DEFAULT_MAX_BYTES),
        shape=(1, DEFAULT_MAX_BYTES),
        plan=Plan(epoch=2**63, active=names, probe=True, link_version=2**63),
    )
    value = encode_record(frame)
    assert len(value) <= DEFAULT_LIMITS.max_record_bytes - ENVELOPE_BYTES
    letter = DeadLetter(
        topic="t" * MAX_ID_CHARS,
        partition=2**31,
        offset=2**63,
        key=("s" * MAX_STREAM_ID_CHARS).encode(),
        value=value,
        reason="é" * (2 * MAX_TEXT_CHARS),  # clipped to MAX_TEXT_CHARS, 2 bytes each
        stage="x" * MAX_ID_CHARS,
        at=1.0,
    )
    assert len(value) <= DEFAULT_LIMITS.max_dead_letter_value_bytes
    assert len(encode_record(letter)) <= DEFAULT_LIMITS.max_record_bytes
    assert decode_record(encode_record(letter), DeadLetter) == letter


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_record_bytes": 1000}, r"max_record_bytes must be an int in"),
        ({"max_record_bytes": 2.5e6}, r"max_record_bytes must be an int"),
        ({"max_pixels": 0}, r"max_pixels must be an int in"),
        ({"image_cache_bytes": -1}, r"image_cache_bytes"),
        ({"ref_root": "relative/dir"}, r"ref_root must be None or an absolute"),
    ],
)
def test_limits_reject_nonsense(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**kwargs)


# -- bounded decoding ---------------------------------------------------------------------------


def test_input_over_the_record_limit_is_refused_before_unpacking() -> None:
    small = Limits(max_record_bytes=4 * ENVELOPE_BYTES)
    data = encode(bytes(small.max_record_bytes))  # a little over: 5 bytes of bin header
    with pytest.raises(DecodeError, match=r"over the record size limit of 262,144"):
        decode(data, limits=small)
    assert decode(data) == bytes(small.max_record_bytes)


def test_object_counts_are_bounded_exactly() -> None:
    at_limit = msgpack.packb([None] * (MAX_ITEMS - 1))
    assert len(decode(at_limit)) == MAX_ITEMS - 1
    with pytest.raises(DecodeError, match=r"more than 100,000 msgpack objects"):
        decode(msgpack.packb([None] * MAX_ITEMS))
    with pytest.raises(DecodeError, match=r"more than 100,000"):  # map keys count too
        decode(msgpack.packb({str(i): None for i in range(MAX_ITEMS // 2 + 1)}))


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except DecodeError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "item",
    [b"\x90", b"\x80", b"\xa2ab", b"\xc4\x02ab", b"\xcd\x01\x01"],
    ids=["empty-lists", "empty-maps", "short-strs", "short-bins", "ints"],
)
def test_decoding_a_maximal_message_of_small_objects_stays_small(item: bytes) -> None:
    """Without the object bound, 2 MiB of empty lists cost 135 MB, of short strs 42 MB."""
    count = DEFAULT_LIMITS.max_record_bytes // len(item) - 1
    data = b"\xdd" + count.to_bytes(4, "big") + item * count
    assert _peak(lambda: decode(data)) < 2 * len(data) + 20_000_000


def _ext(dtype: str, shape: list[int], raw: bytes) -> bytes:
    payload = msgpack.packb([dtype, shape, raw], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(ARRAY_EXT_CODE, payload), use_bin_type=True)


@pytest.mark.parametrize(
    "shape",
    [[2**32, 2**32], [0, 2**62, 2**62], [0, *[2**40] * 10], [2**31, 0, 2**31], [2**64 - 1]],
)
def test_array_shapes_that_claim_more_than_their_bytes_are_refused(shape: list[int]) -> None:
    with pytest.raises(DecodeError, match=r"bad numpy array extension"):
        decode(_ext("<f8", shape, b""))


def test_array_decoding_allocates_about_what_it_carries() -> None:
    raw = bytes(1_000_000)
    data = _ext("<f8", [125_000], raw)
    peak = _peak(lambda: decode(data))
    assert peak < 4 * len(data) + 100_000
    empty = _ext("<f8", [0, 2**20, 2**20], b"")
    assert decode(empty).shape == (0, 2**20, 2**20)
    assert _peak(lambda: decode(empty)) < 100_000


# -- ids and free text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("cam-1", True),
        ("caméra nord 北", True),
        ("with space", True),
        ("emoji 📷", True),
        ("x" * MAX_ID_CHARS, True),
        ("x" * (MAX_ID_CHARS + 1), False),
        ("", False),
        ("line\nforged", False),
        ("cr\r", False),
        ("tab\t", False),
        ("nul\x00", False),
        ("del\x7f", False),
        ("c1\x85", False),
        ("bidi\u202e", False),
        ("zero\u200bwidth", False),
        ("line\u2028sep", False),
        ("para\u2029sep", False),
        (5, False),
    ],
)
def test_id_rule(value: object, ok: bool) -> None:
    assert (id_problem(value) is None) is ok


@pytest.mark.parametrize("field", ["stream_id", "frame_id"])
def test_frames_refuse_ids_that_forge_log_lines(field: str) -> None:
    good = encode_frame(np.zeros((2, 2), np.uint8), "s", 0)
    d = good.to_dict()
    d[field] = "s:0\n2024-01-01 INFO all good"
    forged = rf"Frame\.{field}: character 3 is U\+000A \(category Cc\)"
    with pytest.raises(RecordError, match=forged):
        decode_record(encode(d), Frame)


def test_stream_ids_leave_room_for_the_conventional_frame_id() -> None:
    stream = "s" * MAX_STREAM_ID_CHARS
    frame = encode_frame(np.zeros((2, 2), np.uint8), stream, 2**64 - 1)
    assert len(frame.frame_id) <= MAX_ID_CHARS
    with pytest.raises(RecordError, match=r"Frame\.stream_id: expected at most 200 characters"):
        encode_frame(np.zeros((2, 2), np.uint8), stream + "s", 0)


def test_model_names_everywhere_follow_the_id_rule() -> None:
    with pytest.raises(RecordError, match=r"Plan\.active\[1\]: character"):
        Plan(epoch=0, active=("a", "b\n"))
    with pytest.raises(RecordError, match=r"ModelResult\.sources\[0\]"):
        ModelResult(model="a", output=np.ones(1), status="synthesized", sources=("\u202e",))
    with pytest.raises(RecordError, match=r"ControlMessage\.active\[0\]"):
        ControlMessage(kind="active_set", epoch=1, issued_at=0.0, active=("x" * 257,))


def test_free_text_keeps_newlines_but_is_clipped() -> None:
    output = ModelOutput(
        frame_id="s:0",
        stream_id="s",
        seq=0,
        model="m",
        output=np.ones(1),
        epoch=0,
        elapsed_ms=0.0,
        produced_at=0.0,
        error="Traceback\n" + "x" * 20_000,
    )
    assert output.error is not None and len(output.error) == MAX_TEXT_CHARS
    assert output.error.startswith("Traceback\n") and output.error.endswith("[clipped]")
    assert decode_record(encode_record(output), ModelOutput) == output


# -- control messages: epochs and budgets -------------------------------------------------------


def test_control_epochs_and_link_versions_are_bounded() -> None:
    ControlMessage(kind="active_set", epoch=MAX_EPOCH, issued_at=0.0, active=("a",))
    for field in ("epoch", "link_version", "probe_every"):
        kwargs = {"epoch": 1, field: 2**64 - 1}
        with pytest.raises(
            RecordError, match=rf"ControlMessage\.{field}: expected an int <= {2**53}"
        ):
            ControlMessage(kind="active_set", issued_at=0.0, active=("a",), **kwargs)
    forged = {"v": 1, "type": "control", "kind": "active_set", "epoch": 2**64 - 1}
    with pytest.raises(DecodeError, match=r"ControlMessage\.epoch"):
        decode_record(encode({**forged, "issued_at": 0.0, "active": ["a"]}), ControlMessage)


@pytest.mark.parametrize(
    "budget",
    [
        {"ms": 30},
        {"ms": 0.5, "memory_mb": 4000},
        {"fraction": 1.0},
        {"fraction": 0.2, "memory_mb": 1},
        {"target_agreement": 0.95},
        {"target_agreement": 0.9, "target_agreement:pose": 0.99},
        {},
    ],
)
def test_valid_budgets(budget: dict) -> None:
    assert budget_problem(budget) is None
    ControlMessage(kind="budget", epoch=0, issued_at=0.0, budget=budget)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"msec": 30}, r"unknown budget key 'msec'"),
        ({"ms": 0}, r"'ms' must be a finite number > 0"),
        ({"ms": -1}, r"'ms' must be a finite number > 0"),
        ({"ms": math.inf}, r"finite"),
        ({"memory_mb": math.nan}, r"finite"),
        ({"fraction": 1.5}, r"'fraction' is a share and must lie in \(0, 1\]"),
        ({"target_agreement": 0.0}, r"> 0"),
        ({"target_agreement:pose": 2.0}, r"share"),
        ({"target_agreement:": 0.5}, r"model name: expected a non-empty str"),
        ({"target_agreement:a\nb": 0.5}, r"model name: character 1"),
    ],
)
def test_invalid_budgets_are_refused_naming_the_key(budget: dict, message: str) -> None:
    with pytest.raises(RecordError, match=r"ControlMessage\.budget: .*" + message):
        ControlMessage(kind="budget", epoch=0, issued_at=0.0, budget=budget)


def test_per_model_targets_must_name_known_models_when_models_are_given() -> None:
    assert budget_problem({"target_agreement:pose": 0.9}, ["pose"]) is None
    problem = budget_problem({"target_agreement:ghost": 0.9}, ["pose"])
    assert problem is not None and "unknown model" in problem


def _python_count(obj: object) -> int:
    if isinstance(obj, list):
        return 1 + sum(map(_python_count, obj))
    if isinstance(obj, dict):
        return 1 + sum(_python_count(k) + _python_count(v) for k, v in obj.items())
    return 1


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(width=32)  # packable as float 32 and 64
    | st.text(max_size=70)
    | st.binary(max_size=300)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=300)),
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=4), inner, max_size=20)
    ),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(msgpack_values, st.booleans())
def test_the_object_count_agrees_with_msgpack(value: object, single_float: bool) -> None:
    data = msgpack.packb(value, use_bin_type=True, use_single_float=single_float)
    decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert count_objects(data) == _python_count(decoded)


def test_the_object_count_covers_every_header_width() -> None:
    values = [
        [None] * 70_000,  # array 32
        [b"x" * 70_000, "y" * 70_000, msgpack.ExtType(1, b"z" * 70_000)],  # 32-bit lengths
        {str(i): i for i in range(300)},  # map 16
        [b"x" * 300, "y" * 300, msgpack.ExtType(1, b"z" * 300), -(2**40), 2**40],
        [msgpack.ExtType(1, b"a" * n) for n in (1, 2, 4, 8, 16, 3)],  # fixext and ext 8
    ]
    for value in values:
        data = msgpack.packb(value, use_bin_type=True)
        decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
        assert count_objects(data) == _python_count(decoded)
    assert count_objects(msgpack.packb([None] * 70_000), limit=10) == 11  # stops past it
