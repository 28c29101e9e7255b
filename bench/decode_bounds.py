"""What the decode bounds of issue 9 cost on good records, and what they save on poison ones.

    python bench/decode_bounds.py [--repeat 5]

Prints, for typical records, the time to decode with the bounded decoder next to plain
``msgpack.unpackb`` with the options used before (no structure pass, ``strict_map_key=False``);
and for poison inputs (2 MiB of small msgpack objects, a decompression-bomb PNG), the peak traced
memory and time of the old path next to the new one. Figures are medians over ``--repeat`` runs,
with min-max; memory is ``tracemalloc``'s peak (numpy and OpenCV outputs are traced).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import msgpack
import numpy as np

from mlink.topics import codec
from mlink.topics.codec import decode, encode_record
from mlink.topics.frames import decode_frame, encode_frame
from mlink.topics.records import ControlMessage, DecodeError, Frame, FrameResult, ModelResult


def old_decode(data: bytes) -> Any:
    """The decoder before issue 9: no size, object or depth bounds; int map keys allowed."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=codec._ext_hook)


def timed(fn: Callable[[], Any], repeat: int, inner: int = 1) -> tuple[float, float, float]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(inner):
            with contextlib.suppress(DecodeError):
                fn()
        runs.append((time.perf_counter() - started) / inner)
    return statistics.median(runs), min(runs), max(runs)


def peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
    except (DecodeError, cv2.error):
        pass
    finally:
        value = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return value


def fmt(stats: tuple[float, float, float], unit: float = 1e6, suffix: str = "us") -> str:
    med, lo, hi = (x * unit for x in stats)
    return f"{med:9.1f} {suffix} ({lo:.1f}-{hi:.1f})"


def typical_records() -> dict[str, bytes]:
    y, x = np.mgrid[0:480, 0:640]
    camera = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    frame = encode_frame(camera, "cam-1", 42, encoding="jpeg")
    results = tuple(
        ModelResult(
            model=f"model-{i}", output=np.random.default_rng(i).random(10), status="executed"
        )
        for i in range(8)
    )
    result = FrameResult(
        frame_id="cam-1:42",
        stream_id="cam-1",
        seq=42,
        epoch=3,
        results=results,
        degraded=False,
        emitted_at=1.0,
    )
    control = ControlMessage(
        kind="agreement",
        epoch=3,
        issued_at=1.0,
        extra={"live_agreement": {f"model-{i}": 0.9 for i in range(8)}, "probes": 40},
    )
    return {
        f"Frame (640x480 JPEG, {len(frame.data) // 1000} kB)": encode_record(frame),
        "FrameResult (8 models)": encode_record(result),
        "ControlMessage (agreement, 8 models)": encode_record(control),
    }


def bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = bytes(1 + width)
    body = b"".join(packer.compress(row * 500) for _ in range(height // 500)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    repeat = args.repeat

    print("Good records: decode time per record, median (min-max) of", repeat, "runs")
    for name, data in typical_records().items():
        old = timed(lambda data=data: old_decode(data), repeat, 200)
        new = timed(lambda data=data: decode(data), repeat, 200)
        print(f"  {name:40s} old {fmt(old)}   bounded {fmt(new)}")

    print("\nPoison messages of 2 MiB: peak traced memory and time")
    size = 2 * 1024 * 1024
    for name, item in [
        ("empty lists", b"\x90"),
        ("empty maps", b"\x80"),
        ("2-char strs", b"\xa2ab"),
    ]:
        count = (size - 5) // len(item)  # 5 bytes of array header: exactly at the limit
        data = b"\xdd" + count.to_bytes(4, "big") + item * count
        old_mem, new_mem = (
            peak(lambda data=data: old_decode(data)),
            peak(lambda data=data: decode(data)),
        )
        old_t = timed(lambda data=data: old_decode(data), repeat)
        new_t = timed(lambda data=data: decode(data), repeat)
        print(
            f"  {name:12s} old {old_mem / 1e6:7.1f} MB {fmt(old_t, 1e3, 'ms')}   "
            f"bounded {new_mem / 1e3:6.1f} kB {fmt(new_t, 1e3, 'ms')}"
        )

    print("\nDecompression-bomb PNG frames: peak traced memory and time")
    for width in (8000, 20000):
        data = bomb_png(width, width)
        frame = Frame(
            stream_id="s", frame_id="s:0", seq=0, timestamp=0.0, encoding="png", data=data
        )
        old = lambda data=data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # noqa: E731
        new = lambda frame=frame: decode_frame(frame)  # noqa: E731
        # the old path at 20000x20000 allocates 400 MB of grey pixels: measured once only
        old_mem, old_t = peak(old), timed(old, 1 if width > 10000 else repeat)
        new_mem, new_t = peak(new), timed(new, repeat)
        print(
            f"  {width}x{width} grey ({len(data) // 1000} kB)  old {old_mem / 1e6:7.1f} MB "
            f"{fmt(old_t, 1e3, 'ms')}   bounded {new_mem / 1e3:6.1f} kB {fmt(new_t)}"
        )


if __name__ == "__main__":
    main()
