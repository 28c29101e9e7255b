"""Images to :class:`~mlink.topics.records.Frame` records and back.

Pure: no Kafka here, so the producer, every worker and the tests share one encoder and one
decoder, and a frame that decodes in a test decodes the same way in a worker.

Encodings:

- ``"png"`` (default): lossless, so a model sees exactly the pixels the source produced.
- ``"jpeg"``: lossy but 5-20x smaller, for camera-sized frames that PNG cannot fit in a message.
- ``"raw"``: the uint8 pixels as they are, with ``shape``; no codec cost, largest on the wire.
- ``"ref"``: ``data`` is a UTF-8 path (or local ``file://`` URI) of a PNG or JPEG file every
  worker can read, so frames too large for the broker need not cross it (see :func:`ref_frame`).
  Workers read refs only under a configured root (``Limits.ref_root``); by default they refuse
  them.

Images are ``uint8`` arrays: 2-D grayscale ``(H, W)``, or ``(H, W, C)`` with 1, 3 (or, except
JPEG, 4) channels. Channel order is kept as given: OpenCV treats 3 channels as BGR on both ends,
so a frame from ``cv2.VideoCapture`` stays BGR. ``Frame.shape`` stores the image's shape, so a
decoded image has the shape that was encoded (an ``(H, W, 1)`` image comes back as
``(H, W, 1)``, not ``(H, W)``).

Decoding is guarded by :class:`~mlink.topics.limits.Limits`: the image header is read first
(:mod:`mlink.topics.image_header`), so the declared encoding and the pixel limit hold before
OpenCV allocates anything. (OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS`` is read once when cv2
is imported and applies to the whole process, so it is left to the application.)
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from mlink.topics.image_header import ImageHeaderError, read_header
from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.records import DecodeError, Frame

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FrameDecodeError",
    "FrameTooLargeError",
    "decode_frame",
    "encode_frame",
    "make_frame_id",
    "ref_frame",
]

DEFAULT_MAX_BYTES: Final = DEFAULT_LIMITS.max_frame_data_bytes
"""Largest encoded image :func:`encode_frame` accepts by default: the default limits' record
size less room for the record's other fields, the plan and a dead-letter envelope
(:attr:`mlink.topics.limits.Limits.max_frame_data_bytes`)."""

ImageEncoding = Literal["png", "jpeg", "raw"]
_CHANNELS: Final = {"png": (1, 3, 4), "jpeg": (1, 3), "raw": (1, 3, 4)}
_EXT: Final = {"png": ".png", "jpeg": ".jpg"}


class FrameDecodeError(DecodeError):
    """A frame's data could not be turned back into an image.

    A :class:`~mlink.topics.records.DecodeError`, so a worker's single ``except DecodeError``
    dead-letters an undecodable frame like any other unreadable message.
    """


Fail = Callable[[str], FrameDecodeError]


class FrameTooLargeError(ValueError):
    """An encoded frame would not fit in one Kafka message, or has more pixels than allowed."""


def make_frame_id(stream_id: str, seq: int) -> str:
    """The conventional globally unique frame id, ``f"{stream_id}:{seq}"``."""
    return f"{stream_id}:{seq}"


def _check_image(image: np.ndarray, encoding: str, where: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: expected a numpy uint8 image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"{where}: expected a uint8 image, got dtype {image.dtype}; scale it to 0..255 and "
            "convert with image.astype(np.uint8)"
        )
    channels = _CHANNELS[encoding]
    if (
        not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in channels))
        or 0 in image.shape[:2]
    ):
        raise ValueError(
            f"{where}: expected a non-empty (H, W) or (H, W, C) image with C in {channels} for "
            f"{encoding}, got shape {image.shape}"
        )
    return np.ascontiguousarray(image)


def encode_frame(
    image: np.ndarray,
    stream_id: str,
    seq: int,
    timestamp: float | None = None,
    encoding: ImageEncoding = "png",
    jpeg_quality: int = 90,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_pixels: int | None = DEFAULT_LIMITS.max_pixels,
) -> Frame:
    """Encode a uint8 image as a :class:`Frame` with id ``f"{stream_id}:{seq}"``.

    ``timestamp`` defaults to now (seconds since the epoch). ``max_bytes`` and ``max_pixels``
    (None = no limit) are what workers accept (pass ``limits.max_frame_data_bytes`` and
    ``limits.max_pixels`` of the deployment's :class:`~mlink.topics.limits.Limits`), so an
    oversized frame fails here, naming its size and what to do, instead of as a broker
    ``MessageSizeTooLarge`` or a dead letter.

    Raises ``TypeError``/``ValueError`` for an unsupported image or encoding and
    :class:`FrameTooLargeError` when the image exceeds ``max_pixels`` or the encoded image
    exceeds ``max_bytes``.
    """
    frame_id = make_frame_id(stream_id, seq)
    where = f"encode_frame({frame_id!r})"
    if encoding == "ref":
        raise ValueError(
            f"{where}: 'ref' frames point at a file instead of holding pixels; build them with "
            "ref_frame(path, stream_id, seq)"
        )
    if encoding not in _CHANNELS:
        raise ValueError(f"{where}: encoding {encoding!r} is unknown; use 'png', 'jpeg' or 'raw'")
    image = _check_image(image, encoding, where)
    pixels = image.shape[0] * image.shape[1]
    if max_pixels is not None and pixels > max_pixels:
        raise FrameTooLargeError(
            f"frame {frame_id!r} has {image.shape[1]}x{image.shape[0]} = {pixels:,} pixels, over "
            f"the limit of {max_pixels:,} that workers decode: downscale it (cv2.resize) or "
            "raise Limits.max_pixels"
        )
    if encoding == "raw":
        data = image.tobytes()
    else:
        if encoding == "jpeg" and not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"{where}: jpeg_quality must be 1..100, got {jpeg_quality}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if encoding == "jpeg" else []
        ok, buf = cv2.imencode(_EXT[encoding], image, params)
        if not ok:
            raise ValueError(
                f"{where}: OpenCV could not encode a {image.shape} image as {encoding}"
            )
        data = buf.tobytes()
    if max_bytes is not None and len(data) > max_bytes:
        raise FrameTooLargeError(
            f"frame {frame_id!r} ({'x'.join(map(str, image.shape))} uint8) encodes to "
            f"{len(data):,} bytes as {encoding}, over the {max_bytes:,}-byte limit "
            "(Limits.max_record_bytes less room for the envelope): use encoding 'jpeg' (or a "
            "lower jpeg_quality), "
            "downscale the frames (cv2.resize), or send 'ref' frames that point at files "
            "(ref_frame)"
        )
    return Frame(
        stream_id=stream_id,
        frame_id=frame_id,
        seq=seq,
        timestamp=time.time() if timestamp is None else timestamp,
        encoding=encoding,
        data=data,
        shape=tuple(int(d) for d in image.shape),
    )


def ref_frame(
    path: str | Path,
    stream_id: str,
    seq: int,
    timestamp: float | None = None,
    shape: tuple[int, ...] | None = None,
) -> Frame:
    """A ``"ref"`` frame: the image stays in a file that every worker can read.

    The path is stored as given (made absolute only if it is a relative filesystem path, since
    workers may run in other directories); the file is read at decode time, not here.
    """
    text = str(path)
    if "://" not in text:
        text = str(Path(text).absolute())
    return Frame(
        stream_id=stream_id,
        frame_id=make_frame_id(stream_id, seq),
        seq=seq,
        timestamp=time.time() if timestamp is None else timestamp,
        encoding="ref",
        data=text.encode("utf-8"),
        shape=shape,
    )


def _ref_path(frame: Frame, root: str | None, fail: Fail) -> str:
    """The real path a ``ref`` frame may be read from: inside ``root``, or refused."""
    if root is None:
        raise fail(
            "'ref' frames are refused: no ref root is configured (Limits.ref_root); set it to "
            "the directory that holds the referenced images"
        )
    text = frame.data.decode("utf-8")
    if "://" in text:
        url = urlparse(text)
        if url.scheme != "file" or url.netloc not in ("", "localhost"):
            raise fail(
                f"cannot read ref {text!r}: only paths and local file:// URIs are supported; "
                "put the image on storage every worker mounts"
            )
        text = unquote(url.path)
    if "\x00" in text or ".." in Path(text).parts:
        raise fail(f"ref {text!r} may not hold NUL or '..'")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, text))  # an absolute text replaces the root
    if os.path.commonpath([real_root, real]) != real_root:
        raise fail(f"ref {text!r} resolves to {real!r}, outside the ref root {real_root!r}")
    return real


REF_HEAD_BYTES: Final = 64 * 1024  # enough for a PNG's or JPEG's size field after EXIF


def _read_ref(frame: Frame, limits: Limits, fail: Fail) -> bytes:
    """The referenced file's bytes, read only as far as the limits allow: its size is checked
    before anything is read, and a header that declares too many pixels before the rest (a
    read of ``n`` bytes allocates ``n`` up front, so "read the cap and see" costs the cap on
    every frame)."""
    path = _ref_path(frame, limits.ref_root, fail)
    cap = 2 * limits.max_image_bytes  # an encoded image is not much larger than its pixels
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > cap:
                raise fail(f"referenced file {path!r} is over {cap:,} bytes")
            head = fh.read(min(size, REF_HEAD_BYTES) + 1)
            with contextlib.suppress(ImageHeaderError):  # the full decode says what is wrong
                header = read_header(head)
                if header.pixels > limits.max_pixels:
                    raise fail(
                        f"the {header.format} header of {path!r} declares {header.width}x"
                        f"{header.height} pixels, over the limit of {limits.max_pixels:,}; "
                        "nothing more was read"
                    )
            data = head + fh.read(size - len(head) + 1) if len(head) < size else head
    except OSError as exc:
        raise fail(f"cannot read referenced file {path!r}: {exc.strerror}") from exc
    if len(data) > cap:
        raise fail(f"referenced file {path!r} is over {cap:,} bytes")
    return data


def _decode_raw(frame: Frame, limits: Limits, fail: Fail) -> np.ndarray:
    shape = frame.shape or ()
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in _CHANNELS["raw"])):
        raise fail(f"shape {shape} is not (H, W) or (H, W, C) with C in {_CHANNELS['raw']}")
    if shape[0] == 0 or shape[1] == 0:
        raise fail(f"shape {shape} is empty")
    if shape[0] * shape[1] > limits.max_pixels:  # Python ints: no overflow
        raise fail(f"{shape[1]}x{shape[0]} pixels exceed the limit of {limits.max_pixels:,}")
    needed = math.prod(shape)
    if len(frame.data) != needed:
        raise fail(f"{len(frame.data)} bytes of uint8 pixels cannot fill shape {shape}")
    return np.frombuffer(bytearray(frame.data), dtype=np.uint8).reshape(shape)


def _decode_encoded(frame: Frame, data: bytes, limits: Limits, fail: Fail) -> np.ndarray:
    if not data:
        raise fail("data is empty")
    expected = None if frame.encoding == "ref" else frame.encoding
    try:
        header = read_header(data, expected)  # type: ignore[arg-type]
    except ImageHeaderError as exc:
        raise fail(f"{len(data)} bytes of data are not a readable image: {exc}") from exc
    if header.pixels > limits.max_pixels:
        raise fail(
            f"the {header.format} header declares {header.width}x{header.height} pixels, over "
            f"the limit of {limits.max_pixels:,}; nothing was decoded"
        )
    if frame.shape is not None and tuple(frame.shape[:2]) != (header.height, header.width):
        raise fail(
            f"the {header.format} header declares shape {(header.height, header.width)}, but the "
            f"frame says {frame.shape}"
        )
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise fail(f"{len(data)} bytes of data are not a readable image ({header.format} body)")
    if image.shape[:2] != (header.height, header.width):
        raise fail(f"decoded shape {image.shape} differs from the header's")
    return image


def decode_frame(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """The image a :class:`Frame` carries, as a writable uint8 array of ``frame.shape``.

    Checks ``limits`` before anything is decoded: a ``png``/``jpeg`` frame must hold that
    format, and its header's size must be within ``limits.max_pixels``; a ``raw`` frame's shape
    must be an image within the limit whose size its data fills; a ``ref`` frame is read only
    under ``limits.ref_root``. Raises :class:`FrameDecodeError` naming the frame id and the
    reason, for these and for any failure of the decoder itself.
    """
    if not isinstance(frame, Frame):
        raise TypeError(f"decode_frame() takes a Frame record, got {type(frame).__name__}")

    def fail(reason: str) -> FrameDecodeError:
        return FrameDecodeError(f"frame {frame.frame_id!r} ({frame.encoding}): {reason}")

    try:
        if frame.encoding == "raw":
            return _decode_raw(frame, limits, fail)
        data = _read_ref(frame, limits, fail) if frame.encoding == "ref" else frame.data
        image = _decode_encoded(frame, data, limits, fail)
        if image.dtype != np.uint8:
            raise fail(f"decoded a {image.dtype} image; frames carry uint8 pixels")
        if frame.shape is not None and image.shape != frame.shape:
            if image.size == math.prod(frame.shape) and image.shape[:2] == frame.shape[:2]:
                image = image.reshape(frame.shape)  # (H, W) decoded for an (H, W, 1) image
            else:
                raise fail(
                    f"decoded an image of shape {image.shape}, but the frame says {frame.shape}"
                )
        return image
    except FrameDecodeError:
        raise
    except Exception as exc:  # untrusted bytes: whatever the decoder raises is a decode error
        raise fail(f"decoding failed: {type(exc).__name__}: {exc}") from exc
