"""PNG and JPEG headers read without decoding: sizes match what OpenCV decodes, and any bytes
either parse or raise ImageHeaderError."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlink.topics.image_header import ImageHeader, ImageHeaderError, read_header, sniff_format

RNG = np.random.default_rng(3)


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def jpeg_bytes(image: np.ndarray, progressive: bool = False) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def forged_png(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with the size in its first SOF0/SOF2 replaced."""
    pos = min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if i > 0)
    out = bytearray(data)
    out[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(out)


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((7, 5), 1), ((7, 5, 1), 1), ((9, 4, 3), 3), ((3, 8, 4), 4), ((1, 1), 1)],
)
def test_png_header_matches_the_decoded_image(shape: tuple[int, ...], channels: int) -> None:
    image = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    data = png_bytes(image)
    header = read_header(data, "png")
    assert header == ImageHeader("png", shape[1], shape[0], channels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (header.height, header.width)
    assert decoded.nbytes <= header.decoded_bytes


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize(("shape", "channels"), [((17, 23), 1), ((16, 40, 3), 3)])
def test_jpeg_header_matches_the_decoded_image(
    shape: tuple[int, ...], channels: int, progressive: bool
) -> None:
    image = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    data = jpeg_bytes(image, progressive)
    header = read_header(data, "jpeg")
    assert header == ImageHeader("jpeg", shape[1], shape[0], channels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (header.height, header.width)


@pytest.mark.parametrize(("mode", "channels"), [("P", 4), ("LA", 4), ("RGBA", 4), ("1", 1)])
def test_png_colour_types_that_opencv_does_not_write(mode: str, channels: int) -> None:
    pil = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    pil.new(mode, (6, 4)).save(buf, format="PNG")
    data = buf.getvalue()
    header = read_header(data, "png")
    assert (header.width, header.height, header.channels) == (6, 4, channels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (4, 6) and decoded.nbytes <= header.decoded_bytes


def test_huge_sizes_are_read_from_the_header_alone() -> None:
    assert read_header(forged_png(20000, 20000)).pixels == 400_000_000
    data = patch_jpeg_size(jpeg_bytes(np.zeros((8, 8), np.uint8)), 60000, 50000)
    assert read_header(data, "jpeg") == ImageHeader("jpeg", 60000, 50000, 1)


def test_declared_format_must_match_the_bytes() -> None:
    png = png_bytes(np.zeros((2, 2), np.uint8))
    jpeg = jpeg_bytes(np.zeros((8, 8), np.uint8))
    assert (sniff_format(png), sniff_format(jpeg), sniff_format(b"GIF89a")) == ("png", "jpeg", None)
    with pytest.raises(ImageHeaderError, match="declared jpeg but the bytes are a png image"):
        read_header(png, "jpeg")
    with pytest.raises(ImageHeaderError, match="declared png but the bytes are a jpeg image"):
        read_header(jpeg, "png")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "neither a PNG nor a JPEG"),
        (b"BM" + bytes(60), "neither a PNG nor a JPEG"),
        (forged_png(4, 4)[:20], "cannot hold a PNG header"),
        (forged_png(4, 4)[:29] + b"\x00\x00\x00\x00", "fails its CRC check"),
        (forged_png(0, 4), "PNG size 0x4 is invalid"),
        (forged_png(2**31, 4), "is invalid"),
        (forged_png(4, 4, depth=16, colour=2), "16-bit PNG"),
        (forged_png(4, 4, depth=3, colour=0), "bit depth 3 is invalid"),
        (forged_png(4, 4, depth=8, colour=5), "colour type 5"),
        (b"\x89PNG\r\n\x1a\n" + png_chunk(b"gAMA", bytes(13)) + bytes(8), "13-byte IHDR"),
        (b"\xff\xd8\xff", "ends inside a marker"),
        (b"\xff\xd8\xff\xe0\x00", "ends inside a segment length"),
        (b"\xff\xd8\xff\xe0\x00\x01", "invalid length 1"),
        (b"\xff\xd8\xff\xe0\x00\x04\x00\x00", "ends before its frame header"),
        (b"\xff\xd8\xff\xda\x00\x04", "marker 0xDA before any frame header"),
        (b"\xff\xd8\xff\xd9", "marker 0xD9 before any frame header"),
        (b"\xff\xd8\xff\xe0\x00\x02\x00", "expected a JPEG marker at byte 6"),
        (b"\xff\xd8\xff\xc0\x00\x08\x08\x00\x10", "frame header is truncated"),
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x10\x01", "deferred to a DNL marker"),
        (b"\xff\xd8\xff\xc0\x00\x0b\x0c\x00\x10\x00\x10\x01", "12-bit JPEG"),
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x02", "2 components"),
    ],
)
def test_malformed_headers_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ImageHeaderError, match=message):
        read_header(data)


def test_jpeg_fill_bytes_and_standalone_markers_are_skipped() -> None:
    sof = b"\xff\xc1\x00\x0b\x08\x00\x03\x00\x05\x01\x01\x11\x00"
    data = b"\xff\xd8\xff\xff\xff\xd0\xff\x01" + sof
    assert read_header(data, "jpeg") == ImageHeader("jpeg", 5, 3, 1)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    image = np.full((height, width, 3), draw(st.integers(0, 255)), np.uint8)
    data = bytearray(png_bytes(image) if draw(st.booleans()) else jpeg_bytes(image))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(mutated_images() | st.binary(max_size=64).map(lambda b: b"\xff\xd8\xff" + b))
def test_any_bytes_parse_or_raise_image_header_error(data: bytes) -> None:
    try:
        header = read_header(data)
    except ImageHeaderError as exc:
        assert str(exc)
        return
    assert header.width > 0 and header.height > 0 and header.channels in (1, 3, 4)
