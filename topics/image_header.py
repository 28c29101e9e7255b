"""The size of a PNG or JPEG image, read from its header without decoding a pixel.

A decoder allocates what the header claims: a 440 kB single-colour PNG that declares 20000 x
20000 pixels makes OpenCV allocate 1.2 GB. Reading the header first lets a worker refuse such a
frame for the price of a few dozen bytes. The header also proves the declared encoding: a frame
declared ``jpeg`` whose bytes are a PNG is refused instead of being decoded by whatever decoder
the bytes select.

Only what is needed is parsed: the PNG signature and IHDR chunk (with its CRC), and the JPEG
markers up to the first frame header (SOF0-SOF15, excluding DHT, JPG and DAC), as the PNG
specification (ISO 15948) and JPEG (ITU T.81, B.1.1) lay them out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final, Literal

from mlink.topics.records import DecodeError

__all__ = ["ImageFormat", "ImageHeader", "ImageHeaderError", "read_header", "sniff_format"]

ImageFormat = Literal["png", "jpeg"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
JPEG_SOI: Final = b"\xff\xd8"
# Decoded channels (OpenCV, IMREAD_UNCHANGED) per PNG colour type: grey, RGB, palette (RGBA
# when it has transparency), grey + alpha (decoded as BGRA), RGBA.
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
_PNG_DEPTHS: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Frame header markers: C0-CF except C4 (DHT), C8 (JPG) and CC (DAC).
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0-7 (SOI is handled before the loop).
_JPEG_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


class ImageHeaderError(DecodeError):
    """Bytes that do not start with a readable PNG or JPEG header."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What a PNG or JPEG header says about the image it holds."""

    format: ImageFormat
    width: int
    height: int
    channels: int
    """Channels the decoded uint8 image will have at most (1, 3 or 4)."""

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Upper bound of the decoded uint8 image's size in bytes."""
        return self.pixels * self.channels


def sniff_format(data: bytes) -> ImageFormat | None:
    """Which of PNG or JPEG the bytes start like, or None."""
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def _png(data: bytes) -> ImageHeader:
    if len(data) < 33:
        raise ImageHeaderError(f"{len(data)} bytes cannot hold a PNG header (33 bytes)")
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ImageHeaderError("a PNG must start with a 13-byte IHDR chunk")
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        raise ImageHeaderError("the PNG IHDR chunk fails its CRC check")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ImageHeaderError(f"PNG size {width}x{height} is invalid")
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageHeaderError(f"PNG colour type {colour} with bit depth {depth} is invalid")
    if depth == 16:
        raise ImageHeaderError("16-bit PNG: frames carry 8-bit pixels; convert to uint8")
    return ImageHeader("png", width, height, _PNG_CHANNELS[colour])


def _jpeg(data: bytes) -> ImageHeader:
    size = len(data)
    pos = 2
    while True:
        if pos >= size:
            raise ImageHeaderError("the JPEG ends before its frame header (SOF)")
        if data[pos] != 0xFF:
            raise ImageHeaderError(f"expected a JPEG marker at byte {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= size:
            raise ImageHeaderError("the JPEG ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA, 0x00):
            raise ImageHeaderError(f"JPEG marker 0x{marker:02X} before any frame header (SOF)")
        if pos + 2 > size:
            raise ImageHeaderError("the JPEG ends inside a segment length")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise ImageHeaderError(f"JPEG segment 0x{marker:02X} has an invalid length {length}")
        if marker in _JPEG_SOF:
            return _jpeg_sof(data, pos, length, marker)
        pos += length


def _jpeg_sof(data: bytes, pos: int, length: int, marker: int) -> ImageHeader:
    if length < 8 or pos + 8 > len(data):
        raise ImageHeaderError("the JPEG frame header is truncated")
    precision = data[pos + 2]
    height = int.from_bytes(data[pos + 3 : pos + 5], "big")
    width = int.from_bytes(data[pos + 5 : pos + 7], "big")
    components = data[pos + 7]
    if precision != 8:
        raise ImageHeaderError(f"{precision}-bit JPEG (SOF 0x{marker:02X}): frames carry 8 bits")
    if width == 0 or height == 0:
        raise ImageHeaderError(
            f"JPEG size {width}x{height}: a size deferred to a DNL marker is not supported"
        )
    if components not in (1, 3, 4):
        raise ImageHeaderError(f"JPEG with {components} components is not supported")
    return ImageHeader("jpeg", width, height, 1 if components == 1 else 3)


def read_header(data: bytes, expected: ImageFormat | None = None) -> ImageHeader:
    """The header of a PNG or JPEG image; with ``expected``, the bytes must be that format.

    Raises :class:`ImageHeaderError` (a :class:`~mlink.topics.records.DecodeError`) when the
    bytes are neither, are another format than ``expected``, or have a malformed header.
    """
    found = sniff_format(data)
    if found is None:
        raise ImageHeaderError("the bytes are neither a PNG nor a JPEG image")
    if expected is not None and found != expected:
        raise ImageHeaderError(f"declared {expected} but the bytes are a {found} image")
    return _png(data) if found == "png" else _jpeg(data)
