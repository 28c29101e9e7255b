"""Versioned, crash-safe storage of trained links and ensembles.

``LinkStore(path)`` keeps versions in a local (or shared) directory;
``LinkStore("s3://bucket/prefix")`` (any fsspec URL but ``file://``) keeps them in an object
store with the same API and checks, for workers that share no directory
(:mod:`mlink.linkstore.objectstore` says how it does without rename and locks). Both keep the
last ``cache_size`` loaded versions in memory: versions are immutable, so each is read and
hashed once per store instance, and one found corrupt is remembered as such instead of being
re-read for every frame.

A *bundle* is one version of the whole link set of a pipeline: a mapping
``name -> state dict`` (``"link/face->person"``, ``"ensemble/person"``, ...) plus the
user's JSON metadata. Bundles are stored as whole versions rather than per link so that
an operator always swaps in a set of links that were trained and validated together.

The on-disk layout and why writes are crash safe: docs/link-store.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlink.linkstore.store_files import (
    Reader,
    _as_int,
    _check_after,
    _check_version_arg,
    _collapse,
    _fsync_dir,
    _next_stamp,
    _read_json,
    _remote_url,
    _remove_entries,
    _version_files,
    _write_durable,
    _writer_lock,
    local_store_path,
)
from mlink.linkstore.store_format import (
    FORMAT,
    MANIFEST_FILE,
    META_FILE,
    TENSORS_FILE,
    IntegrityError,
    StoreError,
    _json_bytes,
    _payload,
)
from mlink.linkstore.store_reads import Bundle, BundleMeta, VersionReads, _MissingVersionError

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "META_FILE",
    "TENSORS_FILE",
    "Bundle",
    "BundleMeta",
    "IntegrityError",
    "LinkStore",
    "StoreError",
    "store_problem",
]

POINTER_FILE = "CURRENT.json"
SEQUENCE_FILE = "SEQUENCE.json"
LOCK_FILE = ".lock"

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_TMP_VERSION_DIR = re.compile(r"^\.tmp-v(\d+)-")
_HISTORY_LIMIT = 256


@dataclass(frozen=True)
class _Pointer:
    current: int | None
    history: tuple[int, ...]
    promoted_at: float


class LinkStore(VersionReads):
    """A directory of versioned link bundles with an atomically switched "current" version.

    Writers (``save``, ``promote``, ``rollback``, ``delete``, ``prune``) serialise on an
    exclusive ``flock`` so several processes can share one store; readers (``load``,
    ``versions``, ``current``, ``current_token``, ``latest``) take no lock and only ever
    observe complete versions.
    """

    def __new__(cls, root: str | os.PathLike[str], *args: Any, **kwargs: Any) -> LinkStore:
        """``LinkStore("s3://bucket/prefix")`` (any fsspec URL but ``file://``) gives an
        :class:`mlink.linkstore.objectstore.ObjectLinkStore`; a path or ``file://`` URL gives
        this local, flock-guarded store."""
        if cls is LinkStore and _remote_url(root):
            from mlink.linkstore.objectstore import ObjectLinkStore

            return super().__new__(ObjectLinkStore)
        return super().__new__(cls)

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lock_timeout: float | None = 60.0,
        cache_size: int = 4,
    ) -> None:
        """``lock_timeout`` bounds how long a writer waits for another writer (None = forever);
        a crashed writer never blocks others because the kernel drops its flock.
        ``cache_size`` verified versions are kept in memory (0 = read and hash on every load)."""
        self.root: Any = local_store_path(root)
        self.lock_timeout = lock_timeout
        self.cache_size = cache_size
        self._good: OrderedDict[int, Bundle] = OrderedDict()
        self._bad: dict[int, IntegrityError] = {}
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"link store path {self.root} exists but is not a directory; "
                "pass a directory path (it is created if missing)"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only mount, a wrong volume path: say which setting
            raise StoreError(
                f"link store {self.root} cannot be created ({exc}); point links.store at a "
                "directory the workers can write"
            ) from exc

    def writable_problem(self) -> str | None:
        """Why the trainer could not save a version here, or None: a store every worker reads
        but none can write trains in vain and fails at the first save, long after start-up."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".mlink-probe-"):
                return None
        except OSError as exc:
            return f"link store {self.root} is not writable ({exc}); the trainer saves there"

    def __repr__(self) -> str:
        return f"LinkStore({str(self.root)!r})"

    # ------------------------------------------------------------------ writers

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        meta: Mapping[str, Any],
        *,
        promote: bool = True,
        after: int = 0,
    ) -> int:
        """Store a new version and return its number (1, 2, ...; never reused).

        Promotes it by default because the common flow is train -> validate -> save and
        serve; pass ``promote=False`` to stage a version for a later ``promote``. The number
        is above ``after`` too: a pipeline whose control log names versions of a store that
        was lost or replaced gives the numbers it has used, so a new version is never taken
        for one of them.
        """
        payload = _payload(tensors, meta)
        with self._locked():
            self._clean_debris()
            version = self._allocate_locked(after)
            tmp = self.root / f"{_TMP_PREFIX}v{version:06d}-{secrets.token_hex(4)}"
            try:
                os.mkdir(tmp)
                for name, data in payload.files(version).items():
                    _write_durable(tmp / name, data)
                _fsync_dir(tmp)
                os.rename(tmp, self._dir(version))
                _fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if promote:
                self._promote_locked(version, verify=False)
        return version

    def promote(self, version: int) -> None:
        """Make ``version`` current (atomically) after verifying its bytes, so a corrupt
        version can never become what running operators hot-swap to."""
        _check_version_arg(version)
        with self._locked():
            self._promote_locked(version, verify=True)

    def rollback(self) -> int:
        """Re-promote the version that was current before the current one and return it.

        Repeated calls walk further back through the promotion history; versions deleted
        since are skipped.
        """
        with self._locked():
            pointer = self._read_pointer()
            existing = set(self._version_numbers())
            history = _collapse([v for v in pointer.history if v in existing])
            if len(history) < 2 or history[-1] != pointer.current:
                raise StoreError(
                    f"cannot roll back in {self.root}: there is no earlier promoted version "
                    f"(current: {pointer.current}, usable history: {history}); "
                    f"promote one explicitly with promote(v), available: {sorted(existing)}"
                )
            target = history[-2]
            self._verify(target)
            self._write_pointer(
                _Pointer(target, tuple(history[:-1]), _next_stamp(pointer.promoted_at))
            )
            return target

    def delete(self, version: int) -> None:
        """Remove a stored version; refuses the current one so serving never loses its
        weights (promote or roll back first)."""
        _check_version_arg(version)
        self._forget(version)
        with self._locked():
            self._delete_locked(version, self._read_pointer())

    def prune(self, keep: int, protect: Collection[int] = ()) -> list[int]:
        """Delete all but the ``keep`` newest versions, the current one and ``protect`` (say,
        a pinned version); return the deleted version numbers."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"prune(keep=...) needs an int >= 0, got {keep!r}")
        with self._locked():
            pointer = self._read_pointer()
            numbers = self._version_numbers()
            kept = set(numbers[len(numbers) - keep :] if keep else []) | set(protect)
            doomed = [v for v in numbers if v not in kept and v != pointer.current]
            for version in doomed:
                self._forget(version)
                pointer = self._delete_locked(version, pointer)
            return doomed

    # ------------------------------------------------------------------ readers

    def load(self, version: int | None = None) -> Bundle:
        """Load and verify a version (default: the current one).

        Raises :class:`IntegrityError` if any file differs from the manifest and
        :class:`StoreError` if the version does not exist.
        """
        if version is not None:
            _check_version_arg(version)
            return self._load_version(version)
        last_error: StoreError | None = None
        for _ in range(5):
            current = self.current()
            if current is None:
                raise StoreError(
                    f"no version of {self.root} is promoted; save(...) one, or promote(v) "
                    f"one of the available versions {self._version_numbers()}"
                )
            try:
                return self._load_version(current)
            except _MissingVersionError as exc:
                # A concurrent promote+delete may have retired it; retry only if it moved.
                if self.current() == current:
                    raise
                last_error = exc
        assert last_error is not None
        raise last_error

    def versions(self) -> list[BundleMeta]:
        """All complete versions, oldest first (reads only the small JSON files)."""
        metas = []
        for version in self._version_numbers():
            try:
                metas.append(self._read_meta(version))
            except _MissingVersionError:
                continue  # deleted by a concurrent writer while listing
        return metas

    def current(self) -> int | None:
        """The promoted version, or None if nothing was promoted yet."""
        return self._read_pointer().current

    def current_token(self) -> tuple[int | None, float]:
        """``(current version, promotion time)``: one small file read, cheap to poll.

        The token changes exactly when the current version is (re)promoted, so a running
        operator can compare tokens and hot-swap without loading anything.
        """
        pointer = self._read_pointer()
        return pointer.current, pointer.promoted_at

    def latest(self) -> int | None:
        """The highest stored version number, promoted or not."""
        numbers = self._version_numbers()
        return numbers[-1] if numbers else None

    # ------------------------------------------------------------------ internals

    def _dir(self, version: int) -> Path:
        return self.root / f"v{version:06d}"

    def _version_numbers(self) -> list[int]:
        numbers = []
        if not self.root.is_dir():  # wiped under a running pipeline: it holds nothing
            return numbers
        for entry in os.listdir(self.root):
            match = _VERSION_DIR.match(entry)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        self.root.mkdir(parents=True, exist_ok=True)  # a store wiped under a running pipeline
        return _writer_lock(self.root / LOCK_FILE, self.lock_timeout)

    def _clean_debris(self) -> None:
        """Remove leftovers of crashed writes; only safe while holding the lock."""
        _remove_entries(self.root, (_TMP_PREFIX, _TRASH_PREFIX))

    def _allocate_locked(self, after: int = 0) -> int:
        last = _check_after(after)
        with contextlib.suppress(FileNotFoundError):
            state = _read_json(self.root / SEQUENCE_FILE, what="sequence file")
            last = _as_int(state.get("last"), self.root / SEQUENCE_FILE)
        for entry in os.listdir(self.root):
            match = _VERSION_DIR.match(entry) or _TMP_VERSION_DIR.match(entry)
            if match:
                last = max(last, int(match.group(1)))
        version = last + 1
        # Persist before the temp dir exists, so a crash cannot lead to reuse of `version`.
        self._write_json_atomic(SEQUENCE_FILE, {"format": FORMAT, "last": version})
        return version

    def _read_small_json(self, name: str, *, what: str) -> dict[str, Any]:
        """A small JSON file of the store's root (raises FileNotFoundError when absent)."""
        return _read_json(self.root / name, what=what)

    def _read_pointer(self) -> _Pointer:
        path = f"{self.root}/{POINTER_FILE}"
        try:
            data = self._read_small_json(POINTER_FILE, what="current-version pointer")
        except FileNotFoundError:
            return _Pointer(None, (), 0.0)
        current = data.get("current")
        if current is not None:
            current = _as_int(current, path)
        history = tuple(_as_int(v, path) for v in data.get("history", []))
        return _Pointer(current, history, float(data.get("promoted_at", 0.0)))

    def _write_pointer(self, pointer: _Pointer) -> None:
        self._write_json_atomic(
            POINTER_FILE,
            {
                "format": FORMAT,
                "current": pointer.current,
                "history": list(pointer.history[-_HISTORY_LIMIT:]),
                "promoted_at": pointer.promoted_at,
            },
        )

    def _has_version(self, version: int) -> bool:
        return self._dir(version).is_dir()

    def _promote_locked(self, version: int, *, verify: bool) -> None:
        if not self._has_version(version):
            raise self._missing(version)
        if verify:
            self._verify(version)
        pointer = self._read_pointer()
        if pointer.current == version:
            return
        history = (*pointer.history, version)
        self._write_pointer(_Pointer(version, history, _next_stamp(pointer.promoted_at)))

    def _delete_locked(self, version: int, pointer: _Pointer) -> _Pointer:
        if version == pointer.current:
            raise StoreError(
                f"version {version} is the current version of {self.root} and cannot be "
                "deleted; promote(v) another version or rollback() first"
            )
        if not self._has_version(version):
            raise self._missing(version)
        finish = self._retire(version)
        if version in pointer.history:
            history = _collapse([v for v in pointer.history if v != version])
            pointer = _Pointer(pointer.current, tuple(history), pointer.promoted_at)
            self._write_pointer(pointer)
        finish()
        return pointer

    def _retire(self, version: int) -> Callable[[], None]:
        """Make a version invisible at once; return what frees its space afterwards."""
        trash = self.root / f"{_TRASH_PREFIX}v{version:06d}-{secrets.token_hex(4)}"
        os.rename(self._dir(version), trash)  # atomic: readers see it whole or not at all
        _fsync_dir(self.root)
        return lambda: shutil.rmtree(trash, ignore_errors=True)

    def _write_json_atomic(self, name: str, obj: Any) -> None:
        tmp = self.root / f"{_TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            _write_durable(tmp, _json_bytes(obj))
            os.replace(tmp, self.root / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(self.root)

    def _version_reader(self, version: int) -> contextlib.AbstractContextManager[Reader]:
        return _version_files(
            self._dir(version),
            missing=lambda: self._missing(version),
            corrupt=lambda name: self._missing_file(version, name),
        )


def store_problem(root: str | os.PathLike[str]) -> str | None:
    """Why the workers could not open or write the link store at ``root``, or None: what
    ``mlink check`` and ``mlink worker`` ask before any worker builds it at import (opening it
    creates the directory, as a worker would)."""
    try:
        return LinkStore(root).writable_problem()
    except StoreError as exc:
        return str(exc)
