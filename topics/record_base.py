"""The base of every wire record: the field checks records run on construction and on
decode, the errors they raise, dict conversion and the schema-version check.

:mod:`mlink.topics.records` declares the records themselves with these pieces.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any, ClassVar, Final, NoReturn, Self

import numpy as np

from mlink.topics.ids import MAX_ID_CHARS, clip_text, id_problem

__all__ = ["SCHEMA_VERSION", "DecodeError", "RecordError", "WireRecord", "wire_type"]

SCHEMA_VERSION: Final = 1
"""Wire schema version written as ``"v"``; a breaking change to any record bumps it."""

# msgpack integers are at most 64 bits; checking here names the field that overflows.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Deep enough for any sane control payload, shallow enough to never hit Python's recursion limit.
_MAX_JSON_DEPTH: Final = 32

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


class DecodeError(ValueError):
    """Bytes or a wire dict could not be turned back into a value.

    One type for every decode failure, so a consumer can route anything it cannot read
    to the dead-letter topic with a single ``except DecodeError``.
    """


class RecordError(DecodeError):
    """A record's contents break the wire contract.

    Raised when a record is built with bad values and when a wire dict fails validation.
    It subclasses :class:`DecodeError` because ``from_dict`` is the last step of decoding,
    and a consumer must not need two ``except`` clauses to catch bad input.
    """


def _show(value: Any) -> str:
    return f"{type(value).__name__} {_short.repr(value)}"


def _same(a: Any, b: Any) -> bool:
    """Compare as the wire would: arrays by dtype, shape and bytes; NaN equals NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype.str == b.dtype.str
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, tuple | list):
        return (
            type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


class _Fields:
    """Validates and normalizes one record's fields from its ``__post_init__``.

    Normalizing (lists to tuples, ints to floats, bytes-likes to bytes) lives here so a
    record decoded from the wire has exactly the field types its constructor promises.
    """

    __slots__ = ("_name", "_record")

    def __init__(self, record: WireRecord) -> None:
        self._record = record
        self._name = type(record).__name__

    def _get(self, name: str) -> Any:
        return getattr(self._record, name)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self._record, name, value)

    def invalid(self, name: str, message: str) -> NoReturn:
        raise RecordError(f"{self._name}.{name}: {message}")

    def expected(self, name: str, what: str, value: Any, hint: str = "") -> NoReturn:
        self.invalid(name, f"expected {what}, got {_show(value)}{hint}")

    def ident(self, name: str, max_chars: int = MAX_ID_CHARS) -> None:
        """An id (stream, frame, model): bounded and printable, see :mod:`mlink.topics.ids`."""
        value = self._get(name)
        problem = id_problem(value, max_chars)
        if problem:
            self.invalid(name, f"{problem}; got {_show(value)}")

    def free_text(self, name: str, *, optional: bool = False) -> None:
        """Text that may span lines (a reason, an error), clipped to a bounded length."""
        value = self._get(name)
        if value is None and optional:
            return
        if not isinstance(value, str) or (not optional and not value):
            self.expected(name, "a str or None" if optional else "a non-empty str", value)
        self._set(name, clip_text(value))

    def choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = self._get(name)
        if not isinstance(value, str) or value not in choices:
            self.expected(name, f"one of {', '.join(map(repr, choices))}", value)

    def integer(
        self,
        name: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        optional: bool = False,
    ) -> None:
        value = self._get(name)
        if value is None and optional:
            return
        what = "an int or None" if optional else "an int"
        if type(value) is not int:
            if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
                # int subclasses (IntEnum) and numpy ints: accept the value, store a plain int.
                self._set(name, int(value))
                value = int(value)
            else:
                self.expected(name, what, value)
        if not _INT_MIN <= value <= _INT_MAX:
            self.expected(name, "an int that fits in 64 bits", value)
        if minimum is not None and value < minimum:
            self.expected(name, f"an int >= {minimum}", value)
        if maximum is not None and value > maximum:
            self.expected(name, f"an int <= {maximum}", value)

    def number(self, name: str) -> None:
        value = self._get(name)
        if type(value) is float:
            return
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            self.expected(name, "a float (or int)", value)
        self._set(name, float(value))

    def boolean(self, name: str) -> None:
        value = self._get(name)
        if isinstance(value, np.bool_):
            self._set(name, bool(value))
        elif not isinstance(value, bool):
            self.expected(name, "a bool", value)

    def blob(self, name: str, *, optional: bool = False) -> None:
        value = self._get(name)
        if type(value) is bytes or (value is None and optional):
            return
        if isinstance(value, bytes | bytearray | memoryview):
            self._set(name, bytes(value))
        else:
            self.expected(name, "bytes or None" if optional else "bytes", value)

    def names(self, name: str, *, sorted_unique: bool = False) -> None:
        value = self._get(name)
        if not isinstance(value, tuple | list):
            self.expected(name, "a tuple of names", value)
        for i, item in enumerate(value):
            problem = id_problem(item)
            if problem:
                self.invalid(f"{name}[{i}]", f"{problem}; got {_show(item)}")
        value = tuple(value)
        if len(set(value)) != len(value):
            self.invalid(name, f"names must be unique, got {value!r}")
        if sorted_unique and list(value) != sorted(value):
            self.invalid(
                name, f"names must be sorted, got {value!r}; build it with tuple(sorted(names))"
            )
        self._set(name, value)

    def shape(self, name: str) -> None:
        value = self._get(name)
        if value is None:
            return
        if not isinstance(value, tuple | list) or not all(
            type(dim) is int and dim >= 0 for dim in value
        ):
            self.expected(name, "None or a tuple of non-negative ints like (H, W, C)", value)
        self._set(name, tuple(value))

    def array(self, name: str) -> None:
        value = self._get(name)
        if not isinstance(value, np.ndarray):
            self.expected(name, "a numpy ndarray", value, "; wrap scalars with np.asarray(x)")
        if value.dtype.hasobject or value.dtype.fields is not None:
            self.invalid(
                name,
                f"dtype {value.dtype} cannot travel on the wire; "
                "use a plain numeric, bool or string dtype",
            )

    def instance(self, name: str, cls: type, *, optional: bool = False) -> None:
        value = self._get(name)
        if not (isinstance(value, cls) or (value is None and optional)):
            self.expected(name, f"a {cls.__name__}" + (" or None" if optional else ""), value)

    def instances(self, name: str, cls: type) -> None:
        value = self._get(name)
        if not isinstance(value, tuple | list) or not all(isinstance(v, cls) for v in value):
            self.expected(name, f"a tuple of {cls.__name__}", value)
        self._set(name, tuple(value))

    def float_map(self, name: str) -> None:
        value = self._get(name)
        if not isinstance(value, dict):
            self.expected(name, "a dict of str to float", value)
        out: dict[str, float] = {}
        for key, item in value.items():
            if not isinstance(key, str) or isinstance(item, bool | np.bool_):
                self.expected(name, "a dict of str to float", value)
            if not isinstance(item, int | float | np.integer | np.floating):
                self.expected(name, "a dict of str to float", value)
            out[key] = float(item)
        self._set(name, out)

    def json_map(self, name: str) -> None:
        value = self._get(name)
        if not isinstance(value, dict):
            self.expected(name, "a JSON-like dict with str keys", value)
        self._set(name, self._json(name, value, name, 0))

    def _json(self, name: str, value: Any, path: str, depth: int) -> Any:
        """Return a deep copy with tuples as lists, so the record owns what it holds."""
        if depth > _MAX_JSON_DEPTH:
            self.invalid(name, f"nested deeper than {_MAX_JSON_DEPTH} levels at {path}")
        if value is None or isinstance(value, bool | str | float):
            return value
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                self.invalid(name, f"int at {path} does not fit in 64 bits: {value}")
            return value
        if isinstance(value, list | tuple):
            return [self._json(name, v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    self.invalid(name, f"keys must be str, got {_show(key)} at {path}")
                out[key] = self._json(name, item, f"{path}[{key!r}]", depth + 1)
            return out
        self.invalid(
            name,
            f"expected JSON-like values (None, bool, int, float, str, list, dict) "
            f"but {path} is {_show(value)}",
        )


class WireRecord:
    """Base of every record: dict conversion, version check and bitwise equality.

    Subclasses are dataclasses declaring ``TYPE``, the tag that lets a reader tell which
    record a message holds without knowing its topic.
    """

    __slots__ = ()
    TYPE: ClassVar[str]
    _FIELDS: ClassVar[tuple[str, ...]]
    _REQUIRED: ClassVar[frozenset[str]]

    def to_dict(self) -> dict[str, Any]:
        """A plain msgpack-able dict; arrays stay ``np.ndarray`` for the codec to pack."""
        out: dict[str, Any] = {"v": SCHEMA_VERSION, "type": self.TYPE}
        for name in self._FIELDS:
            value = getattr(self, name)
            if isinstance(value, WireRecord):
                value = value.to_dict()
            elif isinstance(value, tuple) and value and isinstance(value[0], WireRecord):
                value = [item.to_dict() for item in value]
            elif isinstance(value, dict):
                value = dict(value)
            out[name] = value
        return out

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """Build a record from values this process already validated, skipping the checks.

        For hot paths that assemble records from parts that passed the same checks moments
        before (the link operator builds a result per frame from validated outputs). Every
        field must be given, with exactly the types the record stores (tuples, floats, ...);
        anything read from outside goes through the constructor or :meth:`from_dict`.
        """
        record = object.__new__(cls)
        for name in cls._FIELDS:
            object.__setattr__(record, name, values[name])
        return record

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Rebuild a record from its wire dict.

        Unknown keys are ignored so a writer may add optional fields within a schema
        version without breaking older readers; fields with defaults may be omitted.
        Raises :class:`RecordError` naming the record, the field and what was expected.
        """
        try:
            tag = wire_type(d)
        except RecordError as exc:
            raise RecordError(f"{cls.__name__}: {exc}") from exc
        if tag != cls.TYPE:
            raise RecordError(f"{cls.__name__}: expected type tag {cls.TYPE!r}, got {tag!r}")
        kwargs: dict[str, Any] = {}
        for name in cls._FIELDS:
            if name in d:
                kwargs[name] = cls._field_from_wire(name, d[name])
            elif name in cls._REQUIRED:
                raise RecordError(f"{cls.__name__}.{name}: required field is missing")
        return cls(**kwargs)

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        """Hook for fields holding nested records; everything else passes through."""
        return value

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]


def wire_type(d: Any) -> str:
    """Check a wire dict's schema version and return its ``"type"`` tag.

    The version is checked before the tag: a future version may rename records, and
    "upgrade this reader" is the useful message then.
    """
    if not isinstance(d, Mapping):
        raise RecordError(f"expected a record dict with 'v' and 'type' keys, got {_show(d)}")
    version = d.get("v")
    if type(version) is not int:
        raise RecordError(
            f"missing or malformed schema version 'v' ({_show(version)}); "
            f"expected the int {SCHEMA_VERSION}"
        )
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"wire schema version {version} is not supported; this reader supports version "
            f"{SCHEMA_VERSION} only, so upgrade mlink-stream on the consumer or pin the "
            "producer to the same release"
        )
    tag = d.get("type")
    if not isinstance(tag, str):
        raise RecordError(f"missing or malformed record 'type' tag ({_show(tag)})")
    return tag


def _nested(owner: type[WireRecord], name: str, cls: type[WireRecord], value: Any) -> Any:
    """Rebuild one nested record, prefixing errors with where it sits in the outer one."""
    if value is None or isinstance(value, cls):
        return value
    try:
        return cls.from_dict(value)
    except RecordError as exc:
        raise RecordError(f"{owner.__name__}.{name}: {exc}") from exc
