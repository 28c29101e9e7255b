"""Images to :class:`~mlink.topics.records.Frame` records and back.

Pure: no Kafka here, so the producer, every worker and the tests share one encoder and one
decoder, and a frame that decodes in a test decodes the same way in a worker.

Encodings:

- ``"png"`` (default): lossless, so a model sees exactly the pixels the source produced.
- ``"jpeg"``: lossy but 5-20x smaller, for camera-sized frames that PNG cannot fit in a message.
- ``"raw"``: the uint8 pixels as they are, with ``shape``; no codec cost, largest on the wire.
- ``"ref"``: ``data`` is a UTF-8 path (or ``file://`` URI) of an image file every worker can
  read, so frames too large for the broker need not cross it (see :func:`ref_frame`).

Images are ``uint8`` arrays: 2-D grayscale ``(H, W)``, or ``(H, W, C)`` with 1, 3 (or, except
JPEG, 4) channels. Channel order is kept as given: OpenCV treats 3 channels as BGR on both ends,
so a frame from ``cv2.VideoCapture`` stays BGR. ``Frame.shape`` stores the image's shape, so a
decoded image has the shape that was encoded (an ``(H, W, 1)`` image comes back as
``(H, W, 1)``, not ``(H, W)``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

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

DEFAULT_MAX_BYTES: Final = 900_000
"""Largest encoded image :func:`encode_frame` accepts by default.

Kafka's default message limit is 1 MB (``message.max.bytes`` on the broker, ``max.request.size``
on the producer); 900 kB leaves room for the record's other fields and Kafka's batch overhead.
"""

ImageEncoding = Literal["png", "jpeg", "raw"]
_CHANNELS: Final = {"png": (1, 3, 4), "jpeg": (1, 3), "raw": (1, 3, 4)}
_EXT: Final = {"png": ".png", "jpeg": ".jpg"}


class FrameDecodeError(DecodeError):
    """A frame's data could not be turned back into an image.

    A :class:`~mlink.topics.records.DecodeError`, so a worker's single ``except DecodeError``
    dead-letters an undecodable frame like any other unreadable message.
    """


class FrameTooLargeError(ValueError):
    """An encoded frame would not fit in one Kafka message."""


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
) -> Frame:
    """Encode a uint8 image as a :class:`Frame` with id ``f"{stream_id}:{seq}"``.

    ``timestamp`` defaults to now (seconds since the epoch). ``max_bytes`` (None = no limit)
    guards the encoded size, so an oversized frame fails here, naming its size and what to do,
    instead of as a broker ``MessageSizeTooLarge`` after the producer has buffered it.

    Raises ``TypeError``/``ValueError`` for an unsupported image or encoding and
    :class:`FrameTooLargeError` when the encoded image exceeds ``max_bytes``.
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
            f"{len(data):,} bytes as {encoding}, over the {max_bytes:,}-byte limit (Kafka's "
            "default message limit is 1 MB): use encoding 'jpeg' (or a lower jpeg_quality), "
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


def _ref_path(frame: Frame) -> str:
    text = frame.data.decode("utf-8")
    if "://" not in text:
        return text
    url = urlparse(text)
    if url.scheme != "file":
        raise FrameDecodeError(
            f"frame {frame.frame_id!r}: cannot read ref {text!r}: only local paths and file:// "
            "URIs are supported; put the image on storage every worker mounts"
        )
    return unquote(url.path)


def decode_frame(frame: Frame) -> np.ndarray:
    """The image a :class:`Frame` carries, as a writable uint8 array of ``frame.shape``.

    Raises :class:`FrameDecodeError` naming the frame id and the reason when the data is not a
    readable image, a ref file cannot be read, or the image's shape differs from
    ``frame.shape``.
    """
    if not isinstance(frame, Frame):
        raise TypeError(f"decode_frame() takes a Frame record, got {type(frame).__name__}")

    def fail(reason: str) -> FrameDecodeError:
        return FrameDecodeError(f"frame {frame.frame_id!r} ({frame.encoding}): {reason}")

    if frame.encoding == "raw":
        shape = frame.shape or ()
        needed = int(np.prod(shape))
        if len(frame.data) != needed:
            raise fail(f"{len(frame.data)} bytes of uint8 pixels cannot fill shape {shape}")
        return np.frombuffer(bytearray(frame.data), dtype=np.uint8).reshape(shape)

    if frame.encoding == "ref":
        path = _ref_path(frame)
        if not Path(path).is_file():
            raise fail(f"referenced file {path!r} does not exist or is not a file")
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise fail(f"OpenCV cannot read referenced file {path!r} as an image")
    else:
        if not frame.data:
            raise fail("data is empty")
        try:
            image = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            raise fail(f"OpenCV failed to decode the data: {exc}") from exc
        if image is None:
            raise fail(f"{len(frame.data)} bytes of data are not a readable image")

    if image.dtype != np.uint8:
        raise fail(f"decoded a {image.dtype} image; frames carry uint8 pixels")
    if frame.shape is not None and image.shape != frame.shape:
        if image.size == int(np.prod(frame.shape)) and image.shape[:2] == frame.shape[:2]:
            image = image.reshape(frame.shape)  # (H, W) decoded for an (H, W, 1) image
        else:
            raise fail(f"decoded an image of shape {image.shape}, but the frame says {frame.shape}")
    return image
