"""The child side of an isolated model, and how frames travel to it.

Frames are pickled with protocol 5, so pixels never go through the pickler: the header is a few
hundred bytes and each frame's memory is a separate buffer. The buffers take one of two roads:

- large calls (``SHARED_MIN_BYTES`` or more, e.g. any 720p frame): the parent copies them into a
  memory file (``memfd``) it shares with that child, and the child copies them out into its own
  frames. Two memcpys and no system call per byte: a 720p RGB frame costs well under a
  millisecond, a batch of eight does not choke the socket;
- small calls, or where there is no memfd: the buffers follow the header on the socket.

The child copies out rather than reading the shared pages in place because a black box may keep
a frame (a tracker keeping the previous frame) and the next call would overwrite it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import pickle
import sys
import traceback
from collections.abc import Sequence
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from mlink.operators.library_threads import limit_library_threads
from mlink.operators.model_runner import ModelRunner
from mlink.operators.model_settings import IsolationSettings, ModelFactory
from mlink.operators.orphans import die_with_parent
from mlink.topics.specs import OutputSpec

__all__ = [
    "SHARED_MIN_BYTES",
    "FrameBuffer",
    "child_main",
    "decode_frames",
    "encode_frames",
    "receive_frames",
    "rss_mb",
    "send_frames",
]

SHARED_MIN_BYTES = 256 * 1024
"""Calls with at least this many bytes of pixels go through the shared memory file."""
_ALIGN = 64
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def encode_frames(frames: Sequence[np.ndarray]) -> tuple[bytes, list[memoryview]]:
    """A small pickle header and the frames' raw buffers (views, not copies; a frame that is
    not contiguous is made so first, since only contiguous arrays travel out of band)."""
    contiguous = [
        f if f.flags.c_contiguous or f.flags.f_contiguous else np.ascontiguousarray(f)
        for f in frames
    ]
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(contiguous, protocol=5, buffer_callback=buffers.append)
    return head, [b.raw() for b in buffers]


def decode_frames(head: bytes, buffers: Sequence[Any]) -> list[np.ndarray]:
    """Frames backed by ``buffers`` (writable if the buffers are)."""
    return pickle.loads(head, buffers=buffers)


class FrameBuffer:
    """A memory file shared by the parent and one child; it only grows."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, 0
        self._map: mmap.mmap | None = None

    @classmethod
    def create(cls) -> FrameBuffer | None:
        """A new buffer, or None where the platform has no ``memfd_create``."""
        if not hasattr(os, "memfd_create"):
            return None
        return cls(os.memfd_create("mlink-frames", os.MFD_CLOEXEC))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled into a child's start arguments: the descriptor is passed to the child."""
        return _rebuild_buffer, (reduction.DupFd(self.fd),)

    def write(self, buffers: Sequence[memoryview]) -> list[tuple[int, int]]:
        """Copy ``buffers`` in (growing the file if needed); their (offset, size) in it."""
        spans, offset = [], 0
        for b in buffers:
            spans.append((offset, b.nbytes))
            offset += -(-b.nbytes // _ALIGN) * _ALIGN
        if not spans:
            return []
        if offset > self.size:
            os.ftruncate(self.fd, max(offset, 2 * self.size))
            self._remap(os.fstat(self.fd).st_size)
        assert self._map is not None
        for (start, size), b in zip(spans, buffers, strict=True):
            self._map[start : start + size] = b
        return spans

    def read(self, spans: Sequence[tuple[int, int]]) -> list[bytearray]:
        """Private, writable copies of the given spans (remapping if the parent grew the file)."""
        if not spans:
            return []
        if max(start + size for start, size in spans) > self.size:
            self._remap(os.fstat(self.fd).st_size)
        assert self._map is not None
        with memoryview(self._map) as view:
            return [bytearray(view[start : start + size]) for start, size in spans]

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def _remap(self, size: int) -> None:
        if self._map is not None:
            self._map.close()
        self._map, self.size = mmap.mmap(self.fd, size), size


def _rebuild_buffer(dup: Any) -> FrameBuffer:
    return FrameBuffer(dup.detach())


def send_frames(
    conn: Connection, call_id: int, frames: Sequence[np.ndarray], shared: FrameBuffer | None
) -> None:
    """Parent: one call's frames to the child (see the module docstring for the two roads)."""
    head, buffers = encode_frames(frames)
    if shared is not None and sum(b.nbytes for b in buffers) >= SHARED_MIN_BYTES:
        conn.send_bytes(pickle.dumps((call_id, head, "shared", shared.write(buffers))))
        return
    conn.send_bytes(pickle.dumps((call_id, head, "inline", [b.nbytes for b in buffers])))
    for buffer in buffers:
        conn.send_bytes(buffer)


def receive_frames(conn: Connection, shared: FrameBuffer | None) -> tuple[int, list[np.ndarray]]:
    """Child: the next call's id and frames (private, writable arrays)."""
    call_id, head, road, layout = pickle.loads(conn.recv_bytes())
    if road == "shared":
        if shared is None:
            raise RuntimeError("frames were sent through a shared buffer this child lacks")
        buffers = shared.read(layout)
    else:
        buffers = [bytearray(size) for size in layout]
        for buffer in buffers:
            conn.recv_bytes_into(buffer)
    return call_id, decode_frames(head, buffers)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc), None if it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _keep_freed_frames() -> None:
    """Let glibc reuse the memory of the last call's frames instead of unmapping it: without
    this, every large call pays fresh page faults for its frames (measured: a batch of eight
    720p frames took 40-55 ms per call instead of a few)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # blocks up to 32 MB come from the heap
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)  # and up to 64 MB stay there once freed


def child_main(
    conn: Connection,
    shared: FrameBuffer | None,
    factory: ModelFactory,
    name: str,
    spec: OutputSpec,
    batch: bool,
    isolation: IsolationSettings,
    worker_pid: int,
) -> None:
    """Build the model, say "ready" (or "failed" with the traceback), then serve calls until
    the socket closes; exit after a call that left the process over its memory cap."""
    die_with_parent(worker_pid if isolation.start_method == "spawn" else None)
    _keep_freed_frames()
    try:
        _torch_threads(isolation.torch_threads)  # before the build: it may run the model
        runner = ModelRunner(name, factory.build(), spec, batch)
        limit_library_threads(isolation.library_threads)  # after the build loaded them
        _torch_threads(isolation.torch_threads)  # an explicit torch setting still wins
    except BaseException:
        conn.send_bytes(pickle.dumps(("failed", traceback.format_exc(limit=-4))))
        return
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    cap = isolation.max_rss_mb
    while True:
        try:
            call_id, frames = receive_frames(conn, shared)
        except (EOFError, OSError):
            return  # the worker closed the socket or died
        outcomes = runner.run(frames)
        del frames
        rss = rss_mb(os.getpid()) if cap is not None else None
        over = f"RSS {rss:.0f} MB over the {cap:.0f} MB cap" if rss and cap and rss > cap else None
        conn.send_bytes(pickle.dumps(("ok", call_id, outcomes, over), protocol=5))
        if over:
            return


def _torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
