"""Images to Frame records and back: exact PNG round trips, lossy JPEG, raw, ref, and errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mlink.eval.workloads import digits
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.frames import (
    DEFAULT_MAX_BYTES,
    FrameDecodeError,
    FrameTooLargeError,
    decode_frame,
    encode_frame,
    make_frame_id,
    ref_frame,
)
from mlink.topics.limits import Limits
from mlink.topics.records import DecodeError, Frame

RNG = np.random.default_rng(0)


def _color(h: int = 48, w: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _through_wire(frame: Frame) -> Frame:
    return decode_record(encode_record(frame), Frame)


def test_png_round_trips_an_8x8_digit_exactly() -> None:
    image = next(digits.frames())
    assert image.shape == (8, 8) and image.dtype == np.uint8
    frame = encode_frame(image, "digits", 3, timestamp=12.5)
    assert (frame.frame_id, frame.seq, frame.timestamp) == ("digits:3", 3, 12.5)
    assert (frame.encoding, frame.shape) == ("png", (8, 8))
    out = decode_frame(_through_wire(frame))
    assert out.shape == (8, 8) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("shape", [(48, 64, 3), (37, 21, 1), (5, 7, 4), (1, 1)])
def test_png_round_trips_exactly(shape: tuple[int, ...]) -> None:
    image = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    out = decode_frame(_through_wire(encode_frame(image, "cam", 0)))
    assert out.shape == shape
    np.testing.assert_array_equal(out, image)
    out[0, 0] = 1  # decoded frames are writable (torch.from_numpy warns otherwise)


def test_png_of_a_non_contiguous_view_round_trips() -> None:
    image = _color()[:, ::2]
    np.testing.assert_array_equal(decode_frame(encode_frame(image, "s", 0)), image)


def test_raw_round_trips_exactly_and_keeps_shape() -> None:
    image = _color(9, 11)
    frame = encode_frame(image, "s", 1, encoding="raw")
    assert frame.data == image.tobytes() and frame.shape == (9, 11, 3)
    out = decode_frame(_through_wire(frame))
    np.testing.assert_array_equal(out, image)
    out[0, 0, 0] = 7


def test_jpeg_is_close_and_smaller() -> None:
    # A smooth image, as camera frames are; JPEG is poor at pure noise.
    y, x = np.mgrid[0:120, 0:160]
    image = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    jpeg = encode_frame(image, "s", 0, encoding="jpeg", jpeg_quality=90)
    png = encode_frame(image, "s", 0)
    out = decode_frame(jpeg)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 3
    assert len(jpeg.data) < len(png.data)


def test_jpeg_grayscale_stays_2d() -> None:
    image = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    assert decode_frame(encode_frame(image, "s", 0, encoding="jpeg")).shape == (32, 64)


def test_timestamp_defaults_to_now() -> None:
    import time

    before = time.time()
    frame = encode_frame(np.zeros((2, 2), np.uint8), "s", 0)
    assert before <= frame.timestamp <= time.time()


def test_ref_frame_reads_the_file_under_the_ref_root(tmp_path: Path) -> None:
    image = _color(16, 16)
    path = tmp_path / "f.png"
    assert cv2.imwrite(str(path), image)
    limits = Limits(ref_root=str(tmp_path))
    frame = _through_wire(ref_frame(path, "s", 4, shape=image.shape))
    assert frame.encoding == "ref" and frame.frame_id == "s:4"
    np.testing.assert_array_equal(decode_frame(frame, limits), image)
    uri = ref_frame(path.as_uri(), "s", 5)
    np.testing.assert_array_equal(decode_frame(uri, limits), image)
    relative = _frame("ref", b"f.png")  # relative to the root
    np.testing.assert_array_equal(decode_frame(relative, limits), image)


def test_make_frame_id() -> None:
    assert make_frame_id("cam-1", 42) == "cam-1:42"


# -- errors -----------------------------------------------------------------------------------


def test_oversized_frame_names_size_and_remedies() -> None:
    image = RNG.integers(0, 256, size=(900, 900, 3), dtype=np.uint8)  # noise: PNG ~2.4 MB
    with pytest.raises(FrameTooLargeError) as info:
        encode_frame(image, "cam", 7)
    message = str(info.value)
    for part in ("cam:7", "900x900x3", f"{DEFAULT_MAX_BYTES:,}", "jpeg", "resize", "ref"):
        assert part in message
    assert len(encode_frame(image, "cam", 7, max_bytes=None).data) > DEFAULT_MAX_BYTES


def test_small_max_bytes_is_honoured() -> None:
    with pytest.raises(FrameTooLargeError, match="over the 10-byte limit"):
        encode_frame(_color(), "s", 0, encoding="raw", max_bytes=10)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((4, 4), np.float32), TypeError, "uint8"),
        (np.zeros((4, 4, 2), np.uint8), ValueError, r"shape \(4, 4, 2\)"),
        (np.zeros((0, 4), np.uint8), ValueError, "non-empty"),
        (np.zeros(16, np.uint8), ValueError, r"\(H, W\)"),
        ([[0, 1]], TypeError, "numpy uint8 image"),
    ],
)
def test_bad_images_are_rejected(image: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        encode_frame(image, "s", 0)  # type: ignore[arg-type]


def test_jpeg_rejects_alpha_and_bad_quality() -> None:
    with pytest.raises(ValueError, match="for jpeg"):
        encode_frame(np.zeros((4, 4, 4), np.uint8), "s", 0, encoding="jpeg")
    with pytest.raises(ValueError, match="jpeg_quality"):
        encode_frame(np.zeros((4, 4), np.uint8), "s", 0, encoding="jpeg", jpeg_quality=0)


def test_unknown_and_ref_encodings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown"):
        encode_frame(np.zeros((4, 4), np.uint8), "s", 0, encoding="webp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_frame"):
        encode_frame(np.zeros((4, 4), np.uint8), "s", 0, encoding="ref")  # type: ignore[arg-type]


def _frame(encoding: str, data: bytes, shape: tuple[int, ...] | None = None) -> Frame:
    return Frame(
        stream_id="s",
        frame_id="s:9",
        seq=9,
        timestamp=0.0,
        encoding=encoding,  # type: ignore[arg-type]
        data=data,
        shape=shape,
    )


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_frame("png", b"not an image at all"), "neither a PNG nor a JPEG"),
        (_frame("jpeg", b""), "data is empty"),
        (_frame("raw", b"\x00" * 5, (2, 2)), "cannot fill shape"),
        (_frame("ref", b"/nonexistent/frame.png"), "outside the ref root"),
        (_frame("ref", b"nonexistent.png"), "cannot read referenced file"),
        (_frame("ref", b"http://example.com/f.png"), "file:// URIs"),
    ],
)
def test_decode_failures_name_frame_and_reason(frame: Frame, reason: str, tmp_path: Path) -> None:
    with pytest.raises(FrameDecodeError, match=reason) as info:
        decode_frame(frame, Limits(ref_root=str(tmp_path)))
    assert "'s:9'" in str(info.value)
    assert isinstance(info.value, DecodeError)  # one except clause dead-letters it


def test_decode_rejects_shape_mismatch() -> None:
    good = encode_frame(np.zeros((4, 6), np.uint8), "s", 9)
    bad = _frame("png", good.data, (6, 4))
    with pytest.raises(FrameDecodeError, match=r"shape \(4, 6\).*\(6, 4\)"):
        decode_frame(bad)


def test_decode_rejects_unreadable_ref_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"garbage")
    with pytest.raises(FrameDecodeError, match="neither a PNG nor a JPEG"):
        decode_frame(ref_frame(path, "s", 9), Limits(ref_root=str(tmp_path)))


def test_decode_requires_a_frame() -> None:
    with pytest.raises(TypeError, match="Frame record"):
        decode_frame(b"\x89PNG")  # type: ignore[arg-type]
