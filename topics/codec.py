"""msgpack bytes for the MLink topics, with numpy arrays that round-trip bit for bit.

Arrays travel as msgpack extension type :data:`ARRAY_EXT_CODE` whose payload is itself
msgpack ``[dtype.str, shape, raw C-order bytes]``. Carrying ``dtype.str`` (e.g. ``"<f4"``,
``">f8"``) keeps byte order; carrying the shape keeps 0-d and zero-size arrays; copying
raw bytes keeps NaN payloads and costs one memcpy, not a Python loop per element.

numpy *scalars* (``np.float32(1.5)``, ``np.int64(3)``, ``np.bool_(True)``) encode as
plain Python numbers (``float``, ``int``, ``bool``): they usually leak in from arithmetic
into timestamps and budgets, where a plain number is what a reader expects. To keep a
scalar's dtype, send ``np.asarray(x)``, a 0-d array.

Every decode failure raises :class:`DecodeError`, whatever the bytes were, so a consumer
can dead-letter unreadable input with a single ``except``. Encode failures are
programming errors and raise ``TypeError`` (``OverflowError`` for ints beyond 64 bits).

Decoding is bounded, since a worker decodes untrusted bytes on its event loop:

- input over the record size limit (:attr:`mlink.topics.limits.Limits.max_record_bytes`) is
  refused before it is unpacked;
- a message may hold at most :data:`MAX_ITEMS` msgpack objects, counted by a header-only pass
  before unpacking: a 2 MiB message of empty lists would otherwise cost 135 MB of Python
  objects, and one of short strings 42 MB. Every object takes at least one byte, so the pass
  runs only on messages (and array payloads) longer than MAX_ITEMS bytes, which for good
  records means a few objects beside a large bytes value. Nesting is bounded by msgpack itself
  (1024 levels);
- an array extension's payload may hold no extension: its header is ``[dtype, shape, bytes]``,
  and each nested extension would cost another msgpack unpacker on the C stack, so a record
  of under 1 KB, array extensions nested 200 deep, would crash the worker with a segfault
  before Python's recursion limit could raise;
- map keys must be str (``strict_map_key``): records never use other keys, and int keys that
  collide in a dict would make decoding quadratic;
- an array extension never allocates more than the bytes it carries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, NoReturn, TypeVar

import msgpack
import numpy as np

from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.records import RECORD_TYPES, DecodeError, RecordError, WireRecord, wire_type

__all__ = [
    "ARRAY_EXT_CODE",
    "MAX_ITEMS",
    "DecodeError",
    "count_objects",
    "decode",
    "decode_any_record",
    "decode_record",
    "encode",
    "encode_record",
]

ARRAY_EXT_CODE: Final = 42
"""msgpack extension type code of a numpy array."""

MAX_ITEMS: Final = 100_000
"""Most msgpack objects (scalars, containers, map keys) one message may hold; records hold
tens to a few thousand, their bulk travels in bytes and array extensions."""

_MAX_NDIM: Final = 64  # numpy 2's limit; a larger claimed rank is garbage, not an array.
_MAX_ARRAY_BYTES: Final = int(np.iinfo(np.intp).max)

R = TypeVar("R", bound=WireRecord)


def _dtype_problem(dtype: np.dtype[Any]) -> str | None:
    """Why arrays of ``dtype`` cannot travel, or None if they can."""
    if dtype.hasobject:
        return "object arrays hold Python pointers, not data; convert to a numeric dtype"
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind == "V":
        return "structured and void dtypes are not supported; send each field as its own array"
    if dtype.itemsize == 0:
        return "zero-size items cannot be decoded; use a dtype with a size, like 'S1'"
    return None


def _pack_array(array: np.ndarray) -> msgpack.ExtType:
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(
            "cannot encode a masked array: the mask would be lost; send arr.filled(value) "
            "and np.ma.getmaskarray(arr) as two arrays"
        )
    problem = _dtype_problem(array.dtype)
    if problem:
        raise TypeError(f"cannot encode an array of dtype {array.dtype}: {problem}")
    payload = msgpack.packb(
        (array.dtype.str, array.shape, array.tobytes()), use_bin_type=True
    )  # tobytes() is C order even for transposed or strided views
    return msgpack.ExtType(ARRAY_EXT_CODE, payload)


def _default(obj: Any) -> Any:
    """msgpack's hook for types it does not know."""
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating) and obj.dtype.itemsize <= 8:  # float() is exact here
        return float(obj)
    if isinstance(obj, int):  # msgpack hands over ints it cannot pack
        raise OverflowError(f"cannot encode int {obj}: msgpack ints must fit in 64 bits")
    hint = (
        "; use encode_record(record)"
        if isinstance(obj, WireRecord)
        else "; wrap it with np.asarray(x) to send it as an array"
        if isinstance(obj, np.generic)
        else ""
    )
    raise TypeError(
        f"cannot encode {type(obj).__module__}.{type(obj).__qualname__} as msgpack: expected "
        f"None, bool, int, float, str, bytes, list, tuple, dict or numpy array{hint}"
    )


def encode(obj: Any) -> bytes:
    """Pack a plain structure (dicts, lists, scalars, bytes, numpy arrays) to bytes.

    Tuples are packed as msgpack arrays and come back from :func:`decode` as lists.
    """
    return msgpack.packb(obj, use_bin_type=True, default=_default)


def _scalar_sizes() -> tuple[list[int], dict[int, tuple[int, int]]]:
    """Per msgpack type byte: the fixed size of a scalar, and (length width, extra header bytes)
    of length-prefixed bin, str and ext."""
    fixed = [0] * 256
    for b in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):
        fixed[b] = 1
    for b, size in {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}.items():
        fixed[b] = size
    for b, size in {0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}.items():
        fixed[b] = size
    for b, size in {0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}.items():  # fixext
        fixed[b] = size
    prefixed = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0)}  # bin 8/16/32
    prefixed |= {0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}  # ext 8/16/32, plus the type byte
    prefixed |= {0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}  # str 8/16/32
    return fixed, prefixed


_FIXED, _PREFIXED = _scalar_sizes()


def count_objects(data: bytes | bytearray | memoryview, limit: int = MAX_ITEMS) -> int:
    """How many msgpack objects (scalars, containers, map keys; an extension counts as one)
    the message holds, read from its headers alone; counting stops past ``limit``.

    Truncation and reserved bytes stop the count early: msgpack reports those when it unpacks.
    """
    size, pos, items = len(data), 0, 0
    remaining, stack = 1, []  # objects left in the open container, and in those around it
    while True:
        if not remaining:
            if not stack:
                return items
            remaining = stack.pop()
            continue
        if pos >= size or items > limit:
            return items
        remaining -= 1
        items += 1
        b = data[pos]
        step = _FIXED[b]
        if step:
            pos += step
            continue
        if 0xA0 <= b <= 0xBF:  # fixstr
            pos += 1 + (b & 0x1F)
            continue
        if b in _PREFIXED:
            width, extra = _PREFIXED[b]
            pos += 1 + width + extra + int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            continue
        if 0x80 <= b <= 0x9F:  # fixmap, fixarray
            count = (b & 0x0F) * (2 if b <= 0x8F else 1)
            pos += 1
        elif 0xDC <= b <= 0xDF:  # array 16/32, map 16/32
            width = 2 if b in (0xDC, 0xDE) else 4
            count = int.from_bytes(data[pos + 1 : pos + 1 + width], "big") * (1 + (b >= 0xDE))
            pos += 1 + width
        else:  # 0xC1, never used: msgpack names it
            return items
        if count:
            stack.append(remaining)
            remaining = count


def _unpack(
    data: bytes | bytearray | memoryview, max_bytes: int, *, ext_hook: Callable[[int, bytes], Any]
) -> Any:
    """msgpack.unpackb with every bound of this module; errors are left to the caller.

    ``ext_hook`` is explicit so each caller states which extensions it accepts: a hook that
    decodes arrays must not be reachable from inside an array (see :func:`_no_nested_ext`).
    """
    if len(data) > max_bytes:
        raise DecodeError(
            f"message is {len(data):,} bytes, over the record size limit of {max_bytes:,} "
            "(Limits.max_record_bytes)"
        )
    # Every object takes a byte at least, so shorter input cannot hold too many.
    if len(data) > MAX_ITEMS and count_objects(data) > MAX_ITEMS:
        raise DecodeError(f"message holds more than {MAX_ITEMS:,} msgpack objects")
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        ext_hook=ext_hook,
        max_str_len=max_bytes,
        max_bin_len=max_bytes,
        max_ext_len=max_bytes,
        max_array_len=min(max_bytes, MAX_ITEMS),
        max_map_len=min(max_bytes // 2, MAX_ITEMS),
    )


def _fail_array(message: str) -> DecodeError:
    return DecodeError(f"bad numpy array extension: {message}")


def _no_nested_ext(code: int, payload: bytes) -> NoReturn:
    """The ext hook inside an array payload, which writers never fill with extensions.

    Refusing them, rather than decoding them with :func:`_ext_hook`, keeps decoding to two
    unpackers deep: every nested level would recurse through msgpack's C code, whose stack
    overflows (a segfault, not an exception) long before Python's recursion limit.
    """
    raise DecodeError(
        f"holds a nested msgpack extension (type {code}, {len(payload)} bytes); it must be "
        "[dtype str, shape list, data bytes] with no extension inside, so arrays cannot nest: "
        "send arrays of arrays as one stacked array or as a list of arrays"
    )


def _unpack_array(payload: bytes) -> np.ndarray:
    try:
        header = _unpack(payload, len(payload), ext_hook=_no_nested_ext)
    except DecodeError as exc:
        raise _fail_array(f"payload: {exc}") from exc
    except Exception as exc:  # untrusted bytes: any failure is a decode failure
        raise _fail_array(f"payload is not msgpack ({exc})") from exc
    if not isinstance(header, list) or len(header) != 3:
        raise _fail_array(f"expected payload [dtype, shape, data], got {type(header).__name__}")
    dtype_str, shape, raw = header
    if not isinstance(dtype_str, str):
        raise _fail_array(f"dtype must be a str like '<f8', got {type(dtype_str).__name__}")
    try:
        dtype = np.dtype(dtype_str)
    except Exception as exc:  # np.dtype parses many syntaxes; any rejection is bad input
        raise _fail_array(f"unknown dtype {dtype_str!r}") from exc
    if dtype.str != dtype_str:  # also rejects structured specs such as "i4,f4"
        raise _fail_array(f"dtype {dtype_str!r} is not canonical; writers send dtype.str")
    problem = _dtype_problem(dtype)
    if problem:
        raise _fail_array(f"dtype {dtype_str!r}: {problem}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(type(dim) is int and dim >= 0 for dim in shape)
    ):
        raise _fail_array(f"shape must be a list of at most {_MAX_NDIM} non-negative ints")
    if not isinstance(raw, bytes):
        raise _fail_array(f"data must be bytes, got {type(raw).__name__}")
    # Exact Python ints: a shape can neither overflow the check nor claim more than numpy can
    # index, even when a zero dimension makes the array empty.
    if math.prod(dim for dim in shape if dim) * dtype.itemsize > _MAX_ARRAY_BYTES:
        raise _fail_array(f"cannot build shape {tuple(shape)}: more elements than numpy indexes")
    needed = math.prod(shape) * dtype.itemsize
    if len(raw) != needed:
        raise _fail_array(
            f"data is {len(raw)} bytes but dtype {dtype_str} and shape {tuple(shape)} need {needed}"
        )
    try:
        # bytearray: one copy that leaves the array writable and aligned (torch.from_numpy
        # warns on read-only arrays).
        return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    except Exception as exc:  # numpy's own refusals are bad input too
        raise _fail_array(f"cannot build shape {tuple(shape)}: {exc}") from exc


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != ARRAY_EXT_CODE:
        raise DecodeError(
            f"unknown msgpack extension type {code}; this reader knows only "
            f"{ARRAY_EXT_CODE} (numpy array)"
        )
    return _unpack_array(payload)


def decode(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Unpack bytes from :func:`encode`; raises :class:`DecodeError` on any bad input.

    Input over ``limits.max_record_bytes`` is refused unread; map keys must be str.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        tombstone = " (a Kafka tombstone?)" if data is None else ""
        raise DecodeError(f"expected bytes to decode, got {type(data).__name__}{tombstone}")
    try:
        return _unpack(data, limits.max_record_bytes, ext_hook=_ext_hook)
    except DecodeError:
        raise
    except msgpack.ExtraData as exc:
        if not isinstance(exc.unpacked, dict):  # JSON or text read as msgpack: one small int
            raise DecodeError(
                f"not msgpack: the value starts {bytes(data[:24])!r}, whose first byte alone "
                f"is a msgpack {type(exc.unpacked).__name__}; records are msgpack maps "
                "(docs/wire-format.md)"
            ) from exc
        raise DecodeError(
            f"{len(exc.extra)} trailing bytes after a complete message; one Kafka value "
            "must hold exactly one message"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(f"a msgpack str is not valid UTF-8: {exc}") from exc
    except Exception as exc:  # untrusted bytes: any failure is a decode failure
        reason = "truncated message" if "incomplete input" in str(exc) else "not valid msgpack"
        raise DecodeError(f"{reason} ({type(exc).__name__}: {exc})") from exc


def encode_record(record: WireRecord) -> bytes:
    """Pack a record; its dict carries ``"v"`` and ``"type"`` so any reader can route it."""
    if not isinstance(record, WireRecord):
        raise TypeError(
            f"encode_record() takes a record such as Frame or ModelOutput, got "
            f"{type(record).__name__}; use encode() for plain structures"
        )
    return encode(record.to_dict())


def _record_type(obj: Any) -> str:
    try:
        return wire_type(obj)
    except RecordError as exc:
        raise DecodeError(f"message is not a record: {exc}") from exc


def decode_record(data: bytes, expected: type[R], *, limits: Limits = DEFAULT_LIMITS) -> R:
    """Unpack a record that must be of type ``expected``, with its exact field types.

    Raises :class:`DecodeError` on bad bytes, on a record of another type (naming both)
    and on a record whose fields break the contract.
    """
    if RECORD_TYPES.get(getattr(expected, "TYPE", None)) is not expected:  # type: ignore[arg-type]
        raise TypeError(f"expected must be a record class such as Frame, got {expected!r}")
    obj = decode(data, limits=limits)
    tag = _record_type(obj)
    if tag != expected.TYPE:
        actual = RECORD_TYPES.get(tag)
        what = f"a {actual.__name__} record" if actual else "a record of unknown type"
        raise DecodeError(
            f"expected a {expected.__name__} record (type {expected.TYPE!r}) but the message "
            f"is {what} (type {tag!r}); check which topic this consumer reads"
        )
    return _build(expected, obj)


def decode_any_record(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> WireRecord:
    """Unpack whichever record the bytes hold, dispatching on its ``"type"`` tag."""
    obj = decode(data, limits=limits)
    tag = _record_type(obj)
    cls = RECORD_TYPES.get(tag)
    if cls is None:
        known = ", ".join(sorted(RECORD_TYPES))
        raise DecodeError(f"unknown record type {tag!r}; known types are {known}")
    return _build(cls, obj)


def _build(cls: type[R], obj: Any) -> R:
    """``cls.from_dict(obj)``, where any failure is a :class:`DecodeError`."""
    try:
        return cls.from_dict(obj)
    except DecodeError:
        raise
    except Exception as exc:  # a validator that failed on odd input still means bad input
        raise DecodeError(
            f"{cls.__name__} could not be built from the message ({type(exc).__name__}: {exc})"
        ) from exc
