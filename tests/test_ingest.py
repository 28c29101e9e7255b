"""Source-topic records to Frames (mlink.topics.ingest), without a broker."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from mlink.topics.codec import encode, encode_record
from mlink.topics.frames import decode_frame, encode_frame
from mlink.topics.ingest import (
    HEADER_FRAME_ID,
    HEADER_SEQ,
    HEADER_STREAM_ID,
    MAX_ID_LENGTH,
    SOURCE_FORMATS,
    IngestError,
    NotAnImageError,
    frame_from_image_record,
    frame_from_record,
    sniff_image,
)
from mlink.topics.records import DecodeError, Frame

# Smooth colour ramps (JPEG keeps them close), and noise for the lossless PNG.
_Y, _X = np.mgrid[0:24, 0:32]
IMAGE = np.stack([_X * 8, _Y * 10, (_X + _Y) * 4], axis=-1).astype(np.uint8)
GRAY = np.random.default_rng(7).integers(0, 256, size=(16, 16), dtype=np.uint8)


def encoded(ext: str, image: np.ndarray = IMAGE) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


JPEG, PNG = encoded(".jpg"), encoded(".png")


def image_record(value: bytes | None = JPEG, **overrides):
    record = {
        "topic": "cams",
        "partition": 2,
        "offset": 1041,
        "key": b"gate-3",
        "value": value,
        "headers": [],
        "timestamp_ms": 1_700_000_000_123,
    }
    return frame_from_image_record(**{**record, **overrides})


def test_formats_are_frame_and_image() -> None:
    assert SOURCE_FORMATS == ("frame", "image")


def test_magic_bytes_tell_jpeg_from_png_from_anything_else() -> None:
    assert sniff_image(JPEG) == "jpeg"
    assert sniff_image(PNG) == "png"
    assert sniff_image(encoded(".bmp")) is None
    assert sniff_image(b"") is None
    assert sniff_image(b"\xff\xd8") is None  # a truncated marker is not a JPEG


def test_a_keyed_jpeg_becomes_a_frame_whose_ids_come_from_its_place_in_the_topic() -> None:
    frame = image_record()
    assert frame.stream_id == "gate-3"
    assert frame.seq == 1041
    assert frame.frame_id == "cams:2:1041"
    assert frame.timestamp == pytest.approx(1_700_000_000.123)
    assert frame.encoding == "jpeg" and frame.data == JPEG and frame.shape is None
    assert frame.plan is None
    decoded = decode_frame(frame)
    assert decoded.shape == IMAGE.shape
    assert np.abs(decoded.astype(int) - IMAGE).mean() < 4  # lossy, but the same picture


def test_a_png_decodes_to_exactly_its_pixels() -> None:
    frame = image_record(encoded(".png", GRAY))
    assert frame.encoding == "png"
    assert np.array_equal(decode_frame(frame), GRAY)


def test_a_replay_yields_the_same_frame_ids() -> None:
    first = [image_record(offset=o) for o in range(5)]
    again = [image_record(offset=o) for o in range(5)]
    assert [f.frame_id for f in first] == [f.frame_id for f in again]
    assert len({f.frame_id for f in first}) == 5


def test_the_same_key_in_two_partitions_keeps_frame_ids_apart() -> None:
    a, b = image_record(partition=0, offset=3), image_record(partition=1, offset=3)
    assert a.stream_id == b.stream_id == "gate-3"
    assert a.frame_id != b.frame_id


def test_without_a_key_the_stream_is_the_partition() -> None:
    for key in (None, b""):
        frame = image_record(key=key)
        assert frame.stream_id == "cams-2"
        assert frame.frame_id == "cams:2:1041"


def test_a_binary_key_becomes_hex() -> None:
    assert image_record(key=b"\xff\x00\x10").stream_id == "0xff0010"


def test_headers_carry_stream_frame_id_and_seq() -> None:
    headers = [
        (HEADER_STREAM_ID, b"lobby"),
        (HEADER_FRAME_ID, b"lobby/2024-05-01T10:00:00.040Z"),
        (HEADER_SEQ, b"12"),
        ("traceparent", b"00-abc-def-01"),  # foreign headers are ignored
    ]
    frame = image_record(headers=headers)
    assert (frame.stream_id, frame.frame_id, frame.seq) == (
        "lobby",
        "lobby/2024-05-01T10:00:00.040Z",
        12,
    )
    # a dict works as well as a list of pairs
    assert image_record(headers=dict(headers)).frame_id == frame.frame_id


def test_a_seq_header_without_a_frame_id_gives_the_conventional_id() -> None:
    frame = image_record(headers=[(HEADER_SEQ, b"7")])
    assert (frame.seq, frame.frame_id) == (7, "gate-3:7")


def test_the_last_of_repeated_headers_wins() -> None:
    frame = image_record(headers=[(HEADER_SEQ, b"1"), (HEADER_SEQ, b"2")])
    assert frame.seq == 2


def test_a_record_without_a_timestamp_gets_the_ingestion_time() -> None:
    before = time.time()
    for missing in (None, -1):
        assert before <= image_record(timestamp_ms=missing).timestamp <= time.time()


@pytest.mark.parametrize(
    "value",
    [
        b"",
        None,
        b"GIF89a\x01\x00",
        encoded(".bmp"),
        encode_record(encode_frame(IMAGE, "s", 0)),  # a Frame envelope on an image topic
        b"\xff\xd8",
    ],
    ids=["empty", "tombstone", "gif", "bmp", "frame-envelope", "truncated-jpeg-magic"],
)
def test_anything_but_jpeg_or_png_is_rejected_as_a_decode_error(value: bytes | None) -> None:
    with pytest.raises(NotAnImageError, match=r"cams\[2\]@1041") as info:
        image_record(value)
    assert isinstance(info.value, DecodeError)  # what the planner dead-letters


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"headers": [(HEADER_SEQ, b"-1")]}, "non-negative decimal"),
        ({"headers": [(HEADER_SEQ, b"0x10")]}, "non-negative decimal"),
        ({"headers": [(HEADER_SEQ, b"9" * 20)]}, "non-negative decimal"),
        ({"headers": [(HEADER_FRAME_ID, b"a\nb")]}, "control characters"),
        ({"headers": [(HEADER_STREAM_ID, b"\xff\xfe")]}, "not UTF-8"),
        ({"headers": [(HEADER_STREAM_ID, b"x" * (MAX_ID_LENGTH + 1))]}, "over the 256"),
        ({"key": b"cam\x00one"}, "control characters"),
        ({"key": b"k" * (MAX_ID_LENGTH + 1)}, "over the 256"),
    ],
)
def test_ids_from_keys_and_headers_are_checked(overrides: dict, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        image_record(**overrides)


def test_one_function_per_record_for_both_formats() -> None:
    envelope = encode_frame(IMAGE, "cam-9", 4, timestamp=12.5, encoding="png")
    place = {"topic": "t", "partition": 0, "offset": 99, "key": b"ignored", "headers": None}
    value = encode_record(envelope)
    from_envelope = frame_from_record("frame", value=value, timestamp_ms=1, **place)
    assert from_envelope == envelope  # the envelope says it all; key and offset are not read
    from_image = frame_from_record("image", value=PNG, timestamp_ms=5000, **place)
    assert (from_image.stream_id, from_image.frame_id, from_image.timestamp) == (
        "ignored",
        "t:0:99",
        5.0,
    )
    with pytest.raises(DecodeError):
        frame_from_record("frame", value=PNG, timestamp_ms=1, **place)
    with pytest.raises(DecodeError, match="expected a Frame record"):
        frame_from_record("frame", value=encode({"v": 1, "type": "plan"}), timestamp_ms=1, **place)
    with pytest.raises(ValueError, match="'frame', 'image'"):
        frame_from_record("raw", value=PNG, timestamp_ms=1, **place)  # type: ignore[arg-type]


def test_frames_from_images_travel_as_envelopes_unchanged() -> None:
    """The planner forwards an ingested frame as our envelope; it must round-trip."""
    from mlink.topics.codec import decode_record

    frame = image_record(headers=[(HEADER_SEQ, b"3")])
    assert decode_record(encode_record(frame), Frame) == frame
