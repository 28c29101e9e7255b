"""A JSON Schema of every wire record, generated from the record classes.

The record dataclasses in :mod:`mlink.topics.records` are the contract; this module walks their
fields and type hints and writes the same contract as JSON Schema (draft 2020-12) for readers
in other languages, so ``docs/wire-schema.json`` is never edited by hand and a test regenerates
it to prove it has not drifted. Rewrite it after changing a record::

    python -m mlink.topics.schema            # rewrites docs/wire-schema.json
    python -m mlink.topics.schema --check    # exit 1 if the file is stale

The schema describes the *JSON view* of a decoded msgpack record (:func:`json_view`), because
JSON has neither msgpack's bin type nor its extension types:

- msgpack ``bin`` (image bytes, dead-lettered keys and values) becomes a base64 string, marked
  ``"contentEncoding": "base64"`` and ``"x-msgpack": "bin"``;
- a numpy array (msgpack extension type :data:`~mlink.topics.codec.ARRAY_EXT_CODE`, payload
  msgpack ``[dtype.str, shape, raw C-order bytes]``) becomes
  ``{"dtype": "<f4", "shape": [2], "data": "<base64>"}``, described once as ``$defs/ndarray``.

The schema states types, optionality and defaults. Value rules that type hints cannot express
(non-empty ids, sorted model names, ``agreement`` in [0, 1]) are in ``docs/wire-format.md``
and enforced by the record classes. Records allow unknown properties: the compatibility rule
(docs/wire-format.md) is that a reader ignores fields it does not know within a schema version.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import json
import sys
import types
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import msgpack
import numpy as np

from mlink.topics.codec import ARRAY_EXT_CODE
from mlink.topics.records import RECORD_TYPES, SCHEMA_VERSION, WireRecord

__all__ = [
    "SCHEMA_PATH",
    "json_view",
    "main",
    "record_schema",
    "render_schema",
    "wire_schema",
]

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "wire-schema.json"
"""Where the schema lives in a source checkout (``docs/wire-schema.json``)."""

_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
_NDARRAY_REF: Final = {"$ref": "#/$defs/ndarray"}
_BIN: Final = {"type": "string", "contentEncoding": "base64", "x-msgpack": "bin"}
_SCALARS: Final[dict[Any, dict[str, Any]]] = {
    str: {"type": "string"},
    int: {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    bytes: _BIN,
    Any: {},
}

_NDARRAY: Final = {
    "description": (
        f"A numpy array: msgpack extension type {ARRAY_EXT_CODE} whose payload is the msgpack "
        "array [dtype, shape, data]. dtype is numpy's dtype.str (byte order, kind, item size: "
        "'<f4' = little-endian float32, '<i8' = int64, '|u1' = uint8, '|b1' = bool); shape "
        "lists the dimensions ([] for a 0-d array); data holds the raw elements in C (row-major) "
        "order, exactly prod(shape) * itemsize bytes. Shown here in its JSON view."
    ),
    "type": "object",
    "x-msgpack-ext": ARRAY_EXT_CODE,
    "properties": {
        "dtype": {"type": "string", "pattern": r"^[<>|=][a-zA-Z][0-9]+(\[[0-9a-zA-Z]+\])?$"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": _BIN,
    },
    "required": ["dtype", "shape", "data"],
    "additionalProperties": False,
}


def _def_name(cls: type[WireRecord]) -> str:
    return cls.TYPE


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    """JSON Schema of one type hint; an unknown hint is an error so a new field type forces
    this generator to learn it instead of being described wrongly."""
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    if hint is np.ndarray:
        return dict(_NDARRAY_REF)
    if isinstance(hint, type) and issubclass(hint, WireRecord):
        return {"$ref": f"#/$defs/{_def_name(hint)}"}
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if not all(isinstance(a, str) for a in args):
            raise TypeError(f"{where}: only Literal of str is supported, got {hint!r}")
        return {"type": "string", "enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        out = _type_schema(options[0], where) if len(options) == 1 else None
        if out is None:
            out = {"anyOf": [_type_schema(a, where) for a in options]}
        if len(options) < len(args):
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _type_schema(args[0], where)}
    if origin is dict and len(args) == 2 and args[0] is str:
        values = _type_schema(args[1], where)
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    raise TypeError(
        f"{where}: no JSON Schema mapping for type hint {hint!r}; teach "
        "mlink.topics.schema._type_schema this type"
    )


def _default(value: Any) -> Any:
    """A field default as JSON (tuples become arrays)."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _description(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def record_schema(cls: type[WireRecord]) -> dict[str, Any]:
    """The JSON Schema of one record class: its tag, fields, types, defaults and required set."""
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {
        "v": {"const": SCHEMA_VERSION, "description": "schema version"},
        "type": {"const": cls.TYPE, "description": "record type tag"},
    }
    required = ["v", "type"]
    for f in fields(cls):  # type: ignore[arg-type]
        prop = _type_schema(hints[f.name], f"{cls.__name__}.{f.name}")
        if f.default is not MISSING:
            prop["default"] = _default(f.default)
        elif f.default_factory is not MISSING:
            prop["default"] = _default(f.default_factory())
        else:
            required.append(f.name)
        properties[f.name] = prop
    return {
        "title": cls.__name__,
        "description": _description(cls),
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": True,
    }


def wire_schema() -> dict[str, Any]:
    """The schema of every record type, one ``$defs`` entry per type tag."""
    defs: dict[str, Any] = {_def_name(cls): record_schema(cls) for cls in RECORD_TYPES.values()}
    defs["ndarray"] = _NDARRAY
    return {
        "$schema": _DRAFT,
        "title": f"MLink-stream wire records, schema version {SCHEMA_VERSION}",
        "description": (
            "Every Kafka value the pipeline writes is one msgpack map (a record) tagged with "
            "'v' (schema version) and 'type' (record type). This schema describes the JSON "
            "view of a decoded record: msgpack bin as base64 strings, numpy arrays (msgpack "
            f"ext type {ARRAY_EXT_CODE}) as $defs/ndarray. Generated by "
            "'python -m mlink.topics.schema' from mlink/topics/records.py; see "
            "docs/wire-format.md."
        ),
        "oneOf": [{"$ref": f"#/$defs/{_def_name(cls)}"} for cls in RECORD_TYPES.values()],
        "$defs": defs,
    }


def render_schema() -> str:
    """The schema as the exact text of ``docs/wire-schema.json``."""
    return json.dumps(wire_schema(), indent=2, ensure_ascii=True) + "\n"


def json_view(value: Any) -> Any:
    """A decoded msgpack value (bytes as ``bytes``, extension types as ``msgpack.ExtType``)
    turned into the JSON view the schema describes.

    Decode raw Kafka values for it with
    ``msgpack.unpackb(value, raw=False, ext_hook=msgpack.ExtType)``; the output of
    :func:`~mlink.topics.codec.decode` works too (its arrays become the same objects).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, msgpack.ExtType):
        if value.code != ARRAY_EXT_CODE:
            raise ValueError(f"unknown msgpack extension type {value.code}")
        dtype, shape, data = msgpack.unpackb(value.data, raw=False)
        return {"dtype": dtype, "shape": shape, "data": json_view(data)}
    if isinstance(value, np.ndarray):
        return {
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            "data": json_view(value.tobytes()),
        }
    if isinstance(value, dict):
        return {key: json_view(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_view(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m mlink.topics.schema [--check] [PATH]``: rewrite (or check) the schema file."""
    parser = argparse.ArgumentParser(
        prog="python -m mlink.topics.schema",
        description="Generate the JSON Schema of the MLink-stream wire records.",
    )
    parser.add_argument(
        "path", nargs="?", type=Path, default=SCHEMA_PATH, help="output file ('-' = stdout)"
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if the file differs"
    )
    args = parser.parse_args(argv)
    text = render_schema()
    if str(args.path) == "-":
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.path.read_text() if args.path.is_file() else None
        if current != text:
            print(
                f"{args.path} is stale: run 'python -m mlink.topics.schema' and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
