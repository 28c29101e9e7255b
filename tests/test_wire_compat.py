"""The compatibility rule of the wire format (docs/wire-format.md, "Compatibility").

Within a schema version a reader ignores fields it does not know and fills omitted optional
fields with their defaults, so writers and readers of neighbouring releases can run side by
side during a rolling upgrade. What a reader cannot safely ignore is rejected as a DecodeError
(and dead-lettered): another schema version, an unknown enum value, an unknown msgpack
extension type. These tests read records written by a "newer writer" and an "older writer".
"""

from __future__ import annotations

import time

import jsonschema
import msgpack
import numpy as np
import pytest

from mlink.topics.codec import decode_any_record, decode_record, encode, encode_record
from mlink.topics.records import DecodeError, Frame, FrameResult, ModelResult, Plan
from mlink.topics.schema import json_view, wire_schema


def newer_frame() -> dict:
    """A Frame as a newer release might write it: a new top-level field, a new field in the
    nested plan, and a new array-valued field."""
    return {
        "v": 1,
        "type": "frame",
        "stream_id": "cam-1",
        "frame_id": "cam-1:7",
        "seq": 7,
        "timestamp": 1_700_000_000.25,
        "encoding": "jpeg",
        "data": b"\xff\xd8\xff\xe0 jpeg bytes",
        "camera": {"vendor": "acme", "exposure_ms": 8.3},
        "roi": np.array([0.1, 0.2, 0.5, 0.9], np.float32),
        "plan": {
            "v": 1,
            "type": "plan",
            "epoch": 3,
            "active": ["a", "b"],
            "probe": False,
            "link_version": 2,
            "priority": "high",
        },
    }


def newer_result() -> dict:
    model_result = ModelResult(
        model="counter",
        output=np.array([2.0], np.float32),
        status="synthesized",
        link_version=5,
        sources=("detector",),
        agreement=0.93,
    ).to_dict()
    model_result["agreement_interval"] = [0.9, 0.96]  # a newer optional field
    return {
        **FrameResult(
            frame_id="cam-1:7",
            stream_id="cam-1",
            seq=7,
            epoch=3,
            results=(ModelResult.from_dict(model_result),),
            degraded=False,
            emitted_at=time.time(),
        ).to_dict(),
        "results": [model_result],
        "worker": "host-3/pid-42",
    }


def test_a_newer_writers_extra_fields_are_ignored_within_the_schema_version() -> None:
    frame = decode_record(encode(newer_frame()), Frame)
    assert frame == Frame(
        stream_id="cam-1",
        frame_id="cam-1:7",
        seq=7,
        timestamp=1_700_000_000.25,
        encoding="jpeg",
        data=b"\xff\xd8\xff\xe0 jpeg bytes",
        plan=Plan(epoch=3, active=("a", "b"), probe=False, link_version=2),
    )
    result = decode_any_record(encode(newer_result()))
    assert isinstance(result, FrameResult)
    assert result.results[0].agreement == pytest.approx(0.93)
    assert result.results[0].sources == ("detector",)


def test_the_schema_accepts_a_newer_writers_record() -> None:
    validator = jsonschema.Draft202012Validator(wire_schema())
    for record in (newer_frame(), newer_result()):
        raw = msgpack.unpackb(encode(record), raw=False, ext_hook=msgpack.ExtType)
        validator.validate(json_view(raw))


def test_an_older_writer_may_omit_optional_fields() -> None:
    """Releases before ModelResult.agreement/error and FrameResult.probe existed."""
    result = newer_result()
    del result["probe"], result["timestamp"], result["worker"]
    for entry in result["results"]:
        for name in ("agreement", "error", "elapsed_ms", "agreement_interval"):
            entry.pop(name, None)
    decoded = decode_record(encode(result), FrameResult)
    assert decoded.probe is False and decoded.timestamp is None
    assert decoded.results[0].agreement is None and decoded.results[0].error is None


def test_unknown_fields_do_not_survive_a_hop_through_an_operator() -> None:
    """The price of ignoring them: an operator forwards the record it decoded, not the bytes it
    read, so a field this release does not know is gone downstream (the planner forwards frames
    to the planned topic this way)."""
    frame = decode_record(encode(newer_frame()), Frame)
    forwarded = msgpack.unpackb(encode_record(frame), raw=False, ext_hook=msgpack.ExtType)
    assert "camera" not in forwarded and "roi" not in forwarded
    assert "priority" not in forwarded["plan"]


def test_another_schema_version_is_rejected_naming_the_fix() -> None:
    for version in (0, 2):
        with pytest.raises(DecodeError, match=r"version \d is not supported.*upgrade"):
            decode_record(encode({**newer_frame(), "v": version}), Frame)
    with pytest.raises(DecodeError, match="upgrade"):
        decode_record(encode({**newer_frame(), "plan": {**newer_frame()["plan"], "v": 2}}), Frame)


def test_what_cannot_be_ignored_safely_is_rejected() -> None:
    """A new enum value changes the meaning of a field this reader knows; a new msgpack
    extension type cannot even be skipped by msgpack; a new record type has no class."""
    result = newer_result()
    result["results"][0]["status"] = "cached"
    with pytest.raises(DecodeError, match=r"results\[0\].*status"):
        decode_record(encode(result), FrameResult)
    unknown_ext = msgpack.packb(
        {**newer_frame(), "roi": msgpack.ExtType(43, b"\x00"), "data": b"x", "plan": None},
        use_bin_type=True,
        default=lambda o: o.tolist(),
    )
    with pytest.raises(DecodeError, match="unknown msgpack extension type 43"):
        decode_record(unknown_ext, Frame)
    with pytest.raises(DecodeError, match="unknown record type 'frame_batch'"):
        decode_any_record(encode({"v": 1, "type": "frame_batch", "frames": []}))
