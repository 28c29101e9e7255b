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
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Final, Literal, get_args

import numpy as np

from mlink.topics.control import MAX_EPOCH, budget_problem
from mlink.topics.ids import MAX_STREAM_ID_CHARS
from mlink.topics.record_base import (
    SCHEMA_VERSION,
    DecodeError,
    RecordError,
    WireRecord,
    _Fields,
    _nested,
    wire_type,
)

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

FrameEncoding = Literal["jpeg", "png", "raw", "ref"]
ResultStatus = Literal["executed", "synthesized", "missing"]
ControlKind = Literal["active_set", "budget", "link_version", "agreement", "worker_started"]
FRAME_ENCODINGS: Final[tuple[str, ...]] = get_args(FrameEncoding)
RESULT_STATUSES: Final[tuple[str, ...]] = get_args(ResultStatus)
CONTROL_KINDS: Final[tuple[str, ...]] = get_args(ControlKind)


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
    cpu_ms: float | None = None  # the CPU time of the call's thread: what plans price

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
        _cpu_ms(f, self)


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
    or its output was invalid). ``elapsed_ms``/``cpu_ms`` are what the model's call took: on an
    executed output, and on a synthesized or missing one whose call failed (it still cost).
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
    cpu_ms: float | None = None

    def __post_init__(self) -> None:
        f = _Fields(self)
        f.ident("model")
        f.array("output")
        f.choice("status", RESULT_STATUSES)
        f.integer("link_version", optional=True)
        f.names("sources")
        if self.elapsed_ms is not None:
            f.number("elapsed_ms")
        _cpu_ms(f, self)
        if self.agreement is not None:
            f.number("agreement")
            if not 0.0 <= self.agreement <= 1.0:
                f.expected("agreement", "a float in [0, 1] or None", self.agreement)
        f.free_text("error", optional=True)
        if self.status == "synthesized" and not self.sources:
            f.invalid("sources", "a synthesized output must name the models it came from")
        if self.status != "synthesized" and self.sources:
            f.invalid("sources", f"must be empty when status is {self.status!r}")

    @property
    def cost_ms(self) -> float | None:
        """What the call cost, as plans price it: its thread's CPU time where the worker
        measured it, else its wall time (results from workers before ``cpu_ms``)."""
        return self.cpu_ms if self.cpu_ms is not None else self.elapsed_ms


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


def _cpu_ms(f: _Fields, record: ModelOutput | ModelResult) -> None:
    """``cpu_ms`` (optional) is a finite, non-negative number: a plan prices models on it."""
    if record.cpu_ms is None:
        return
    f.number("cpu_ms")
    if not 0.0 <= record.cpu_ms < math.inf:
        f.expected("cpu_ms", "a finite float >= 0 or None", record.cpu_ms)
