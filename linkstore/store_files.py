"""Small durable-file helpers of the directory store: strict JSON reads, fsynced writes, the
writers' lock and the removal of what crashed writes left."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlink.linkstore.store_format import StoreError

__all__ = ["local_store_path"]


def _remote_url(root: object) -> bool:
    """True for an fsspec URL other than file:// (those are stored by ObjectLinkStore)."""
    if not isinstance(root, str):
        return False
    scheme, sep, _ = root.partition("://")
    return bool(sep) and scheme != "file"


def local_store_path(root: str | os.PathLike[str]) -> Path | None:
    """The directory of a local link store (a path or a ``file://`` URL), or None for an fsspec
    URL that :class:`~mlink.linkstore.objectstore.ObjectLinkStore` stores."""
    if _remote_url(root):
        return None
    if isinstance(root, str):
        root = root.removeprefix("file://")
    return Path(root)


def _check_version_arg(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version numbers are ints >= 1, got {version!r}")


Reader = Callable[[str], bytes]


@contextlib.contextmanager
def _version_files(
    directory: Path, missing: Callable[[], Exception], corrupt: Callable[[str], Exception]
) -> Iterator[Reader]:
    """``read(name)`` for the files of one version directory, all from the same version even if
    it is deleted meanwhile: reads go through one directory fd, so a concurrent rename cannot
    mix two versions. ``missing()``: the version is gone; ``corrupt(name)``: one file is."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise missing() from None

    def read(name: str) -> bytes:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise (missing() if not directory.is_dir() else corrupt(name)) from None
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    try:
        yield read
    finally:
        os.close(dir_fd)


def _check_after(after: object) -> int:
    """``after`` of a save: the highest version number the new one must be above."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after is a version number >= 0 to number above, got {after!r}")
    return after


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    return _json_object(path.read_bytes(), f"the {what} {path}")


def _json_object(raw: bytes, label: str) -> dict[str, Any]:
    """A small JSON file of the store's root (the pointer, the sequence): ``label`` names it."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"{label} is not valid JSON ({exc}); it is only ever replaced whole, so it was "
            "edited or damaged by hand: restore or remove it"
        ) from None
    if not isinstance(data, dict):
        raise StoreError(f"{label} is not a JSON object; restore or remove it")
    return data


def _as_int(value: object, path: Path | str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreError(f"{path} holds {value!r} where a version number belongs; restore it")
    return value


def _collapse(history: list[int]) -> list[int]:
    """Drop consecutive repeats left behind when versions between them were deleted."""
    out: list[int] = []
    for v in history:
        if not out or out[-1] != v:
            out.append(v)
    return out


def _next_stamp(previous: float) -> float:
    """Strictly increasing, so two promotions within one clock tick still change the token."""
    return max(time.time(), previous + 1e-6)


def _write_durable(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writer_lock(lock_path: Path, timeout: float | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``, waiting at most ``timeout`` seconds (None:
    forever). A crashed writer never blocks others: the kernel drops its lock."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"timed out after {timeout}s waiting for the writer "
                            f"lock {lock_path}; another process is writing to this store. "
                            "Retry, or raise LinkStore(..., lock_timeout=...)"
                        ) from None
                    time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _remove_entries(root: Path, prefixes: tuple[str, ...]) -> None:
    """Remove the files and directories of ``root`` whose names start with ``prefixes``."""
    for entry in os.listdir(root):
        if entry.startswith(prefixes):
            path = root / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
