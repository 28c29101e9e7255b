"""Versioned, crash-safe storage of trained links and ensembles.

``LinkStore(path)`` keeps versions in a local (or shared) directory, as described below;
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

On-disk layout (``root`` is the directory given to :class:`LinkStore`)::

    root/
      .lock                  flock target; held by writers only, readers never take it
      SEQUENCE.json          {"last": 7}: highest version number ever allocated
      CURRENT.json           {"current": 7, "history": [3, 5, 7], "promoted_at": <unix s>}
      v000007/               one complete version; only ever appears via os.rename
        tensors.safetensors  all state dicts, flattened to "<name>/<param>" keys
        meta.json            {"version", "created_at", "names", "meta": <user dict>}
        MANIFEST.json        sha256 of the two files above, checked on every load
      .tmp-*                 debris of an interrupted write; ignored, removed by next save
      .trash-*               debris of an interrupted delete; ignored, removed by next save

Why it is crash safe: a version is written completely into a ``.tmp-`` directory inside
the store (same filesystem), every file and the directory are fsynced, and only then is
it renamed to ``vNNNNNN``; a rename is atomic, so a version is either absent or complete.
Small JSON files (pointer, sequence) are replaced with write-temp + fsync + ``os.replace``.
The sequence counter is advanced *before* the temp directory is created, so a number
handed to a write that later crashed is never handed out again.

Why writers hold the lock for the whole save (not just allocation and rename): it makes
every ``.tmp-`` entry seen by a lock holder provably stale, so cleanup can never delete a
concurrent writer's half-built version. Saves of small link models take milliseconds;
serialisation to bytes happens before the lock is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load

from mlink.linkstore.store_format import (
    IntegrityError,
    StoreError,
    _check_tensors,
    _digest,
    _json_bytes,
    _serialize,
    _split_key,
    _to_json,
)

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleMeta",
    "IntegrityError",
    "LinkStore",
    "StoreError",
]

FORMAT = 1
"""On-disk format written by this module; newer formats are refused rather than misread."""

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"
POINTER_FILE = "CURRENT.json"
SEQUENCE_FILE = "SEQUENCE.json"
LOCK_FILE = ".lock"

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_TMP_VERSION_DIR = re.compile(r"^\.tmp-v(\d+)-")
_HISTORY_LIMIT = 256


class _MissingVersionError(StoreError):
    """Internal: the version directory is absent (lets load(None) retry after a race)."""


@dataclass(frozen=True)
class BundleMeta:
    """What is known about one stored version without reading its tensors.

    ``sha256`` is the digest of the tensor payload file, so two versions with equal
    ``sha256`` hold bit-identical weights. ``meta`` is the user's JSON dict as saved
    (tuples come back as lists, as with any JSON round trip).
    """

    version: int
    created_at: str
    sha256: str
    meta: dict[str, Any]
    names: tuple[str, ...]


@dataclass(frozen=True)
class Bundle:
    """One loaded version: ``tensors[name][param]`` are CPU tensors, verified against the
    manifest."""

    version: int
    tensors: dict[str, dict[str, torch.Tensor]]
    meta: BundleMeta


@dataclass(frozen=True)
class _Pointer:
    current: int | None
    history: tuple[int, ...]
    promoted_at: float


class LinkStore:
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
        if isinstance(root, str) and root.startswith("file://"):
            root = root.removeprefix("file://")
        self.root: Any = Path(root)
        self.lock_timeout = lock_timeout
        self.cache_size = cache_size
        self._good: OrderedDict[int, Bundle] = OrderedDict()
        self._bad: dict[int, IntegrityError] = {}
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"link store path {self.root} exists but is not a directory; "
                "pass a directory path (it is created if missing)"
            )
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LinkStore({str(self.root)!r})"

    # ------------------------------------------------------------------ writers

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        meta: Mapping[str, Any],
        *,
        promote: bool = True,
    ) -> int:
        """Store a new version and return its number (1, 2, ...; never reused).

        Promotes it by default because the common flow is train -> validate -> save and
        serve; pass ``promote=False`` to stage a version for a later ``promote``.
        """
        names = _check_tensors(tensors)
        if not isinstance(meta, Mapping):
            raise StoreError(
                f"meta must be a JSON object (a dict with str keys), got {type(meta).__name__}"
            )
        plain_meta = _to_json(meta, "meta")
        payload = _serialize(tensors)
        with self._locked():
            self._clean_debris()
            version = self._allocate_locked()
            created_at = datetime.now(UTC).isoformat()
            meta_bytes = _json_bytes(
                {
                    "format": FORMAT,
                    "version": version,
                    "created_at": created_at,
                    "names": list(names),
                    "meta": plain_meta,
                }
            )
            manifest_bytes = _json_bytes(
                {
                    "format": FORMAT,
                    "version": version,
                    "files": {
                        TENSORS_FILE: _digest(payload),
                        META_FILE: _digest(meta_bytes),
                    },
                }
            )
            tmp = self.root / f"{_TMP_PREFIX}v{version:06d}-{secrets.token_hex(4)}"
            try:
                os.mkdir(tmp)
                _write_durable(tmp / TENSORS_FILE, payload)
                _write_durable(tmp / META_FILE, meta_bytes)
                _write_durable(tmp / MANIFEST_FILE, manifest_bytes)
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

    def prune(self, keep: int) -> list[int]:
        """Delete all but the ``keep`` newest versions (the current one is always kept,
        in addition) and return the deleted version numbers."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"prune(keep=...) needs an int >= 0, got {keep!r}")
        with self._locked():
            pointer = self._read_pointer()
            numbers = self._version_numbers()
            kept = set(numbers[len(numbers) - keep :] if keep else [])
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
        for entry in os.listdir(self.root):
            match = _VERSION_DIR.match(entry)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _missing(self, version: int) -> _MissingVersionError:
        available = self._version_numbers()
        return _MissingVersionError(
            f"version {version} does not exist in {self.root}; "
            f"available versions: {available if available else 'none (save one first)'}"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.root / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if self.lock_timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + self.lock_timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise StoreError(
                                f"timed out after {self.lock_timeout}s waiting for the writer "
                                f"lock {lock_path}; another process is writing to this store. "
                                "Retry, or raise LinkStore(..., lock_timeout=...)"
                            ) from None
                        time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _clean_debris(self) -> None:
        """Remove leftovers of crashed writes; only safe while holding the lock."""
        for entry in os.listdir(self.root):
            if entry.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                path = self.root / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    def _allocate_locked(self) -> int:
        last = 0
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

    @contextlib.contextmanager
    def _version_reader(self, version: int) -> Iterator[Callable[[str], bytes]]:
        """``read(name)`` for the files of one version, all from the same version even if it
        is deleted meanwhile (reads go through one directory fd)."""
        dir_fd = self._open_dir(version)
        try:
            yield functools.partial(self._read_file, version, dir_fd)
        finally:
            os.close(dir_fd)

    def _open_dir(self, version: int) -> int:
        try:
            return os.open(self._dir(version), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._missing(version) from None

    def _read_file(self, version: int, dir_fd: int, name: str) -> bytes:
        """Read through the directory fd so a concurrent rename cannot mix two versions."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            if not self._dir(version).is_dir():
                raise self._missing(version) from None
            raise IntegrityError(
                f"version {version} in {self.root} is missing {name}; the version is "
                f"corrupt: rollback()/promote(v) away from it and delete({version})"
            ) from None
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def _read_manifest(self, version: int, read: Callable[[str], bytes]) -> dict[str, str]:
        raw = read(MANIFEST_FILE)
        manifest = self._parse(version, MANIFEST_FILE, raw)
        files = manifest.get("files")
        if (
            manifest.get("version") != version
            or not isinstance(files, dict)
            or set(files) != {TENSORS_FILE, META_FILE}
        ):
            raise self._corrupt(version, MANIFEST_FILE, "has unexpected content")
        return files

    def _checked(
        self, version: int, read: Callable[[str], bytes], files: dict[str, str], name: str
    ) -> bytes:
        data = read(name)
        actual = _digest(data)
        if actual != files[name]:
            raise self._corrupt(
                version,
                name,
                f"has sha256 {actual[:16]}... but the manifest records {str(files[name])[:16]}...",
            )
        return data

    def _parse(self, version: int, name: str, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(version, name, f"is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise self._corrupt(version, name, "is not a JSON object")
        fmt = data.get("format")
        if isinstance(fmt, int) and fmt > FORMAT:
            raise StoreError(
                f"version {version} in {self.root} uses store format {fmt}, newer than this "
                f"code understands ({FORMAT}); upgrade mlink-stream to read it"
            )
        return data

    def _corrupt(self, version: int, name: str, problem: str) -> IntegrityError:
        return IntegrityError(
            f"version {version} in {self.root} is corrupt: {name} {problem}. Do not use it: "
            f"rollback() or promote(v) another version, then delete({version})"
        )

    def _meta_from(self, version: int, meta_raw: bytes, files: dict[str, str]) -> BundleMeta:
        data = self._parse(version, META_FILE, meta_raw)
        names = data.get("names")
        if (
            data.get("version") != version
            or not isinstance(data.get("meta"), dict)
            or not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
        ):
            raise self._corrupt(version, META_FILE, "has unexpected content")
        return BundleMeta(
            version=version,
            created_at=str(data.get("created_at")),
            sha256=files[TENSORS_FILE],
            meta=data["meta"],
            names=tuple(names),
        )

    def _read_meta(self, version: int) -> BundleMeta:
        with self._version_reader(version) as read:
            files = self._read_manifest(version, read)
            return self._meta_from(version, self._checked(version, read, files, META_FILE), files)

    def _verify(self, version: int) -> None:
        with self._version_reader(version) as read:
            files = self._read_manifest(version, read)
            for name in files:
                self._checked(version, read, files, name)

    def _load_version(self, version: int) -> Bundle:
        """Load through the per-instance cache: a version is immutable, so it is read and
        hashed once; a corrupt one is remembered and its error re-raised without re-reading."""
        bad = self._bad.get(version)
        if bad is not None:
            raise bad
        cached = self._good.get(version)
        if cached is not None:
            self._good.move_to_end(version)
            return cached
        try:
            bundle = self._read_bundle(version)
        except IntegrityError as exc:
            self._bad[version] = exc
            raise
        if self.cache_size:
            self._good[version] = bundle
            while len(self._good) > self.cache_size:
                self._good.popitem(last=False)
        return bundle

    def _forget(self, version: int) -> None:
        self._good.pop(version, None)
        self._bad.pop(version, None)

    def _read_bundle(self, version: int) -> Bundle:
        with self._version_reader(version) as read:
            files = self._read_manifest(version, read)
            meta = self._meta_from(version, self._checked(version, read, files, META_FILE), files)
            payload = self._checked(version, read, files, TENSORS_FILE)
        try:
            flat = _st_load(payload)
        except Exception as exc:  # hash matched, so this is a writer bug or format change
            raise self._corrupt(version, TENSORS_FILE, f"cannot be decoded ({exc})") from exc
        tensors: dict[str, dict[str, torch.Tensor]] = {name: {} for name in meta.names}
        for key, tensor in flat.items():
            name, param = _split_key(key)
            if name not in tensors:
                raise self._corrupt(version, TENSORS_FILE, f"holds unlisted link {name!r}")
            tensors[name][param] = tensor
        return Bundle(version=version, tensors=tensors, meta=meta)


# ---------------------------------------------------------------------- helpers


def _remote_url(root: object) -> bool:
    """True for an fsspec URL other than file:// (those are stored by ObjectLinkStore)."""
    if not isinstance(root, str):
        return False
    scheme, sep, _ = root.partition("://")
    return bool(sep) and scheme != "file"


def _check_version_arg(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version numbers are ints >= 1, got {version!r}")


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"the {what} {path} is not valid JSON ({exc}); it is only ever replaced "
            "atomically, so it was edited or damaged by hand: restore or remove it"
        ) from None
    if not isinstance(data, dict):
        raise StoreError(f"the {what} {path} is not a JSON object; restore or remove it")
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
