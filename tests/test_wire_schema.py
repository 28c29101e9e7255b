"""docs/wire-schema.json and docs/wire-format.md against the record classes they describe.

The schema is generated from the records, so these tests prove three things: the committed file
is what the generator writes today (no drift), every record this codebase can encode is valid
under it (with unknown properties forbidden, so no field escapes it), and the prose document has a
section naming every field of every record type.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings

from mlink.topics.codec import ARRAY_EXT_CODE, decode, encode, encode_record
from mlink.topics.records import RECORD_TYPES, WireRecord
from mlink.topics.schema import SCHEMA_PATH, json_view, main, render_schema, wire_schema
from tests.test_codec import sample_records
from tests.test_records import any_record

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA = wire_schema()


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown properties forbidden on every record: what we write must be
    fully described, even though readers tolerate more."""
    out = copy.deepcopy(schema)
    for definition in out["$defs"].values():
        if "additionalProperties" in definition:
            definition["additionalProperties"] = False
    return out


STRICT = jsonschema.Draft202012Validator(strict(SCHEMA))
TOLERANT = jsonschema.Draft202012Validator(SCHEMA)


def wire_json(record: WireRecord) -> Any:
    """What a reader in another language sees: raw msgpack, extension types left undecoded."""
    raw = msgpack.unpackb(encode_record(record), raw=False, ext_hook=msgpack.ExtType)
    return json_view(raw)


def test_committed_schema_is_what_the_generator_writes() -> None:
    assert SCHEMA_PATH == DOCS / "wire-schema.json"
    assert SCHEMA_PATH.read_text() == render_schema(), (
        "docs/wire-schema.json is stale: run 'python -m mlink.topics.schema' and commit it"
    )


def test_the_schema_is_valid_json_schema_with_one_definition_per_record_type() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA["$defs"]) == {*RECORD_TYPES, "ndarray"}
    for tag, cls in RECORD_TYPES.items():
        definition = SCHEMA["$defs"][tag]
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        assert list(definition["properties"]) == ["v", "type", *names]
        required = {
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        assert set(definition["required"]) == {"v", "type", *required}
        assert definition["properties"]["type"] == {"const": tag, "description": "record type tag"}
    assert SCHEMA["$defs"]["ndarray"]["x-msgpack-ext"] == ARRAY_EXT_CODE


def test_check_mode_flags_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    assert main([str(path)]) == 0
    assert main(["--check", str(path)]) == 0
    path.write_text(path.read_text().replace('"integer"', '"string"', 1))
    assert main(["--check", str(path)]) == 1


@pytest.mark.parametrize("record", sample_records(), ids=lambda r: r.TYPE)
def test_sample_records_on_the_wire_match_the_schema(record: WireRecord) -> None:
    STRICT.validate(wire_json(record))
    one_definition = jsonschema.Draft202012Validator(
        {**strict(SCHEMA), "$ref": f"#/$defs/{record.TYPE}"}
    )
    one_definition.validate(wire_json(record))


@settings(max_examples=150, deadline=None)
@given(any_record)
def test_every_encodable_record_matches_the_schema(record: WireRecord) -> None:
    STRICT.validate(wire_json(record))


def test_the_array_view_is_dtype_shape_and_raw_bytes() -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)[:, ::2]  # a strided big-endian view
    packed = encode(array)
    view = json_view(msgpack.unpackb(packed, raw=False, ext_hook=msgpack.ExtType))
    assert view == {
        "dtype": ">i4",
        "shape": [2, 2],
        "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(),
    }
    assert json_view(decode(packed)) == view  # a decoded array and the raw extension read alike


def test_wrong_types_and_unknown_tags_are_invalid() -> None:
    good = wire_json(sample_records()[0])
    TOLERANT.validate({**good, "camera": {"model": "x"}})  # readers tolerate extra fields
    for bad in (
        {**good, "seq": "9"},
        {**good, "encoding": "gif"},
        {**good, "v": 2},
        {**good, "type": "frames"},
        {k: v for k, v in good.items() if k != "frame_id"},
        {**good, "plan": {**good["plan"], "active": "detector"}},
    ):
        assert not TOLERANT.is_valid(bad), bad


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^### ", text, flags=re.M)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def test_wire_format_doc_has_a_section_naming_every_field_of_every_record() -> None:
    sections = _sections((DOCS / "wire-format.md").read_text())
    for tag, cls in RECORD_TYPES.items():
        title = f"{cls.__name__} (`{tag}`)"
        assert title in sections, f"docs/wire-format.md needs a '### {title}' section"
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            assert f"| `{f.name}` |" in sections[title], (
                f"docs/wire-format.md: section {title} does not describe field {f.name!r}"
            )
