"""Tests for the wire records (mlink.topics.records) and topic names (mlink.topics.names).

Round trips are property-based: every record type is generated with arbitrary contents,
sent through to_dict/from_dict and through the msgpack codec, and must come back equal
(bitwise for arrays) with exactly the field types its constructor promises.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlink.topics.codec import decode_any_record, decode_record, encode, encode_record
from mlink.topics.names import TopicNames
from mlink.topics.records import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    ControlMessage,
    DeadLetter,
    DecodeError,
    Frame,
    FrameResult,
    ModelOutput,
    ModelResult,
    Plan,
    PlanNotice,
    RecordError,
    WireRecord,
)

# ---------------------------------------------------------------------------- strategies

# Ids: printable text of any script (see mlink.topics.ids); control characters are rejected.
ids = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=12,
)
model_names = st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=8)
name_tuples = st.lists(model_names, unique=True, max_size=4).map(tuple)
counts = st.integers(0, 2**63 - 1)
versions = st.none() | st.integers(-(2**63), 2**64 - 1)
# Ints are valid floats on construction; they must come back as float.
numbers = st.floats() | st.integers(-(10**9), 10**9)
OUTPUT_DTYPES = ["<f4", "<f8", ">f8", "<i8", "<i4", "|u1", "|b1", "<f2"]
outputs = hnp.arrays(
    dtype=st.sampled_from(OUTPUT_DTYPES).map(np.dtype),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)

plans = st.builds(
    Plan,
    epoch=counts,
    active=st.lists(model_names, unique=True, max_size=4).map(lambda xs: tuple(sorted(xs))),
    probe=st.booleans(),
    link_version=versions,
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    encoding = draw(st.sampled_from(["jpeg", "png", "raw", "ref"]))
    data = draw(st.text().map(str.encode) if encoding == "ref" else st.binary(max_size=64))
    shape_strategy = st.lists(st.integers(0, 4096), max_size=4).map(tuple)
    shape = draw(shape_strategy if encoding == "raw" else st.none() | shape_strategy)
    return Frame(
        stream_id=draw(ids),
        frame_id=draw(ids),
        seq=draw(counts),
        timestamp=draw(numbers),
        encoding=encoding,
        data=data,
        shape=shape,
        plan=draw(st.none() | plans),
    )


model_outputs = st.builds(
    ModelOutput,
    frame_id=ids,
    stream_id=ids,
    seq=counts,
    model=model_names,
    output=outputs,
    epoch=counts,
    elapsed_ms=numbers,
    produced_at=numbers,
    error=st.none() | st.text(max_size=20),
    cpu_ms=st.none() | st.floats(0, 1e9),
)

plan_notices = st.builds(
    PlanNotice,
    frame_id=ids,
    stream_id=ids,
    seq=counts,
    plan=plans,
    timestamp=numbers,
    planned_at=numbers,
)


@st.composite
def model_results(draw: st.DrawFn, model: str | None = None) -> ModelResult:
    status = draw(st.sampled_from(["executed", "synthesized", "missing"]))
    sources: tuple[str, ...] = ()
    if status == "synthesized":
        sources = tuple(draw(st.lists(model_names, unique=True, min_size=1, max_size=3)))
    return ModelResult(
        model=model or draw(model_names),
        output=draw(outputs),
        status=status,
        link_version=draw(versions),
        sources=sources,
        cpu_ms=draw(st.none() | st.floats(0, 1e9)) if status == "executed" else None,
    )


@st.composite
def frame_results(draw: st.DrawFn) -> FrameResult:
    models = draw(st.lists(model_names, unique=True, max_size=4))
    return FrameResult(
        frame_id=draw(ids),
        stream_id=draw(ids),
        seq=draw(counts),
        epoch=draw(counts),
        results=tuple(draw(model_results(model=m)) for m in models),
        degraded=draw(st.booleans()),
        emitted_at=draw(numbers),
    )


# Control epochs and link versions stay within 2**53; budgets use the known keys and ranges.
control_ints = st.integers(0, 2**53)
shares = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)
budgets = st.fixed_dictionaries(
    {},
    optional={
        "ms": st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)
        | st.integers(1, 10**9),
        "memory_mb": st.floats(min_value=1.0, max_value=1e9),
        "fraction": shares,
        "target_agreement": shares,
        "target_agreement:pose": shares,
    },
).filter(lambda b: not {"ms", "fraction"} <= set(b))  # one compute limit (budget_problem)

control_messages = st.builds(
    ControlMessage,
    kind=st.sampled_from(["active_set", "budget", "link_version", "agreement", "worker_started"]),
    epoch=control_ints,
    issued_at=numbers,
    active=name_tuples,
    budget=budgets,
    link_version=st.none() | control_ints,
    probe_every=control_ints,
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)

dead_letters = st.builds(
    DeadLetter,
    topic=ids,
    partition=st.none() | counts,
    offset=st.none() | counts,
    key=st.none() | st.binary(max_size=16),
    value=st.binary(max_size=64),
    reason=ids,
    stage=ids,
    at=numbers,
)

any_record = st.one_of(
    frames(),
    plans,
    plan_notices,
    model_outputs,
    model_results(),
    frame_results(),
    control_messages,
    dead_letters,
)


def assert_same_types(original: Any, decoded: Any, where: str = "record") -> None:
    """Walk both values and require identical Python types everywhere."""
    assert type(decoded) is type(original), f"{where}: {type(decoded)} != {type(original)}"
    if isinstance(original, WireRecord):
        for f in dataclasses.fields(original):  # type: ignore[arg-type]
            assert_same_types(
                getattr(original, f.name), getattr(decoded, f.name), f"{where}.{f.name}"
            )
    elif isinstance(original, tuple | list):
        for i, (a, b) in enumerate(zip(original, decoded, strict=True)):
            assert_same_types(a, b, f"{where}[{i}]")
    elif isinstance(original, dict):
        for key in original:
            assert_same_types(original[key], decoded[key], f"{where}[{key!r}]")
    elif isinstance(original, np.ndarray):
        assert decoded.dtype.str == original.dtype.str


# ---------------------------------------------------------------------------- round trips


def test_every_record_type_has_a_strategy() -> None:
    covered = {
        Frame,
        Plan,
        PlanNotice,
        ModelOutput,
        ModelResult,
        FrameResult,
        ControlMessage,
        DeadLetter,
    }
    assert set(RECORD_TYPES.values()) == covered
    assert {cls.TYPE for cls in covered} == set(RECORD_TYPES)


@settings(max_examples=200, deadline=None)
@given(any_record)
def test_dict_round_trip_is_exact(record: WireRecord) -> None:
    d = record.to_dict()
    assert d["v"] == SCHEMA_VERSION
    assert d["type"] == record.TYPE
    back = type(record).from_dict(d)
    assert back == record
    assert_same_types(record, back)


@settings(max_examples=200, deadline=None)
@given(any_record)
def test_codec_round_trip_restores_exact_field_types(record: WireRecord) -> None:
    data = encode_record(record)
    typed = decode_record(data, type(record))
    assert typed == record
    assert_same_types(record, typed)
    untyped = decode_any_record(data)
    assert untyped == record
    assert_same_types(record, untyped)


@given(frame_results())
def test_frame_result_nesting_survives_the_wire(result: FrameResult) -> None:
    back = decode_record(encode_record(result), FrameResult)
    assert isinstance(back.results, tuple)
    assert all(isinstance(r, ModelResult) for r in back.results)
    assert [r.model for r in back.results] == [r.model for r in result.results]


def test_to_dict_is_plain_and_nested_records_become_dicts() -> None:
    plan = Plan(epoch=3, active=("a", "b"), probe=True, link_version=7)
    frame = Frame(
        stream_id="cam",
        frame_id="cam:1",
        seq=1,
        timestamp=2.5,
        encoding="png",
        data=b"x",
        plan=plan,
    )
    d = frame.to_dict()
    assert d["plan"] == {
        "v": 1,
        "type": "plan",
        "epoch": 3,
        "active": ("a", "b"),
        "probe": True,
        "link_version": 7,
    }
    result = FrameResult(
        frame_id="cam:1",
        stream_id="cam",
        seq=1,
        epoch=3,
        results=(ModelResult(model="a", output=np.zeros(2), status="executed"),),
        degraded=False,
        emitted_at=3.0,
    )
    rd = result.to_dict()
    assert isinstance(rd["results"], list) and rd["results"][0]["type"] == "model_result"
    assert isinstance(rd["results"][0]["output"], np.ndarray)


def test_to_dict_copies_dicts_so_the_record_stays_frozen() -> None:
    msg = ControlMessage(kind="budget", epoch=1, issued_at=0.0, budget={"ms": 30})
    msg.to_dict()["budget"]["ms"] = 1.0
    assert msg.budget == {"ms": 30.0}


def test_omitted_optional_fields_take_defaults_and_unknown_keys_are_ignored() -> None:
    d = {"v": 1, "type": "control", "kind": "active_set", "epoch": 2, "issued_at": 1.0}
    d["added_in_a_later_minor_release"] = [1, 2]
    msg = ControlMessage.from_dict(d)
    assert msg == ControlMessage(kind="active_set", epoch=2, issued_at=1.0)
    assert msg.budget == {} and msg.extra == {} and msg.probe_every == 0


# ---------------------------------------------------------------------------- normalization


def test_construction_normalizes_to_the_declared_types() -> None:
    frame = Frame(
        stream_id="s",
        frame_id="s:1",
        seq=np.int64(4),
        timestamp=3,
        encoding="raw",
        data=bytearray(b"\x00" * 12),
        shape=[2, 2, 3],
    )
    assert type(frame.seq) is int and frame.seq == 4
    assert type(frame.timestamp) is float and frame.timestamp == 3.0
    assert type(frame.data) is bytes
    assert frame.shape == (2, 2, 3)
    plan = Plan(epoch=0, active=["a", "b"], probe=np.bool_(True))
    assert plan.active == ("a", "b") and plan.probe is True
    msg = ControlMessage(kind="budget", epoch=0, issued_at=0, budget={"memory_mb": 5000})
    assert msg.budget == {"memory_mb": 5000.0} and type(msg.budget["memory_mb"]) is float
    extra = {"nested": ({"a": (1, 2)},)}
    msg = ControlMessage(kind="budget", epoch=0, issued_at=0, extra=extra)
    assert msg.extra == {"nested": [{"a": [1, 2]}]}, "tuples become lists, as on the wire"


def test_records_are_frozen_and_unhashable() -> None:
    plan = Plan(epoch=1, active=("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epoch = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(plan)
    assert not hasattr(plan, "__dict__"), "records are slotted"


def test_equality_is_bitwise_for_arrays() -> None:
    def out(array: np.ndarray) -> ModelOutput:
        return ModelOutput(
            frame_id="f",
            stream_id="s",
            seq=0,
            model="m",
            output=array,
            epoch=0,
            elapsed_ms=1.0,
            produced_at=float("nan"),
        )

    nan = np.array([np.nan, 1.0])
    assert out(nan) == out(nan.copy())
    assert out(nan) != out(nan.astype("<f4"))
    assert out(nan) != out(nan.astype(">f8")), "byte order is part of the value"
    assert out(np.zeros((2, 0))) != out(np.zeros((0, 2)))
    assert out(np.array(0.0)) != out(np.array(-0.0))
    assert out(nan) != "not a record"


# ---------------------------------------------------------------------------- validation


def _frame_dict(**overrides: Any) -> dict[str, Any]:
    d = Frame(
        stream_id="cam",
        frame_id="cam:7",
        seq=7,
        timestamp=1.0,
        encoding="jpeg",
        data=b"\xff\xd8",
        plan=Plan(epoch=1, active=("a",)),
    ).to_dict()
    d.update(overrides)
    return d


def test_record_error_is_the_decode_error_consumers_catch() -> None:
    assert issubclass(RecordError, DecodeError)
    assert issubclass(DecodeError, ValueError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": "7"}, r"Frame\.seq: expected an int, got str '7'"),
        ({"seq": True}, r"Frame\.seq: expected an int, got bool"),
        ({"seq": -1}, r"Frame\.seq: expected an int >= 0"),
        ({"seq": 2**64}, r"Frame\.seq: expected an int that fits in 64 bits"),
        ({"timestamp": "now"}, r"Frame\.timestamp: expected a float"),
        ({"stream_id": ""}, r"Frame\.stream_id: expected a non-empty str"),
        ({"encoding": "gif"}, r"Frame\.encoding: expected one of 'jpeg', 'png', 'raw', 'ref'"),
        ({"data": "text"}, r"Frame\.data: expected bytes, got str"),
        ({"shape": [2, -1]}, r"Frame\.shape: expected None or a tuple of non-negative ints"),
        ({"plan": "all"}, r"Frame\.plan: Plan: expected a record dict"),
        (
            {"plan": {"v": 1, "type": "plan", "epoch": "x", "active": []}},
            r"Frame\.plan: Plan\.epoch",
        ),
        ({"plan": {"v": 1, "type": "frame"}}, r"Frame\.plan: Plan: expected type tag 'plan'"),
        ({"v": 2}, r"Frame: wire schema version 2 is not supported.*supports version 1"),
        ({"v": "1"}, r"Frame: missing or malformed schema version"),
        ({"type": "plan"}, r"Frame: expected type tag 'frame', got 'plan'"),
        ({"encoding": "raw", "shape": None}, r"Frame\.shape: raw frames need a shape"),
        ({"encoding": "ref", "data": b"\xff"}, r"Frame\.data: a 'ref' frame must hold a UTF-8"),
    ],
)
def test_from_dict_names_record_field_and_expectation(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        Frame.from_dict(_frame_dict(**change))


@pytest.mark.parametrize(
    "missing", ["stream_id", "frame_id", "seq", "timestamp", "encoding", "data"]
)
def test_from_dict_rejects_a_missing_required_field(missing: str) -> None:
    d = _frame_dict()
    del d[missing]
    with pytest.raises(RecordError, match=rf"Frame\.{missing}: required field is missing"):
        Frame.from_dict(d)


def test_from_dict_rejects_missing_version_and_non_dicts() -> None:
    d = _frame_dict()
    del d["v"]
    with pytest.raises(RecordError, match=r"missing or malformed schema version 'v'"):
        Frame.from_dict(d)
    with pytest.raises(RecordError, match=r"Frame: expected a record dict"):
        Frame.from_dict([1, 2])  # type: ignore[arg-type]


def test_nested_result_errors_say_which_entry() -> None:
    good = ModelResult(model="a", output=np.ones(1), status="executed").to_dict()
    bad = dict(good, model="b", status="synthesized")  # synthesized needs sources
    d = {
        "v": 1,
        "type": "frame_result",
        "frame_id": "f",
        "stream_id": "s",
        "seq": 0,
        "epoch": 0,
        "results": [good, bad],
        "degraded": False,
        "emitted_at": 0.0,
    }
    with pytest.raises(RecordError, match=r"FrameResult\.results\[1\]: ModelResult\.sources"):
        FrameResult.from_dict(d)
    with pytest.raises(RecordError, match=r"FrameResult\.results: expected a tuple of ModelResult"):
        FrameResult.from_dict(dict(d, results="ab"))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Plan(epoch=0, active=("b", "a")), r"Plan\.active: names must be sorted"),
        (lambda: Plan(epoch=0, active=("a", "a")), r"Plan\.active: names must be unique"),
        (lambda: Plan(epoch=0, active="ab"), r"Plan\.active: expected a tuple of names"),
        (lambda: Plan(epoch=0, active=(), probe=1), r"Plan\.probe: expected a bool"),
        (
            lambda: ModelResult(model="a", output=np.ones(1), status="executed", sources=("b",)),
            r"ModelResult\.sources: must be empty when status is 'executed'",
        ),
        (
            lambda: ModelResult(model="a", output=np.ones(1), status="executed", cpu_ms=-1.0),
            r"ModelResult\.cpu_ms: expected a finite float >= 0 or None, got",
        ),
        (
            lambda: ModelResult(model="a", output=np.ones(1), status="executed", cpu_ms=np.inf),
            r"ModelResult\.cpu_ms: expected a finite float >= 0 or None, got",
        ),
        (
            lambda: ModelResult(model="a", output=np.ones(1), status="synthesized"),
            r"ModelResult\.sources: a synthesized output must name the models",
        ),
        (
            lambda: ModelResult(model="a", output=[1.0], status="executed"),
            r"ModelResult\.output: expected a numpy ndarray, got list.*np\.asarray",
        ),
        (
            lambda: ModelResult(model="a", output=np.array([None]), status="missing"),
            r"ModelResult\.output: dtype object cannot travel",
        ),
        (
            lambda: ModelResult(model="a", output=np.ones(1), status="skipped"),
            r"ModelResult\.status: expected one of 'executed', 'synthesized', 'missing'",
        ),
        (
            lambda: FrameResult(
                frame_id="f",
                stream_id="s",
                seq=0,
                epoch=0,
                results=(
                    ModelResult(model="a", output=np.ones(1), status="executed"),
                    ModelResult(model="a", output=np.ones(1), status="missing"),
                ),
                degraded=False,
                emitted_at=0.0,
            ),
            r"FrameResult\.results: each model may appear once",
        ),
        (
            lambda: ControlMessage(kind="pause", epoch=0, issued_at=0.0),
            r"ControlMessage\.kind: expected one of 'active_set', 'budget', 'link_version'",
        ),
        (
            lambda: ControlMessage(kind="budget", epoch=0, issued_at=0.0, budget={"ms": "30"}),
            r"ControlMessage\.budget: expected a dict of str to float",
        ),
        (
            lambda: ControlMessage(kind="budget", epoch=0, issued_at=0.0, probe_every=-1),
            r"ControlMessage\.probe_every: expected an int >= 0",
        ),
        (
            lambda: ControlMessage(kind="budget", epoch=0, issued_at=0.0, extra={"s": {1, 2}}),
            r"ControlMessage\.extra: expected JSON-like values .* but extra\['s'\] is set",
        ),
        (
            lambda: ControlMessage(kind="budget", epoch=0, issued_at=0.0, extra={"a": {1: 2}}),
            r"ControlMessage\.extra: keys must be str, got int 1 at extra\['a'\]",
        ),
        (
            lambda: DeadLetter(
                topic="t",
                partition=-1,
                offset=None,
                key=None,
                value=b"",
                reason="r",
                stage="s",
                at=0.0,
            ),
            r"DeadLetter\.partition: expected an int >= 0",
        ),
        (
            lambda: DeadLetter(
                topic="t",
                partition=None,
                offset=None,
                key="k",
                value=b"",
                reason="r",
                stage="s",
                at=0.0,
            ),
            r"DeadLetter\.key: expected bytes or None, got str",
        ),
    ],
)
def test_construction_enforces_the_contract(build: Any, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        build()


def test_extra_nesting_is_bounded() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(RecordError, match=r"ControlMessage\.extra: nested deeper than"):
        ControlMessage(kind="budget", epoch=0, issued_at=0.0, extra={"d": deep})


def test_a_future_schema_version_is_a_decode_error_naming_the_supported_one() -> None:
    d = dict(_frame_dict(), v=SCHEMA_VERSION + 1)
    with pytest.raises(DecodeError, match=r"version 2 is not supported.*supports version 1"):
        decode_record(encode(d), Frame)
    with pytest.raises(DecodeError, match=r"version 2 is not supported"):
        decode_any_record(encode(d))


# ---------------------------------------------------------------------------- topic names


def test_topic_names_defaults_and_order() -> None:
    names = TopicNames()
    assert names.all() == [
        "mlink.frames",
        "mlink.outputs",
        "mlink.results",
        "mlink.control",
        "mlink.dead-letter",
        "mlink.planned",
        "mlink.samples",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        names.frames = "x"  # type: ignore[misc]


def test_topic_names_with_prefix() -> None:
    names = TopicNames.with_prefix("test-42")
    assert names.frames == "test-42.frames"
    assert names.dead_letter == "test-42.dead-letter"
    assert names.all() == [
        f"test-42.{t}"
        for t in ("frames", "outputs", "results", "control", "dead-letter", "planned", "samples")
    ]


@pytest.mark.parametrize("prefix", ["", "run.", "has space", "ü"])
def test_topic_names_reject_illegal_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"TopicNames"):
        TopicNames.with_prefix(prefix)


def test_topic_names_reject_shared_or_illegal_topics() -> None:
    with pytest.raises(ValueError, match=r"each role needs its own topic"):
        TopicNames(outputs="mlink.frames")
    with pytest.raises(ValueError, match=r"TopicNames\.control: 'a/b' is not a legal Kafka"):
        TopicNames(control="a/b")
    with pytest.raises(ValueError, match=r"TopicNames\.frames"):
        TopicNames(frames="x" * 250)
