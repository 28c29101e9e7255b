"""Records that travel on the MLink topics, and the checks that guard them.

Every record is a frozen, slotted, keyword-only dataclass validated on construction, so a
bad value fails where it is made instead of in a consumer three hops downstream. The same
checks run when a record is rebuilt from the wire, so producer and consumer agree on one
contract. ``to_dict`` / ``from_dict`` map a record to a plain msgpack-able dict tagged
with ``"v"`` (schema version) and ``"type"``; :mod:`mlink.topics.codec` turns those
dicts into bytes. numpy arrays stay ``np.ndarray`` in the dicts for the codec to pack.

Ids (stream and frame ids, model names) are bounded and printable, and free text (reasons,
errors) is clipped, by the rules of :mod:`mlink.topics.ids`; control epochs and budgets follow
:mod:`mlink.topics.control`.

Records compare bitwise: two records are equal when they would travel as the same value,
so an array holding NaN equals its decoded copy. They are not hashable (they hold arrays
and dicts).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Final, Literal, NoReturn, Self, get_args

import numpy as np

from mlink.topics.control import MAX_EPOCH, budget_problem
from mlink.topics.ids import MAX_ID_CHARS, MAX_STREAM_ID_CHARS, clip_text, id_problem

__all__ = [
    "CONTROL_KINDS",
    "FRAME_ENCODINGS",
    "RECORD_TYPES",
    "RESULT_STATUSES",
    "SCHEMA_VERSION",
    "ControlKind",
    "ControlMessage",
    "DeadLetter",
    "DecodeError",
    "Frame",
    "FrameEncoding",
    "FrameResult",
    "ModelOutput",
    "ModelResult",
    "Plan",
    "PlanNotice",
    "RecordError",
    "ResultStatus",
    "WireRecord",
    "wire_type",
]

SCHEMA_VERSION: Final = 1
"""Wire schema version written as ``"v"``; a breaking change to any record bumps it."""

FrameEncoding = Literal["jpeg", "png", "raw", "ref"]
ResultStatus = Literal["executed", "synthesized", "missing"]
ControlKind = Literal["active_set", "budget", "link_version", "agreement"]
FRAME_ENCODINGS: Final[tuple[str, ...]] = get_args(FrameEncoding)
RESULT_STATUSES: Final[tuple[str, ...]] = get_args(ResultStatus)
CONTROL_KINDS: Final[tuple[str, ...]] = get_args(ControlKind)

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


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Plan(WireRecord):
    """Which models must run on a frame, stamped by the planner so workers need no state.

    ``active`` is sorted so equal sets compare and hash alike across processes. On probe
    frames every model runs, to collect training pairs for the links.
    """

    TYPE: ClassVar[str] = "plan"
    epoch: int
    active: tuple[str, ...]
    probe: bool = False
    link_version: int | None = None

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.integer("epoch", minimum=0)
        f.names("active", sorted_unique=True)
        f.boolean("probe")
        f.integer("link_version", optional=True)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Frame(WireRecord):
    """One video frame entering the pipeline, keyed by ``stream_id`` on the frames topic.

    ``frame_id`` is globally unique (conventionally ``f"{stream_id}:{seq}"``) because it
    keys every output and result derived from the frame. ``data`` holds encoded image
    bytes, raw pixels (``encoding="raw"``, which needs ``shape``), or for ``"ref"`` a
    UTF-8 path/URI so large frames need not cross the broker.
    """

    TYPE: ClassVar[str] = "frame"
    stream_id: str
    frame_id: str
    seq: int
    timestamp: float
    encoding: FrameEncoding
    data: bytes
    shape: tuple[int, ...] | None = None
    plan: Plan | None = None

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("stream_id", MAX_STREAM_ID_CHARS)
        f.ident("frame_id")
        f.integer("seq", minimum=0)
        f.number("timestamp")
        f.choice("encoding", FRAME_ENCODINGS)
        f.blob("data")
        f.shape("shape")
        f.instance("plan", Plan, optional=True)
        if self.encoding == "raw" and self.shape is None:
            f.invalid("shape", "raw frames need a shape (H, W, C) to be decoded; set shape=")
        if self.encoding == "ref":
            try:
                self.data.decode("utf-8")
            except UnicodeDecodeError:
                f.invalid("data", "a 'ref' frame must hold a UTF-8 path or URI; encode it first")

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        return _nested(cls, name, Plan, value) if name == "plan" else value


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ModelOutput(WireRecord):
    """One executed model's output for one frame, keyed by ``frame_id``.

    Keying by frame id puts every output of a frame in one partition, so the joiner can
    assemble a result without a cross-partition shuffle.
    """

    TYPE: ClassVar[str] = "model_output"
    frame_id: str
    stream_id: str
    seq: int
    model: str
    output: np.ndarray
    epoch: int
    elapsed_ms: float
    produced_at: float
    error: str | None = None

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("frame_id")
        f.ident("stream_id", MAX_STREAM_ID_CHARS)
        f.integer("seq", minimum=0)
        f.ident("model")
        f.array("output")
        f.integer("epoch", minimum=0)
        f.number("elapsed_ms")
        f.number("produced_at")
        f.free_text("error", optional=True)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PlanNotice(WireRecord):
    """Tells the joiner, on the outputs topic and keyed by ``frame_id``, which outputs a frame
    will get: published by the planner when it stamps the frame, so the joiner never guesses.
    """

    TYPE: ClassVar[str] = "plan_notice"
    frame_id: str
    stream_id: str
    seq: int
    plan: Plan
    timestamp: float
    planned_at: float

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("frame_id")
        f.ident("stream_id", MAX_STREAM_ID_CHARS)
        f.integer("seq", minimum=0)
        f.instance("plan", Plan)
        f.number("timestamp")
        f.number("planned_at")

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        return _nested(cls, name, Plan, value) if name == "plan" else value


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ModelResult(WireRecord):
    """One model's output inside a result, with its provenance.

    Consumers must know whether an output was computed or synthesized through a model
    link (and from which models, with which link version) to judge how far to trust it.
    ``sources`` is non-empty exactly when ``status == "synthesized"``. A ``"missing"``
    result still carries an array (the joiner's placeholder, e.g. ``np.empty(0)``) so
    every entry has the same shape of record. ``agreement`` is the pipeline's current estimate
    (from probe frames, else validation) of how often a synthesized output agrees with the
    real model; ``error`` says why a model that should have run did not (it raised, timed out,
    or its output was invalid).
    """

    TYPE: ClassVar[str] = "model_result"
    model: str
    output: np.ndarray
    status: ResultStatus
    link_version: int | None = None
    sources: tuple[str, ...] = ()
    elapsed_ms: float | None = None
    agreement: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("model")
        f.array("output")
        f.choice("status", RESULT_STATUSES)
        f.integer("link_version", optional=True)
        f.names("sources")
        if self.elapsed_ms is not None:
            f.number("elapsed_ms")
        if self.agreement is not None:
            f.number("agreement")
            if not 0.0 <= self.agreement <= 1.0:
                f.expected("agreement", "a float in [0, 1] or None", self.agreement)
        f.free_text("error", optional=True)
        if self.status == "synthesized" and not self.sources:
            f.invalid("sources", "a synthesized output must name the models it came from")
        if self.status != "synthesized" and self.sources:
            f.invalid("sources", f"must be empty when status is {self.status!r}")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class FrameResult(WireRecord):
    """Every requested model's output for one frame, keyed by ``frame_id``.

    ``degraded`` is set when an expected output did not arrive in time, so downstream
    can tell a complete result from a best-effort one. ``probe`` marks frames on which every
    model ran to train links and measure live agreement (summaries leave them out of the
    steady-state figures).
    """

    TYPE: ClassVar[str] = "frame_result"
    frame_id: str
    stream_id: str
    seq: int
    epoch: int
    results: tuple[ModelResult, ...]
    degraded: bool
    emitted_at: float
    timestamp: float | None = None
    probe: bool = False

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("frame_id")
        f.ident("stream_id", MAX_STREAM_ID_CHARS)
        f.integer("seq", minimum=0)
        f.integer("epoch", minimum=0)
        f.instances("results", ModelResult)
        models = [r.model for r in self.results]
        if len(set(models)) != len(models):
            f.invalid("results", f"each model may appear once, got {models!r}")
        f.boolean("degraded")
        f.number("emitted_at")
        if self.timestamp is not None:
            f.number("timestamp")
        f.boolean("probe")

    @classmethod
    def _field_from_wire(cls, name: str, value: Any) -> Any:
        if name != "results" or not isinstance(value, list | tuple):
            return value
        return tuple(
            _nested(cls, f"results[{i}]", ModelResult, item) for i, item in enumerate(value)
        )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ControlMessage(WireRecord):
    """A planner decision broadcast on the single-partition, compacted control topic.

    ``epoch`` orders decisions: workers ignore messages older than the epoch they run; it and
    ``link_version`` are at most 2**53. ``budget`` holds resource limits such as
    ``{"memory_mb": 5000, "ms": 30}`` (the keys and ranges of :mod:`mlink.topics.control`);
    ``probe_every`` is the probe-frame period (0 disables probes); ``extra`` carries
    JSON-like settings that have not earned a field yet. The rules that depend on the kind
    and on the worker's models are checked where a message is applied
    (:meth:`mlink.operators.state.ControlState.apply`), so a bad one is skipped, not fatal.
    """

    TYPE: ClassVar[str] = "control"
    kind: ControlKind
    epoch: int
    issued_at: float
    active: tuple[str, ...] = ()
    budget: dict[str, float] = field(default_factory=dict)
    link_version: int | None = None
    probe_every: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.choice("kind", CONTROL_KINDS)
        f.integer("epoch", minimum=0, maximum=MAX_EPOCH)
        f.number("issued_at")
        f.names("active")
        f.float_map("budget")
        problem = budget_problem(self.budget)
        if problem:
            f.invalid("budget", problem)
        f.integer("link_version", minimum=0, maximum=MAX_EPOCH, optional=True)
        f.integer("probe_every", minimum=0, maximum=MAX_EPOCH)
        f.json_map("extra")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DeadLetter(WireRecord):
    """A message an operator could not process, kept byte-for-byte for replay.

    ``value`` and ``key`` are the original bytes, untouched, so a fixed consumer can
    re-read them; ``stage`` names the operator that rejected the message and ``traceback``
    summarises where an unexpected failure happened.
    """

    TYPE: ClassVar[str] = "dead_letter"
    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes
    reason: str
    stage: str
    at: float
    traceback: str | None = None

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("topic")
        f.integer("partition", minimum=0, optional=True)
        f.integer("offset", minimum=0, optional=True)
        f.blob("key", optional=True)
        f.blob("value")
        f.free_text("reason")
        f.ident("stage")
        f.number("at")
        if self.traceback is not None and not isinstance(self.traceback, str):
            f.expected("traceback", "a str or None", self.traceback)


RECORD_TYPES: Final[dict[str, type[WireRecord]]] = {
    cls.TYPE: cls
    for cls in (
        Frame,
        Plan,
        PlanNotice,
        ModelOutput,
        ModelResult,
        FrameResult,
        ControlMessage,
        DeadLetter,
    )
}
"""Every record class by its wire ``"type"`` tag."""

for _cls in RECORD_TYPES.values():
    _cls._FIELDS = tuple(f.name for f in fields(_cls))  # type: ignore[arg-type]
    _cls._REQUIRED = frozenset(
        f.name
        for f in fields(_cls)  # type: ignore[arg-type]
        if f.default is MISSING and f.default_factory is MISSING
    )
del _cls
