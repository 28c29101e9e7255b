"""Frame decoding under limits: poison frames from issue 9 fail as FrameDecodeError before any
large allocation, refs stay under their root, and the image cache is bounded in bytes."""

from __future__ import annotations

import os
import threading
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlink.topics.frames import FrameDecodeError, FrameTooLargeError, decode_frame, encode_frame
from mlink.topics.image_cache import ImageCache
from mlink.topics.limits import Limits
from mlink.topics.records import DecodeError, Frame
from tests.test_image_header import forged_png, patch_jpeg_size, png_chunk


def frame(encoding: str, data: bytes, shape: tuple[int, ...] | None = None) -> Frame:
    return Frame(
        stream_id="s",
        frame_id="s:1",
        seq=1,
        timestamp=0.0,
        encoding=encoding,  # type: ignore[arg-type]
        data=data,
        shape=shape,
    )


def bomb_png(width: int, height: int) -> bytes:
    """A real, valid single-colour grey PNG: tiny on the wire, huge when decoded."""
    import struct

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0, then black pixels
    body = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    body += packer.compress(row * (height % 1000)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def decode_peak(f: Frame, limits: Limits | None = None) -> tuple[Exception | None, int]:
    tracemalloc.start()
    error = None
    try:
        decode_frame(f) if limits is None else decode_frame(f, limits)
    except Exception as exc:
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


# -- raw frames ---------------------------------------------------------------------------------


def test_raw_shape_of_issue_9_is_a_frame_decode_error() -> None:
    """np.prod overflowed on (2**32, 2**32), and reshape raised a plain ValueError."""
    error, peak = decode_peak(frame("raw", b"", (2**32, 2**32)))
    assert isinstance(error, FrameDecodeError) and isinstance(error, DecodeError)
    assert "4294967296x4294967296 pixels exceed the limit" in str(error)
    assert peak < 100_000


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        ((2**32, 2**32, 3), b"", "exceed the limit"),
        ((2**33, 2**31), bytes(8), "exceed the limit"),
        ((4, 4, 2), bytes(32), r"is not \(H, W\) or \(H, W, C\)"),
        ((2, 2, 2, 1), bytes(8), r"is not \(H, W\)"),
        ((16,), bytes(16), r"is not \(H, W\)"),
        ((), b"\x00", r"is not \(H, W\)"),
        ((0, 4), b"", "is empty"),
        ((4, 0, 3), b"", "is empty"),
        ((2, 2), bytes(5), "cannot fill shape"),
        ((2, 2, 3), bytes(4), "cannot fill shape"),
    ],
)
def test_raw_shapes_are_validated(shape: tuple[int, ...], data: bytes, message: str) -> None:
    with pytest.raises(FrameDecodeError, match=message):
        decode_frame(frame("raw", data, shape))


def test_raw_pixel_limit_is_exact() -> None:
    limits = Limits(max_pixels=12)
    assert decode_frame(frame("raw", bytes(36), (3, 4, 3)), limits).shape == (3, 4, 3)
    with pytest.raises(FrameDecodeError, match="5x3 pixels exceed the limit of 12"):
        decode_frame(frame("raw", bytes(15), (3, 5)), limits)


# -- encoded frames -----------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    """Issue 9: a small single-colour PNG of 20000x20000 took a worker from 0.45 to 8.6 GB."""
    data = bomb_png(12000, 12000)  # 144 M pixels, ~140 kB
    assert len(data) < 200_000
    error, peak = decode_peak(frame("png", data))
    assert isinstance(error, FrameDecodeError)
    assert "declares 12000x12000 pixels, over the limit of 16,777,216" in str(error)
    assert peak < 2 * len(data) + 100_000, "nothing was decoded"


def test_pixel_limit_applies_to_jpeg_and_keeps_good_frames() -> None:
    image = np.zeros((16, 16), np.uint8)
    good = encode_frame(image, "s", 0, encoding="jpeg")
    assert decode_frame(good, Limits(max_pixels=256)).shape == (16, 16)
    with pytest.raises(FrameDecodeError, match="over the limit of 255"):
        decode_frame(good, Limits(max_pixels=255))
    forged = patch_jpeg_size(good.data, 65535, 65535)
    error, peak = decode_peak(frame("jpeg", forged))
    assert isinstance(error, FrameDecodeError) and "65535x65535" in str(error)
    assert peak < 100_000


@pytest.mark.parametrize(("declared", "actual"), [("jpeg", "png"), ("png", "jpeg")])
def test_declared_encoding_is_enforced(declared: str, actual: str) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    data = encode_frame(image, "s", 0, encoding=actual).data  # type: ignore[arg-type]
    with pytest.raises(FrameDecodeError, match=f"declared {declared} but the bytes are a {actual}"):
        decode_frame(frame(declared, data))


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a" + bytes(20),
        b"BM" + bytes(60),
        forged_png(4, 4),  # a valid header with no image data
        forged_png(4, 4)[:-12] + png_chunk(b"IDAT", b"not zlib") + png_chunk(b"IEND", b""),
    ],
    ids=["gif", "bmp", "no-idat", "bad-idat"],
)
def test_other_formats_and_broken_bodies_are_frame_decode_errors(data: bytes) -> None:
    with pytest.raises(FrameDecodeError):
        decode_frame(frame("png", data))


def test_header_size_must_match_the_frame_shape_before_decoding() -> None:
    good = encode_frame(np.zeros((4, 6, 3), np.uint8), "s", 0)
    with pytest.raises(FrameDecodeError, match=r"header declares shape \(4, 6\).*\(6, 4, 3\)"):
        decode_frame(frame("png", good.data, (6, 4, 3)))
    with pytest.raises(FrameDecodeError, match=r"decoded an image of shape \(4, 6, 3\)"):
        decode_frame(frame("png", good.data, (4, 6, 4)))


def test_encode_frame_refuses_what_workers_would_refuse() -> None:
    with pytest.raises(FrameTooLargeError, match=r"5x4 = 20 pixels, over the limit of 19"):
        encode_frame(np.zeros((4, 5), np.uint8), "s", 0, max_pixels=19)
    assert encode_frame(np.zeros((4, 5), np.uint8), "s", 0, max_pixels=None).shape == (4, 5)


# -- ref frames ---------------------------------------------------------------------------------


@pytest.fixture
def ref_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert cv2.imwrite(str(root / "sub" / "in.png"), np.full((3, 3), 7, np.uint8))
    assert cv2.imwrite(str(tmp_path / "secret.png"), np.full((3, 3), 9, np.uint8))
    return root


def test_refs_are_off_by_default(ref_root: Path) -> None:
    with pytest.raises(FrameDecodeError, match="no ref root is configured"):
        decode_frame(frame("ref", str(ref_root / "sub" / "in.png").encode()))


@pytest.mark.parametrize(
    "ref",
    [
        "sub/in.png",
        "{root}/sub/in.png",
        "file://{root}/sub/in.png",
        "file://localhost{root}/sub/in.png",
        "link-inside.png",
    ],
)
def test_refs_inside_the_root_are_read(ref_root: Path, ref: str) -> None:
    os.symlink(ref_root / "sub" / "in.png", ref_root / "link-inside.png")
    data = ref.format(root=ref_root).encode()
    image = decode_frame(frame("ref", data), Limits(ref_root=str(ref_root)))
    assert image.shape == (3, 3) and int(image[0, 0]) == 7


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("{root}/../secret.png", "may not hold NUL or '..'"),
        ("sub/../../secret.png", "may not hold NUL or '..'"),
        ("{root}/sub/in.png\x00.png", "may not hold NUL"),
        ("{parent}/secret.png", "outside the ref root"),
        ("/etc/passwd", "outside the ref root"),
        ("link-outside.png", "outside the ref root"),
        ("dir-link/secret.png", "outside the ref root"),
        ("file://evil.example{root}/sub/in.png", "local file:// URIs"),
        ("https://example.com/x.png", "local file:// URIs"),
        ("sub/missing.png", "cannot read referenced file"),
        ("sub", "cannot read referenced file"),
    ],
)
def test_refs_outside_the_root_are_refused(ref_root: Path, ref: str, message: str) -> None:
    os.symlink(ref_root.parent / "secret.png", ref_root / "link-outside.png")
    os.symlink(ref_root.parent, ref_root / "dir-link")
    data = ref.format(root=ref_root, parent=ref_root.parent).encode()
    with pytest.raises(FrameDecodeError, match=message):
        decode_frame(frame("ref", data), Limits(ref_root=str(ref_root)))


def test_ref_files_get_the_same_header_checks(ref_root: Path) -> None:
    (ref_root / "bomb.png").write_bytes(bomb_png(5000, 5000))
    (ref_root / "text.png").write_bytes(b"hello")
    limits = Limits(ref_root=str(ref_root), max_pixels=100_000)
    with pytest.raises(FrameDecodeError, match="declares 5000x5000 pixels, over the limit"):
        decode_frame(frame("ref", b"bomb.png"), limits)
    with pytest.raises(FrameDecodeError, match="neither a PNG nor a JPEG"):
        decode_frame(frame("ref", b"text.png"), limits)


def test_ref_files_larger_than_any_allowed_image_are_not_read_whole(ref_root: Path) -> None:
    (ref_root / "big.png").write_bytes(bytes(100_000))
    with pytest.raises(FrameDecodeError, match="is over 8,000 bytes"):
        decode_frame(frame("ref", b"big.png"), Limits(ref_root=str(ref_root), max_pixels=1000))


# -- the image cache ----------------------------------------------------------------------------


def img(nbytes: int) -> np.ndarray:
    return np.zeros(nbytes, np.uint8)


def test_image_cache_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    cache = ImageCache(100)
    cache.put("a", img(40))
    cache.put("b", img(40))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", img(40))  # 120 bytes: b goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 80 and len(cache) == 2
    cache.put("a", img(10))  # replacing an entry updates the byte count
    assert cache.nbytes == 50
    cache.put("huge", img(101))  # larger than the budget: never kept, nothing evicted
    assert "huge" not in cache and cache.nbytes == 50
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_image_cache_decodes_once_per_key_and_zero_disables_it() -> None:
    calls = []

    def make() -> np.ndarray:
        calls.append(1)
        return img(8)

    cache = ImageCache(64)
    first = cache.get_or_put("f", make)
    assert cache.get_or_put("f", make) is first and len(calls) == 1
    off = ImageCache(0)
    off.get_or_put("f", make)
    off.get_or_put("f", make)
    assert len(calls) == 3 and len(off) == 0
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        ImageCache(-1)


def test_image_cache_stays_within_budget_under_threads() -> None:
    cache = ImageCache(1000)

    def worker(base: int) -> None:
        for i in range(300):
            cache.put(f"{base}:{i}", img(1 + (i * 37) % 200))
            cache.get(f"{base}:{i // 2}")

    threads = [threading.Thread(target=worker, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.nbytes <= 1000
    assert cache.nbytes == sum(cache.get(k).nbytes for k in list(cache._images))  # type: ignore[union-attr]


def test_a_ref_is_read_as_far_as_the_limits_allow_and_no_further(ref_root: Path) -> None:
    """Review: every ref frame read ``2 * max_image_bytes + 1`` bytes up front (128 MiB for a
    675-byte JPEG), and a big file whose header declares too many pixels was read whole."""
    limits = Limits(ref_root=str(ref_root))
    error, peak = decode_peak(frame("ref", b"sub/in.png"), limits)
    assert error is None and peak < 1_000_000
    (ref_root / "bomb.png").write_bytes(bomb_png(12000, 12000) + bytes(5_000_000))
    error, peak = decode_peak(frame("ref", b"bomb.png"), limits)
    assert isinstance(error, FrameDecodeError) and "nothing more was read" in str(error)
    assert peak < 1_000_000
