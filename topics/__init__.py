"""MLink-stream."""

from mlink.topics.codec import (
    ARRAY_EXT_CODE,
    decode,
    decode_any_record,
    decode_record,
    encode,
    encode_record,
)
from mlink.topics.names import TopicNames
from mlink.topics.records import (
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

__all__ = [
    "ARRAY_EXT_CODE",
    "SCHEMA_VERSION",
    "ControlMessage",
    "DeadLetter",
    "DecodeError",
    "Frame",
    "FrameResult",
    "ModelOutput",
    "ModelResult",
    "Plan",
    "PlanNotice",
    "RecordError",
    "TopicNames",
    "WireRecord",
    "decode",
    "decode_any_record",
    "decode_record",
    "encode",
    "encode_record",
]
