"""Reading a stored version back: every file checked against its manifest before use.

Shared by the directory store (:class:`~mlink.linkstore.store.LinkStore`) and the object store
(:class:`~mlink.linkstore.objectstore.ObjectLinkStore`), which differ only in how they open a
version's files (``_version_reader``) and list versions (``_version_numbers``). A version is
immutable, so a verified one is cached and a corrupt one is remembered with its error.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as _st_load

from mlink.linkstore.store_files import _check_version_arg
from mlink.linkstore.store_format import (
    FORMAT,
    MANIFEST_FILE,
    META_FILE,
    TENSORS_FILE,
    IntegrityError,
    StoreError,
    _digest,
    _split_key,
)

__all__ = ["Bundle", "BundleMeta", "VersionReads"]


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


class VersionReads:
    """Verified reads of versions under ``root``; subclasses open files and list versions."""

    root: Any
    cache_size: int
    _good: OrderedDict[int, Bundle]
    _bad: dict[int, IntegrityError]

    def _version_reader(self, version: int) -> AbstractContextManager[Callable[[str], bytes]]:
        raise NotImplementedError

    def _version_numbers(self) -> list[int]:
        raise NotImplementedError

    def _has_version(self, version: int) -> bool:
        raise NotImplementedError

    def holds(self, version: int, sha256: str | None = None) -> bool:
        """Whether the store holds ``version`` now, asked of the store itself: a loaded version
        stays in memory after its files are gone, and a pipeline notices a store that was lost
        or replaced under it by asking this. With ``sha256`` (the digest of the weights a plan
        was made from), a version holding other weights under the same number (a store
        replaced by another pipeline's) is not held either; only its manifest is read.
        StoreError when the store cannot be read."""
        _check_version_arg(version)
        try:
            if sha256 is None:
                return bool(self._has_version(version))
            with self._version_reader(version) as read:
                return self._read_manifest(version, read)[TENSORS_FILE] == sha256
        except (IntegrityError, _MissingVersionError):
            return False
        except OSError as exc:
            raise StoreError(f"cannot read the link store {self.root}: {exc}") from exc

    def _missing(self, version: int) -> _MissingVersionError:
        available = self._version_numbers()
        return _MissingVersionError(
            f"version {version} does not exist in {self.root}; "
            f"available versions: {available if available else 'none (save one first)'}"
        )

    def intact(self, version: int, sha256: str | None = None) -> bool:
        """Whether the store holds ``version`` whole: present, and every file matching its
        manifest, read afresh rather than from the cache (a version damaged after it was loaded
        fails only for the processes that load it next), and with ``sha256``, the weights a
        plan was made from (:meth:`holds`). StoreError when the store cannot be read at all,
        or the version is of a newer format: neither says it is damaged."""
        _check_version_arg(version)
        try:
            files = self._verify(version)
        except (IntegrityError, _MissingVersionError):
            return False
        except OSError as exc:
            raise StoreError(f"cannot read the link store {self.root}: {exc}") from exc
        return sha256 is None or files[TENSORS_FILE] == sha256

    def _missing_file(self, version: int, name: str) -> IntegrityError:
        """A file of a version that exists is gone: the version is corrupt."""
        return IntegrityError(
            f"version {version} in {self.root} is missing {name}; the version is "
            f"corrupt: rollback()/promote(v) away from it and delete({version})"
        )

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

    def _verify(self, version: int) -> dict[str, str]:
        with self._version_reader(version) as read:
            files = self._read_manifest(version, read)
            for name in files:
                self._checked(version, read, files, name)
        return files

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
