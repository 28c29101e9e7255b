"""The bytes of a link-store version, whatever stores them: tensors flattened into one
safetensors file (link names escaped so they survive the round trip), metadata as strict JSON,
and the digests of the integrity manifest. Shared by the directory store and the object store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from safetensors.torch import save as _st_save

__all__ = ["IntegrityError", "StoreError"]

FORMAT = 1
"""On-disk format written by this code; newer formats are refused rather than misread."""

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"

_KEY_SEP = "/"
_ESCAPES = {"%": "%25", "/": "%2F"}
_UNESCAPES = {"25": "%", "2F": "/"}


class StoreError(Exception):
    """A store operation cannot be carried out; the message says what to do instead."""


class IntegrityError(StoreError):
    """Stored bytes do not match their manifest: the version is corrupt and must not be used."""


def _check_tensors(tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[str, ...]:
    if not isinstance(tensors, Mapping):
        raise StoreError(
            f"tensors must be a mapping name -> state dict, got {type(tensors).__name__}"
        )
    for name, state in tensors.items():
        if not isinstance(name, str) or not name:
            raise StoreError(f"link names must be non-empty strings, got {name!r}")
        if not isinstance(state, Mapping):
            raise StoreError(
                f"tensors[{name!r}] must be a state dict (param name -> tensor), "
                f"got {type(state).__name__}; pass module.state_dict()"
            )
        for param, tensor in state.items():
            if not isinstance(param, str):
                raise StoreError(f"tensors[{name!r}] has a non-string key {param!r}")
            if not isinstance(tensor, torch.Tensor):
                raise StoreError(
                    f"tensors[{name!r}][{param!r}] is a {type(tensor).__name__}, not a "
                    "torch.Tensor; only tensors are stored (put other values in meta)"
                )
            if tensor.layout != torch.strided:
                raise StoreError(
                    f"tensors[{name!r}][{param!r}] has layout {tensor.layout}; only dense "
                    "tensors are stored, convert with .to_dense()"
                )
    return tuple(tensors)


def _serialize(tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> bytes:
    # Cloning to fresh contiguous CPU storage drops aliasing (tied weights), which
    # safetensors refuses, and decouples the bytes from tensors the caller keeps training.
    flat = {
        _join_key(name, param): tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
        for name, state in tensors.items()
        for param, tensor in state.items()
    }
    try:
        return _st_save(flat)
    except Exception as exc:
        raise StoreError(f"safetensors cannot serialise these tensors: {exc}") from exc


def _escape(part: str) -> str:
    return re.sub(r"[%/]", lambda m: _ESCAPES[m.group(0)], part)


def _unescape(part: str) -> str:
    return re.sub(r"%(25|2F)", lambda m: _UNESCAPES[m.group(1)], part)


def _join_key(name: str, param: str) -> str:
    """Flatten with "/" as separator; "%" and "/" inside names are %-escaped so link
    names such as "link/face->person" survive the round trip."""
    return f"{_escape(name)}{_KEY_SEP}{_escape(param)}"


def _split_key(key: str) -> tuple[str, str]:
    name, sep, param = key.partition(_KEY_SEP)
    if not sep:
        raise StoreError(f"tensor key {key!r} lacks the {_KEY_SEP!r} separator")
    return _unescape(name), _unescape(param)


def _to_json(value: Any, path: str) -> Any:
    """Return a plain-JSON copy (tuples become lists, mappings dicts), or reject what JSON
    cannot round-trip, naming the offending key so it can be fixed."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(
                f"{path} is {value}, which JSON cannot represent; store None or a string"
            )
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreError(f"{path} has non-string key {key!r}; JSON keys must be str")
            out[key] = _to_json(item, f"{path}[{key!r}]")
        return out
    raise StoreError(
        f"{path} is a {type(value).__name__}, which is not JSON-serialisable; convert it "
        "first (e.g. float(x), x.item(), x.tolist(), str(x))"
    )


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, allow_nan=False).encode("utf-8")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Payload:
    """A bundle checked and serialized before any store is touched (and before a writer
    takes a lock or a version number): bad input fails with nothing to clean up."""

    names: tuple[str, ...]
    meta: Any
    tensors: bytes

    def files(self, version: int) -> dict[str, bytes]:
        """The three files of ``version``, in the order they must be written: the manifest
        last, since a version counts as complete once its manifest exists."""
        meta = _json_bytes(
            {
                "format": FORMAT,
                "version": version,
                "created_at": datetime.now(UTC).isoformat(),
                "names": list(self.names),
                "meta": self.meta,
            }
        )
        manifest = _json_bytes(
            {
                "format": FORMAT,
                "version": version,
                "files": {TENSORS_FILE: _digest(self.tensors), META_FILE: _digest(meta)},
            }
        )
        return {TENSORS_FILE: self.tensors, META_FILE: meta, MANIFEST_FILE: manifest}


def _payload(
    tensors: Mapping[str, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]
) -> _Payload:
    names = _check_tensors(tensors)
    if not isinstance(meta, Mapping):
        raise StoreError(
            f"meta must be a JSON object (a dict with str keys), got {type(meta).__name__}"
        )
    return _Payload(names, _to_json(meta, "meta"), _serialize(tensors))
