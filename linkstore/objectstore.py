"""The link store on an object store (any fsspec URL: ``s3://bucket/prefix``, ``memory://x``).

Workers on several machines reach link versions without a shared directory. The API, the
version format and the integrity checks are those of :class:`mlink.linkstore.store.LinkStore`
(``LinkStore("s3://...")`` returns this class); only the way bytes are written differs, because
object stores have atomic single-object PUTs but neither rename nor locks.

Layout under the URL::

    claims/v000007.json      created with If-None-Match: * (exclusive): version 7 is taken
    v000007/tensors.safetensors
    v000007/meta.json
    v000007/MANIFEST.json    written last: a version exists exactly when its manifest does
    CURRENT.json             {"current": 7, "history": [...], "promoted_at": ...}, one PUT

Invariants, and how they are kept without rename:

- *A version is complete or invisible.* Its files are written first and its manifest last;
  readers list and load only versions with a manifest, and check every file's sha256 against
  it. A writer that dies half-way leaves a claim and some files without a manifest: invisible,
  and its number is never handed out again (``prune`` deletes claims and such files below the
  oldest version it leaves, never the newest claim).
- *Version numbers are unique.* A writer claims ``max(claimed) + 1`` with an exclusive create
  (S3 ``If-None-Match: *``, which s3fs issues for ``mode="create"`` and which S3, MinIO and moto
  honour); on a collision it takes the next number. Where a backend cannot create exclusively
  (fsspec's fallback is check-then-write), the rule is one writer per store, which the pipeline
  keeps: only the trainer saves, and it runs where the single-partition samples topic is
  consumed.
- *The pointer moves only to a complete, verified version*: ``promote`` verifies the bytes,
  then replaces ``CURRENT.json`` with one PUT. Concurrent promotions are last-writer-wins (the
  same single-writer rule), never a torn pointer.
- *Deletion hides first*: the manifest goes first, then the other files.

Readers poll ``current_token()`` (one small GET) and load a version once: loads go through the
same per-instance cache as the local store.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import torch

from mlink.linkstore.store import (
    _VERSION_DIR,
    MANIFEST_FILE,
    META_FILE,
    TENSORS_FILE,
    IntegrityError,
    LinkStore,
    StoreError,
    _json_bytes,
)
from mlink.linkstore.store_files import _check_after, _json_object
from mlink.linkstore.store_format import _payload

__all__ = ["ObjectLinkStore"]

CLAIMS_DIR = "claims"
_MAX_CLAIM_ATTEMPTS = 64


class ObjectLinkStore(LinkStore):
    """A :class:`LinkStore` on an fsspec URL; see the module docstring for the guarantees.

    ``storage_options`` go to the fsspec filesystem (for s3fs e.g. ``endpoint_url``, ``key``,
    ``secret``); without them s3fs reads the usual ``AWS_*`` environment variables, including
    ``AWS_ENDPOINT_URL`` for an S3-compatible server.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lock_timeout: float | None = None,
        cache_size: int = 4,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        import fsspec

        url = str(root).rstrip("/")
        try:
            fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise StoreError(
                f"cannot open the link store {url}: {exc}. For s3:// install the s3 extra "
                "(pip install 'mlink-stream[s3]')"
            ) from exc
        self.fs = fs
        self._path = path.rstrip("/")
        self.root = url
        self.lock_timeout = lock_timeout  # unused: there are no locks (see the module docs)
        self.cache_size = cache_size
        self._good = OrderedDict()
        self._bad: dict[int, IntegrityError] = {}
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if protocols & {"memory", "file", "local"}:  # these list only existing directories;
            fs.makedirs(self._path, exist_ok=True)  # never create buckets implicitly

    def __repr__(self) -> str:
        return f"LinkStore({self.root!r})"

    def writable_problem(self) -> str | None:
        """Why the trainer could not save a version here, or None. It puts a small probe
        object and deletes it (saves put, pruning deletes): without it a missing bucket or
        read-only credentials showed only at the first save, after the whole warm-up."""
        probe = f"{self._path}/.mlink-probe-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, b"mlink write probe")
        except Exception as exc:  # s3fs, gcsfs, adlfs each raise their own kinds
            return (
                f"link store {self.root} is not writable ({type(exc).__name__}: {exc}); the "
                "trainer saves there: check that the bucket exists and that the workers' "
                "credentials may put objects under it"
            )
        try:
            self.fs.rm_file(probe)
        except Exception as exc:
            return (
                f"link store {self.root} lets the workers put objects but not delete them "
                f"({type(exc).__name__}: {exc}); the trainer deletes old versions there. "
                f"A probe object was left at {probe}"
            )
        return None

    # ------------------------------------------------------------------ writer

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        meta: Mapping[str, Any],
        *,
        promote: bool = True,
        after: int = 0,
    ) -> int:
        """Store a new version (files, then manifest) and return its number, above ``after``;
        see :meth:`LinkStore.save`."""
        payload = _payload(tensors, meta)
        version = self._claim(after)
        files = payload.files(version)
        try:
            self.fs.pipe_file(self._file(version, TENSORS_FILE), files[TENSORS_FILE])
            self.fs.pipe_file(self._file(version, META_FILE), files[META_FILE])
            self._create(self._file(version, MANIFEST_FILE), files[MANIFEST_FILE])
        except FileExistsError as exc:
            raise StoreError(
                f"version {version} of {self.root} was completed by another writer although "
                "this one claimed it; two stores with different claim prefixes share it? "
                "Keep one writer per store"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot write version {version} to {self.root}: {exc}") from exc
        if promote:
            self._promote_locked(version, verify=False)
        return version

    def prune(self, keep: int, protect: Collection[int] = ()) -> list[int]:
        """:meth:`LinkStore.prune`, then the claims and the files of half-written versions
        below the oldest version left go too: a pipeline that retrains would otherwise list
        ever more of them on every save. Numbers come from the newest claim, which stays."""
        doomed = super().prune(keep, protect)
        floor = min(self._version_numbers(), default=0)
        claims = sorted(self._claimed_numbers())
        for n in claims[:-1]:
            if n < floor:
                self.fs.rm_file(f"{self._path}/{CLAIMS_DIR}/v{n:06d}.json")
        for path in self._glob("v*/*"):
            match = _VERSION_DIR.match(path.rstrip("/").split("/")[-2])
            if match and int(match.group(1)) < floor:  # no manifest: listed versions are >=
                self.fs.rm_file(path)
        return doomed

    def _claim(self, after: int = 0) -> int:
        """Take the next version number with an exclusive create; skip numbers taken."""
        self._refresh()
        numbers = [_check_after(after), *self._claimed_numbers(), *self._version_numbers()]
        version = max(numbers, default=0) + 1
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            try:
                self._create(f"{self._path}/{CLAIMS_DIR}/v{version:06d}.json", _json_bytes(owner))
                return version
            except FileExistsError:
                version += 1  # someone else took it: collision detected, try the next one
            except OSError as exc:
                raise StoreError(f"cannot write to the link store {self.root}: {exc}") from exc
        raise StoreError(
            f"could not claim a version number in {self.root} after {_MAX_CLAIM_ATTEMPTS} "
            "collisions; too many concurrent writers (keep one writer per store)"
        )

    def _create(self, path: str, data: bytes) -> None:
        """Write ``path`` only if it does not exist (FileExistsError otherwise)."""
        self.fs.pipe_file(path, data, mode="create")

    # ------------------------------------------------------------------ backend hooks

    def _refresh(self) -> None:
        self.fs.invalidate_cache(self._path)  # s3fs caches listings; we need the truth

    def _file(self, version: int, name: str) -> str:
        return f"{self._path}/v{version:06d}/{name}"

    def _glob(self, pattern: str) -> list[str]:
        try:
            return list(self.fs.glob(f"{self._path}/{pattern}"))
        except FileNotFoundError as exc:  # s3fs: the bucket itself is missing
            raise StoreError(
                f"cannot list the link store {self.root}: {exc}. Create the bucket first (the "
                "store never creates buckets), or fix the URL"
            ) from None

    def _version_numbers(self) -> list[int]:
        self._refresh()
        numbers = []
        for path in self._glob(f"v*/{MANIFEST_FILE}"):
            match = _VERSION_DIR.match(path.rstrip("/").split("/")[-2])
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _claimed_numbers(self) -> list[int]:
        numbers = []
        for path in self._glob(f"{CLAIMS_DIR}/v*.json"):
            match = _VERSION_DIR.match(path.rsplit("/", 1)[-1].removesuffix(".json"))
            if match:
                numbers.append(int(match.group(1)))
        return numbers

    def _has_version(self, version: int) -> bool:
        self._refresh()
        return bool(self.fs.exists(self._file(version, MANIFEST_FILE)))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        yield  # no locks on object stores: one writer per store (module docstring)

    def _read_small_json(self, name: str, *, what: str) -> dict[str, Any]:
        return _json_object(
            self.fs.cat_file(f"{self._path}/{name}"), f"the {what} {self.root}/{name}"
        )

    def _write_json_atomic(self, name: str, obj: Any) -> None:
        self.fs.pipe_file(f"{self._path}/{name}", _json_bytes(obj))  # one PUT: atomic

    def _retire(self, version: int) -> Callable[[], None]:
        self.fs.rm_file(self._file(version, MANIFEST_FILE))  # invisible from here on

        def free() -> None:
            for name in (TENSORS_FILE, META_FILE):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._file(version, name))

        return free

    @contextlib.contextmanager
    def _version_reader(self, version: int) -> Iterator[Callable[[str], bytes]]:
        def read(name: str) -> bytes:
            try:
                return self.fs.cat_file(self._file(version, name))
            except FileNotFoundError:
                if not self._has_version(version):
                    raise self._missing(version) from None
                raise self._missing_file(version, name) from None

        yield read
