"""The output cache's files: one ``.npz`` per (model key, frames digest).

Written atomically (temp file + fsync + ``os.replace``) and read with ``allow_pickle=False``: a
crash never leaves a half-written entry and a cache file cannot execute code. An entry that does
not match what is asked for (format, model key, spec, frames) or cannot be read is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlink.topics.specs import OutputSpec

__all__ = ["FORMAT", "CacheEntry", "entry_path", "read_entry", "write_entry"]

FORMAT = "mlink-outputs-v1"


def entry_path(cache_dir: Path, name: str, key: str, spec: OutputSpec, digest: str) -> Path:
    """Where one model's outputs on one frame source live: named by model, keyed by everything
    that decides them."""
    ident = hashlib.sha256(
        json.dumps([FORMAT, key, spec.to_dict(), digest], sort_keys=True).encode()
    ).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return cache_dir / "outputs" / digest[:16] / f"{slug}-{ident[:16]}.npz"


def _atomic_write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``path`` so that it either appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared like any build output
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _pack(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ndims = {o.ndim for o in outputs}
    if len(ndims) > 1:
        raise ValueError(f"outputs of one model have different ranks {sorted(ndims)}")
    shapes = np.array([o.shape for o in outputs], dtype=np.int64).reshape(len(outputs), -1)
    values = (
        np.concatenate([o.reshape(-1) for o in outputs])
        if outputs
        else np.zeros(0, dtype=np.float32)
    )
    return values, shapes


def _unpack(values: np.ndarray, shapes: np.ndarray) -> list[np.ndarray]:
    sizes = np.prod(shapes, axis=1, dtype=np.int64) if shapes.shape[1] else np.ones(len(shapes))
    ends = np.cumsum(sizes).astype(np.int64)
    starts = ends - sizes.astype(np.int64)
    return [
        values[s:e].reshape(tuple(int(d) for d in shape)).copy()
        for s, e, shape in zip(starts, ends, shapes, strict=True)
    ]


@dataclass(slots=True)
class CacheEntry:
    """One model's cached outputs on one frame source; ``measured_at`` is a Unix time."""

    outputs: list[np.ndarray]
    times_ms: np.ndarray
    memory_mb: float
    measured_at: float


def write_entry(path: Path, key: str, spec: OutputSpec, digest: str, entry: CacheEntry) -> None:
    values, shapes = _pack(entry.outputs)
    _atomic_write_npz(
        path,
        {
            "format": np.array(FORMAT),
            "model_key": np.array(key),
            "spec": np.array(json.dumps(spec.to_dict(), sort_keys=True)),
            "frames_digest": np.array(digest),
            "values": values,
            "shapes": shapes,
            "times_ms": np.asarray(entry.times_ms, dtype=np.float64),
            "memory_mb": np.array(float(entry.memory_mb)),
            "measured_at": np.array(float(entry.measured_at)),
        },
    )


def read_entry(path: Path, key: str, spec: OutputSpec, digest: str) -> CacheEntry | None:
    """The cached entry, or ``None`` when absent, unreadable or not for this key and frames."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            same = (
                str(data["format"]) == FORMAT
                and str(data["model_key"]) == key
                and str(data["frames_digest"]) == digest
                and str(data["spec"]) == json.dumps(spec.to_dict(), sort_keys=True)
            )
            if not same:
                return None
            return CacheEntry(
                _unpack(data["values"], data["shapes"]),
                np.array(data["times_ms"], dtype=np.float64),
                float(data["memory_mb"]),
                # entries written before this field existed: the file's time is when it was made
                float(data["measured_at"]) if "measured_at" in data else path.stat().st_mtime,
            )
    except Exception as exc:  # a damaged file must not stop a run: recompute and overwrite it
        warnings.warn(f"output cache {path} is unreadable ({exc}); recomputing it", stacklevel=3)
        return None
