"""One Kafka record of a user's source topic to one :class:`~mlink.topics.records.Frame`.

Pure: the planner hands over what a consumer sees of a record (topic, partition, offset, key,
value, headers, timestamp) and gets a Frame or a :class:`~mlink.topics.records.DecodeError` to
dead-letter, so every format is tested without a broker. A pipeline reads its source topic in
one of two formats (``source: {topic: cams, format: image}`` in the config):

- ``"frame"`` (default): each value is our msgpack :class:`Frame` envelope
  (docs/wire-format.md), as :class:`~mlink.deploy.source.FrameProducer` or a producer in any
  language writes it. The record's key and headers are not read: the envelope says it all.
- ``"image"``: each value is one encoded image, JPEG or PNG, as camera gateways and
  GStreamer/FFmpeg sinks write them. The format is sniffed from the magic bytes, never from a
  header, so a mislabelled record cannot reach a decoder as something it is not.

Where an ``"image"`` frame's fields come from (first that applies):

==============  =========================================  ===================================
field           from                                       otherwise
==============  =========================================  ===================================
``stream_id``   header ``mlink.stream_id``; the record key  ``f"{topic}-{partition}"``
``seq``         header ``mlink.seq`` (decimal ASCII)        the record's offset
``frame_id``    header ``mlink.frame_id``                   ``f"{stream_id}:{seq}"`` when the
                                                           ``mlink.seq`` header is given, else
                                                           ``f"{topic}:{partition}:{offset}"``
``timestamp``   the Kafka timestamp (ms) in seconds         ingestion time, if the record has
                                                           none (``None`` or ``-1``)
==============  =========================================  ===================================

Derived ids depend only on where the record sits in the topic, so replaying the topic yields
the same frame ids and a consumer that dedupes results by frame id keeps working.
``topic:partition:offset`` is unique in a topic even when one key's records spread over several
partitions (a custom partitioner, or more partitions added later); ``stream:seq`` is unique
only if the producer numbers each stream's frames once, which is what sending ``mlink.seq``
promises. A key that is not UTF-8 text (a binary camera id) becomes ``"0x"`` + its hex digits.

Only the magic bytes are checked here: a value that starts like a JPEG but is corrupt passes
and is dead-lettered where it is decoded (the frame operator), and its frame still gets a
(degraded) result. Size and pixel limits are the decoder's job, not this module's.

``seq`` drives the probe schedule (every ``probe_every``-th seq runs every model): with offsets
as seq and several cameras interleaved in one partition, probes fall on whichever camera holds
those offsets, so producers that can should send ``mlink.seq`` numbered per camera.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias, get_args

from mlink.topics.codec import decode_record
from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.records import DecodeError, Frame, RecordError

__all__ = [
    "HEADER_FRAME_ID",
    "HEADER_SEQ",
    "HEADER_STREAM_ID",
    "MAX_ID_LENGTH",
    "SOURCE_FORMATS",
    "Headers",
    "IngestError",
    "NotAnImageError",
    "SourceFormat",
    "frame_from_image_record",
    "frame_from_record",
    "sniff_image",
]

SourceFormat = Literal["frame", "image"]
SOURCE_FORMATS: Final[tuple[str, ...]] = get_args(SourceFormat)

HEADER_STREAM_ID: Final = "mlink.stream_id"
HEADER_FRAME_ID: Final = "mlink.frame_id"
HEADER_SEQ: Final = "mlink.seq"

MAX_ID_LENGTH: Final = 256
"""Longest stream or frame id taken from a key or header, in characters: ids key every output
and result, so an unbounded one would be copied into every record derived from the frame."""

Headers: TypeAlias = Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None
"""Kafka record headers as clients hand them over: kafka-python and aiokafka give a list of
``(str, bytes)`` pairs (a key may repeat; the last one wins, as in Kafka's ``lastHeader``)."""

_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DECIMAL: Final = re.compile(r"[0-9]{1,19}")


class IngestError(DecodeError):
    """A source-topic record cannot become a Frame; the planner dead-letters it."""


class NotAnImageError(IngestError):
    """An ``image``-format record's value is not a JPEG or PNG image."""


def sniff_image(value: bytes) -> Literal["jpeg", "png"] | None:
    """The image format the magic bytes announce, or None when they announce neither."""
    if value.startswith(_JPEG_MAGIC):
        return "jpeg"
    if value.startswith(_PNG_MAGIC):
        return "png"
    return None


def _where(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"


def _last_headers(headers: Headers) -> dict[str, bytes]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): v for k, v in items}


def _text(raw: bytes | None, what: str, where: str) -> str | None:
    """A header's or key's value as an id: UTF-8, at most MAX_ID_LENGTH, no control chars."""
    if raw is None or raw == b"":
        return None
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise IngestError(f"{where}: {what} must be bytes, got {type(raw).__name__}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{where}: {what} is not UTF-8 text ({exc})") from exc
    return _checked(text, what, where)


def _checked(text: str, what: str, where: str) -> str:
    if len(text) > MAX_ID_LENGTH:
        raise IngestError(
            f"{where}: {what} is {len(text)} characters long, over the {MAX_ID_LENGTH} allowed"
        )
    if _CONTROL.search(text):
        raise IngestError(f"{where}: {what} {text!r} contains control characters")
    return text


def _stream_id(
    topic: str, partition: int, key: bytes | None, head: dict[str, bytes], where: str
) -> str:
    from_header = _text(head.get(HEADER_STREAM_ID), f"header {HEADER_STREAM_ID}", where)
    if from_header is not None:
        return from_header
    if key:
        try:
            text = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            text = "0x" + bytes(key).hex()
        return _checked(text, "record key", where)
    return f"{topic}-{partition}"


def _seq(offset: int, head: dict[str, bytes], where: str) -> tuple[int, bool]:
    """The sequence number and whether the producer gave it."""
    text = _text(head.get(HEADER_SEQ), f"header {HEADER_SEQ}", where)
    if text is None:
        return offset, False
    if not _DECIMAL.fullmatch(text) or int(text) >= 2**63:
        raise IngestError(
            f"{where}: header {HEADER_SEQ} must be a non-negative decimal integer below 2**63 "
            f"in ASCII, like b'42', got {text!r}"
        )
    return int(text), True


def frame_from_image_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    timestamp_ms: int | None,
) -> Frame:
    """A Frame from one record whose value is an encoded JPEG or PNG image (see the module doc
    for where each field comes from).

    Raises :class:`NotAnImageError` when the value is not a JPEG or PNG image and
    :class:`IngestError` when a key or header cannot be an id; both are
    :class:`~mlink.topics.records.DecodeError`, so the planner dead-letters them.
    """
    where = _where(topic, partition, offset)
    if not isinstance(value, bytes | bytearray | memoryview) or not value:
        what = "no value (a tombstone)" if value is None else f"an empty {type(value).__name__}"
        raise NotAnImageError(f"{where}: expected an encoded JPEG or PNG image, got {what}")
    value = bytes(value)
    encoding = sniff_image(value)
    if encoding is None:
        raise NotAnImageError(
            f"{where}: the value ({len(value)} bytes starting {value[:8]!r}) is neither JPEG "
            "nor PNG; a topic with format 'image' must hold one encoded image per record "
            "(send Frame records with format 'frame' instead)"
        )
    head = _last_headers(headers)
    stream_id = _stream_id(topic, partition, key, head, where)
    seq, seq_given = _seq(offset, head, where)
    frame_id = _text(head.get(HEADER_FRAME_ID), f"header {HEADER_FRAME_ID}", where)
    if frame_id is None:
        frame_id = f"{stream_id}:{seq}" if seq_given else f"{topic}:{partition}:{offset}"
        frame_id = _checked(frame_id, "derived frame id", where)
    has_time = timestamp_ms is not None and timestamp_ms >= 0
    try:
        return Frame(
            stream_id=stream_id,
            frame_id=frame_id,
            seq=seq,
            timestamp=timestamp_ms / 1000.0 if has_time else time.time(),  # type: ignore[operator]
            encoding=encoding,
            data=value,
        )
    except RecordError as exc:
        raise IngestError(f"{where}: {exc}") from exc


def frame_from_record(
    format: SourceFormat,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    timestamp_ms: int | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> Frame:
    """The Frame one source-topic record holds, whatever the topic's format, under the
    pipeline's ``limits``: the planner's one call per record, and `mlink check`'s on a topic.

    Raises :class:`~mlink.topics.records.DecodeError` (dead-letter the record) when the record
    is not a valid frame of ``format`` or is over ``limits.max_record_bytes``, and
    ``ValueError`` for an unknown format.
    """
    if format == "frame":
        return decode_record(value, Frame, limits=limits)  # type: ignore[arg-type]
    if format == "image":
        if value is not None and len(value) > limits.max_record_bytes:
            raise DecodeError(
                f"record of {len(value):,} bytes exceeds the pipeline's limit of "
                f"{limits.max_record_bytes:,} bytes (limits.max_record_bytes)"
            )
        return frame_from_image_record(topic, partition, offset, key, value, headers, timestamp_ms)
    raise ValueError(
        f"source format {format!r} is unknown; use one of {', '.join(map(repr, SOURCE_FORMATS))}"
    )
